package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/jobs"
)

// Issue 11, defect 2, as the outside tester ran it: 1,000 queued jobs, a
// 20ms Shutdown deadline, a short grace, many rounds, and handlers of every
// temper: quick, retried, permanently failing, honouring cancellation,
// ignoring it briefly (then succeeding or failing), and ignoring it for
// longer than the grace. Every accepted job must be exactly one of: run to
// completion (succeeded or dead) or reported unrun, and a reported job must
// not have succeeded unless the report says its handler was abandoned.
// Before the fix, jobs popped after the report was taken vanished, and a
// handler that succeeded after the report was also reported.
func TestShutdownAccountsForEveryJob(t *testing.T) {
	const (
		rounds   = 60
		perRound = 1000
		deadline = 20 * time.Millisecond
		grace    = time.Millisecond
	)
	var total counts
	var violations []string
	start := time.Now()
	for round := range rounds {
		leaks := goleak.IgnoreCurrent()
		l := newLedger()
		r := jobs.New(jobs.Config{QueueSize: perRound, ShutdownGrace: grace, Timeout: -1, DeadJob: l.deadJob},
			tracebridge.WithConcurrency(8), tracebridge.WithRetry(3, time.Millisecond, 2*time.Millisecond))
		if err := r.Register("work", func(ctx context.Context, j *jobs.Job) (err error) {
			l.start(j)
			defer func() { l.end(j, err) }()
			i, _ := strconv.Atoi(string(j.Payload))
			switch {
			case i%100 == 50: // ignores cancellation for longer than the grace
				<-ctx.Done()
				time.Sleep(3 * grace)
				return nil
			case i%50 == 25:
				return tracebridge.Permanent(errors.New("never works"))
			case i%20 == 7: // ignores cancellation, then succeeds
				time.Sleep(time.Millisecond)
				return nil
			case i%20 == 17: // ignores cancellation, then fails because of it
				time.Sleep(time.Millisecond)
				return ctx.Err()
			case i%10 == 3: // honours cancellation
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(time.Millisecond):
					return nil
				}
			case i%10 == 1 && j.Attempt == 1:
				return errors.New("first attempt fails")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		accepted := make([]string, 0, perRound)
		for i := range perRound {
			key := strconv.Itoa(i)
			if _, err := r.Enqueue(context.Background(), "work", []byte(key)); err != nil {
				t.Fatalf("round %d: enqueue %s: %v", round, key, err)
			}
			accepted = append(accepted, key)
		}
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		unrun, err := r.Shutdown(ctx)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("round %d: shutdown: %v", round, err)
		}
		if err := l.quiesce(5*time.Second, leaks); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		v, c := l.audit(accepted, nil, unrun)
		for _, s := range v {
			violations = append(violations, fmt.Sprintf("round %d: %s", round, s))
		}
		total.accepted += c.accepted
		total.succeeded += c.succeeded
		total.dead += c.dead
		total.reported += c.reported
		total.interrupted += c.interrupted
		total.abandoned += c.abandoned
	}
	t.Logf("%d rounds in %v: %+v", rounds, time.Since(start).Round(time.Millisecond), total)
	if len(violations) > 0 {
		n := min(len(violations), 400)
		t.Fatalf("%d violations of the Shutdown contract; first %d:\n%s", len(violations), n, joinLines(violations[:n]))
	}
	if total.reported == 0 || total.succeeded == 0 {
		t.Fatalf("the rounds did not exercise both outcomes: %+v", total)
	}
}

func joinLines(s []string) string {
	out := ""
	for _, l := range s {
		out += l + "\n"
	}
	return out
}
