package jobs_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
)

// 10,000 jobs from 100 concurrent sessions: every handler sees its own
// enqueuer's trace, session and baggage and nothing of its request context
// (value, cancellation, deadline), and every attempt span is a child of its
// job's enqueue span on the enqueuer's trace.
func TestContinuity10000JobsFrom100Sessions(t *testing.T) {
	const sessions, perSession = 100, 100
	r, tel := newRunner(t, jobs.Config{QueueSize: 256}, tracebridge.WithConcurrency(8))

	traceIDs := make([]trace.TraceID, sessions)
	var ran, good atomic.Int64
	var mu sync.Mutex
	var failures []string
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 10 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	done := make(chan struct{})
	err := r.Register("check", func(ctx context.Context, job *jobs.Job) error {
		defer func() {
			if ran.Add(1) == sessions*perSession {
				close(done)
			}
		}()
		var s, j int
		if _, err := fmt.Sscanf(string(job.Payload), "%d/%d", &s, &j); err != nil {
			fail("payload %q: %v", job.Payload, err)
			return nil
		}
		ok := true
		if got, want := carrier.SessionFromContext(ctx), fmt.Sprintf("sess-%03d", s); got != want {
			fail("job %d/%d: session %q, want %q", s, j, got, want)
			ok = false
		}
		if got, want := baggage.FromContext(ctx).Member("user").Value(), fmt.Sprintf("u%d", s); got != want {
			fail("job %d/%d: baggage user %q, want %q", s, j, got, want)
			ok = false
		}
		if got := trace.SpanContextFromContext(ctx).TraceID(); got != traceIDs[s] {
			fail("job %d/%d: trace %s, want %s", s, j, got, traceIDs[s])
			ok = false
		}
		if ctx.Value(leakKey{}) != nil {
			fail("job %d/%d: request-private value leaked into the job", s, j)
			ok = false
		}
		if ctx.Err() != nil {
			fail("job %d/%d: the request's cancellation reached the job: %v", s, j, ctx.Err())
			ok = false
		}
		if dl, has := ctx.Deadline(); !has || time.Until(dl) < time.Minute {
			fail("job %d/%d: deadline %v is not the runner's per-attempt timeout", s, j, dl)
			ok = false
		}
		if ok {
			good.Add(1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	var wg sync.WaitGroup
	for s := range sessions {
		wg.Go(func() {
			ctx, span := journey(t, tel, fmt.Sprintf("sess-%03d", s), fmt.Sprintf("u%d", s))
			traceIDs[s] = span.SpanContext().TraceID()
			// A short-lived request: its deadline and cancellation must not
			// reach the jobs it enqueued.
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			for j := range perSession {
				if _, err := r.Enqueue(ctx, "check", fmt.Appendf(nil, "%d/%d", s, j)); err != nil {
					fail("enqueue %d/%d: %v", s, j, err)
				}
			}
			cancel()
			span.End()
		})
	}
	wg.Wait()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("only %d of %d jobs ran", ran.Load(), sessions*perSession)
	}
	elapsed := time.Since(start)
	if _, err := r.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for _, f := range failures {
		t.Error(f)
	}
	t.Logf("%d/%d handlers saw their own journey (%.2f%%) in %v", good.Load(), sessions*perSession,
		100*float64(good.Load())/float64(sessions*perSession), elapsed)
	if good.Load() != sessions*perSession {
		t.Fatalf("%d of %d jobs saw the right journey", good.Load(), sessions*perSession)
	}

	sends := map[trace.SpanID]trace.TraceID{}
	sendSession := map[trace.SpanID]string{}
	for _, s := range tel.Named("send jobs") {
		if s.SpanKind() != trace.SpanKindProducer {
			t.Fatalf("send span kind %v", s.SpanKind())
		}
		sends[s.SpanContext().SpanID()] = s.SpanContext().TraceID()
		v, _ := testenv.Attr(s, msgtrace.SessionIDKey)
		sendSession[s.SpanContext().SpanID()] = v.AsString()
	}
	procs := tel.Named("process jobs")
	if len(sends) != sessions*perSession || len(procs) != sessions*perSession {
		t.Fatalf("%d send and %d process spans, want %d each", len(sends), len(procs), sessions*perSession)
	}
	onTrace := 0
	for _, p := range procs {
		parent := p.Parent().SpanID()
		tid, ok := sends[parent]
		sess, _ := testenv.Attr(p, msgtrace.SessionIDKey)
		att, _ := testenv.Attr(p, msgtrace.AttemptKey)
		switch {
		case p.SpanKind() != trace.SpanKindConsumer:
			t.Errorf("process span kind %v", p.SpanKind())
		case !ok || tid != p.SpanContext().TraceID():
			t.Errorf("process span %s is not a child of its enqueue span on the same trace", p.SpanContext().SpanID())
		case sess.AsString() != sendSession[parent] || sess.AsString() == "":
			t.Errorf("process span session %q, enqueue span session %q", sess.AsString(), sendSession[parent])
		case att.AsInt64() != 1:
			t.Errorf("attempt %d, want 1", att.AsInt64())
		default:
			onTrace++
		}
	}
	t.Logf("%d/%d attempt spans on their enqueuer's trace", onTrace, len(procs))
}
