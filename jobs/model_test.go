package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"pgregory.net/rapid"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/jobs"
)

// behaviour is what one attempt of a model job does.
type behaviour int

const (
	succeed       behaviour = iota
	fail                    // retryable error
	failForGood             // permanent error
	panicking               // panics
	slow                    // succeeds after a moment, or returns ctx's error first
	awaitCancel             // returns ctx's error once the attempt timeout or Shutdown cancels it
	ignoreThenOK            // waits for cancellation, keeps working, succeeds
	ignoreThenErr           // waits for cancellation, keeps working, fails
	busy                    // works for a moment without looking at ctx, succeeds
	stuckThenOK             // ignores ctx until the model releases it, then succeeds
	stuckThenErr            // ignores ctx until the model releases it, then fails
	behaviours
)

var behaviourNames = [...]string{"succeed", "fail", "failForGood", "panicking", "slow", "awaitCancel",
	"ignoreThenOK", "ignoreThenErr", "busy", "stuckThenOK", "stuckThenErr"}

func (b behaviour) String() string { return behaviourNames[b] }

func (b behaviour) stuck() bool { return b == stuckThenOK || b == stuckThenErr }

// runnerModel drives one Runner on a MemoryQueue through random steps and
// keeps what the contract lets a test know: which jobs were accepted or
// rejected, what each attempt does, and which stuck handlers run.
type runnerModel struct {
	r           *jobs.Runner
	l           *ledger
	concurrency int
	leaks       goleak.Option

	mu      sync.Mutex
	script  map[string][]behaviour   // per job key, by attempt (the last repeats)
	release map[string]chan struct{} // per stuck job; closed to let it return
	running map[string]int           // stuck handlers blocked now: key -> attempt
	stuckAt map[string]int           // stuck handlers blocked when Shutdown returned
	seq     int
	acc     []string
	rej     []string

	shut   bool
	report []jobs.Unrun
}

func newRunnerModel(t *rapid.T) *runnerModel {
	m := &runnerModel{
		l:           newLedger(),
		concurrency: rapid.IntRange(1, 4).Draw(t, "concurrency"),
		leaks:       goleak.IgnoreCurrent(),
		script:      make(map[string][]behaviour),
		release:     make(map[string]chan struct{}),
		running:     make(map[string]int),
	}
	cfg := jobs.Config{
		QueueSize:     rapid.IntRange(1, 6).Draw(t, "queueSize"),
		FailFast:      rapid.Bool().Draw(t, "failFast"),
		ShutdownGrace: time.Duration(rapid.SampledFrom([]int{2, 10, 30}).Draw(t, "graceMs")) * time.Millisecond,
		Timeout:       time.Duration(rapid.SampledFrom([]int{-1, 15}).Draw(t, "timeoutMs")) * time.Millisecond,
		DeadJob:       m.l.deadJob,
	}
	attempts := rapid.IntRange(1, 3).Draw(t, "maxAttempts")
	m.r = jobs.New(cfg, tracebridge.WithConcurrency(m.concurrency),
		tracebridge.WithRetry(attempts, time.Millisecond, 3*time.Millisecond))
	if err := m.r.Register("job", m.handle); err != nil {
		t.Fatal(err)
	}
	return m
}

// handle runs the attempt its job's script says.
func (m *runnerModel) handle(ctx context.Context, j *jobs.Job) (err error) {
	m.l.start(j)
	key := string(j.Payload)
	defer func() {
		if p := recover(); p != nil {
			m.l.end(j, fmt.Errorf("panic: %v", p))
			panic(p) // for the runner to recover
		}
		m.l.end(j, err)
	}()
	m.mu.Lock()
	s := m.script[key]
	b := s[min(j.Attempt, len(s))-1]
	rel := m.release[key]
	m.mu.Unlock()
	errAttempt := fmt.Errorf("job %s attempt %d: %v", key, j.Attempt, b)
	switch b {
	case fail:
		return errAttempt
	case failForGood:
		return tracebridge.Permanent(errAttempt)
	case panicking:
		panic(errAttempt)
	case slow:
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
			return nil
		}
	case awaitCancel:
		<-ctx.Done()
		return ctx.Err()
	case ignoreThenOK, ignoreThenErr:
		<-ctx.Done()
		time.Sleep(time.Millisecond)
		if b == ignoreThenErr {
			return errAttempt
		}
	case busy:
		time.Sleep(time.Millisecond)
	case stuckThenOK, stuckThenErr:
		m.mu.Lock()
		m.running[key] = j.Attempt
		m.mu.Unlock()
		<-rel
		m.mu.Lock()
		delete(m.running, key)
		m.mu.Unlock()
		if b == stuckThenErr {
			return errAttempt
		}
	}
	return nil
}

// newJob draws a job's script and options and returns its key.
func (m *runnerModel) newJob(t *rapid.T) (string, []jobs.JobOption) {
	script := rapid.SliceOfN(rapid.IntRange(0, int(behaviours)-1), 1, 3).Draw(t, "script")
	var opts []jobs.JobOption
	if rapid.IntRange(0, 3).Draw(t, "delayed") == 0 {
		opts = append(opts, jobs.WithDelay(time.Duration(rapid.IntRange(1, 10).Draw(t, "delayMs"))*time.Millisecond))
	}
	if rapid.IntRange(0, 4).Draw(t, "unique") == 0 {
		opts = append(opts, jobs.WithUnique("u"+strconv.Itoa(rapid.IntRange(0, 1).Draw(t, "uniqueKey")), nil))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	key := "j" + strconv.Itoa(m.seq)
	for _, b := range script {
		m.script[key] = append(m.script[key], behaviour(b))
		if behaviour(b).stuck() && m.release[key] == nil {
			m.release[key] = make(chan struct{})
		}
	}
	return key, opts
}

// enqueue records key as accepted or rejected by err.
func (m *runnerModel) record(key string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		m.acc = append(m.acc, key)
	} else {
		m.rej = append(m.rej, key)
	}
}

func (m *runnerModel) Enqueue(t *rapid.T) {
	key, opts := m.newJob(t)
	// A blocking Enqueue into a full queue waits for room until its ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Millisecond)
	defer cancel()
	_, err := m.r.Enqueue(ctx, "job", []byte(key), opts...)
	switch {
	case err == nil, errors.Is(err, jobs.ErrQueueFull), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, jobs.ErrDuplicate):
	case errors.Is(err, jobs.ErrClosed):
		if !m.shut {
			t.Fatalf("enqueue %s before Shutdown: %v", key, err)
		}
	default:
		t.Fatalf("enqueue %s: %v", key, err)
	}
	if m.shut && !errors.Is(err, jobs.ErrClosed) {
		t.Fatalf("enqueue %s after Shutdown: %v, want ErrClosed", key, err)
	}
	m.record(key, err)
}

func (m *runnerModel) Wait(t *rapid.T) {
	time.Sleep(time.Duration(rapid.IntRange(0, 3).Draw(t, "waitMs")) * time.Millisecond)
}

// Unstick lets one stuck handler return, before or after Shutdown.
func (m *runnerModel) Unstick(t *rapid.T) {
	m.mu.Lock()
	var keys []string
	for k, ch := range m.release {
		select {
		case <-ch:
		default:
			keys = append(keys, k)
		}
	}
	m.mu.Unlock()
	if len(keys) == 0 {
		t.Skip("no stuck job")
	}
	slices.Sort(keys)
	k := rapid.SampledFrom(keys).Draw(t, "unstick")
	m.mu.Lock()
	close(m.release[k])
	m.mu.Unlock()
}

// Shutdown runs once, at a random step, with a random deadline, while
// racing Enqueues that may land before or after intake stops.
func (m *runnerModel) Shutdown(t *rapid.T) {
	if m.shut {
		t.Skip("already shut down")
	}
	deadline := time.Duration(rapid.IntRange(0, 30).Draw(t, "deadlineMs")) * time.Millisecond
	type racer struct {
		key  string
		opts []jobs.JobOption
	}
	racers := make([]racer, rapid.IntRange(0, 3).Draw(t, "racers"))
	for i := range racers {
		racers[i].key, racers[i].opts = m.newJob(t)
	}
	var wg sync.WaitGroup
	for _, rc := range racers {
		wg.Go(func() {
			_, err := m.r.Enqueue(context.Background(), "job", []byte(rc.key), rc.opts...)
			m.record(rc.key, err)
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	report, err := m.r.Shutdown(ctx)
	m.mu.Lock()
	m.stuckAt = make(map[string]int, len(m.running))
	for k, a := range m.running {
		select {
		case <-m.release[k]: // released before: it may have returned in time
		default:
			m.stuckAt[k] = a
		}
	}
	m.mu.Unlock()
	wg.Wait()
	m.shut, m.report = true, report
	switch {
	case err == nil && len(report) > 0:
		t.Fatalf("shutdown reported %d jobs without an error", len(report))
	case err != nil && !errors.Is(err, context.DeadlineExceeded):
		t.Fatalf("shutdown: %v", err)
	}
	if _, err := m.r.Shutdown(context.Background()); !errors.Is(err, jobs.ErrClosed) {
		t.Fatalf("second shutdown: %v, want ErrClosed", err)
	}
}

// Check holds at every step: attempts of a job run one at a time and in
// order, never after it finished, never for a rejected job, and no more
// handlers run than there are workers.
func (m *runnerModel) Check(t *rapid.T) {
	m.l.mu.Lock()
	v := append([]string(nil), m.l.violations...)
	m.l.mu.Unlock()
	if len(v) > 0 {
		t.Fatalf("handler-side violations: %v", v)
	}
	if n := m.l.active.Load(); n > int64(m.concurrency) {
		t.Fatalf("%d handlers running on %d workers", n, m.concurrency)
	}
	m.mu.Lock()
	rej := append([]string(nil), m.rej...)
	m.mu.Unlock()
	m.l.mu.Lock()
	defer m.l.mu.Unlock()
	for _, k := range rej {
		if g := m.l.jobs[k]; g != nil && len(g.started) > 0 {
			t.Fatalf("job %s ran although its Enqueue failed", k)
		}
	}
}

// finish shuts down (if no step did), lets every stuck handler return,
// waits until the runner's goroutines are gone, and audits the whole run.
func (m *runnerModel) finish(t *rapid.T) {
	if !m.shut {
		m.Shutdown(t)
	}
	m.mu.Lock()
	for _, ch := range m.release {
		select {
		case <-ch:
		default:
			close(ch)
		}
	}
	m.mu.Unlock()
	// Once the workers are gone, every late outcome has been ignored (or
	// wrongly recorded) and the ledger is final.
	if err := m.l.quiesce(5*time.Second, m.leaks); err != nil {
		t.Fatalf("after Shutdown and every handler's release: %v", err)
	}
	v, c := m.l.audit(m.acc, m.rej, m.report)
	modelTotals.add(c, len(m.rej))
	if len(v) > 0 {
		t.Fatalf("contract violated (%+v):\n%s", c, joinLines(v))
	}
	byKey := make(map[string]jobs.Unrun, len(m.report))
	for _, u := range m.report {
		byKey[string(u.Payload)] = u
	}
	// A handler blocked when Shutdown returned cannot have returned before
	// the report: it is reported, abandoned, at that attempt.
	for k, a := range m.stuckAt {
		if u, ok := byKey[k]; !ok || !u.Abandoned || u.Attempt != a {
			t.Fatalf("job %s was stuck in attempt %d when Shutdown returned; reported %v as %+v", k, a, ok, u)
		}
	}
}

// The runner and its MemoryQueue as a state machine: random enqueues
// (blocking or fail-fast, delayed, unique, retried), handlers that
// succeed, fail, fail for good, panic, run slow, wait for cancellation,
// ignore it for a while or until released, and a Shutdown with a random
// deadline at any step, with Enqueues racing it. After every step the
// attempts are consistent; at the end every accepted job is exactly one of
// run to completion or reported, no rejected job ran, a handler still
// blocked when Shutdown returned is reported abandoned, and no goroutine
// is left.
func TestRunnerModel(t *testing.T) {
	start := time.Now()
	modelTotals = totals{}
	rapid.Check(t, func(t *rapid.T) {
		m := newRunnerModel(t)
		// Weighted towards enqueueing, so that a Shutdown drawn at a
		// random step usually finds work queued, running and retrying.
		t.Repeat(map[string]func(*rapid.T){
			"Enqueue": m.Enqueue, "Enqueue2": m.Enqueue, "Enqueue3": m.Enqueue, "Enqueue4": m.Enqueue,
			"Wait": m.Wait, "Wait2": m.Wait, "Unstick": m.Unstick, "Shutdown": m.Shutdown,
			"": m.Check,
		})
		m.finish(t)
	})
	t.Logf("took %v; over all checks: %+v", time.Since(start).Round(time.Millisecond), modelTotals)
	if modelTotals.reported == 0 || modelTotals.abandoned == 0 || modelTotals.succeeded == 0 || modelTotals.dead == 0 || modelTotals.rejected == 0 {
		t.Fatalf("the checks did not reach every outcome: %+v", modelTotals)
	}
}

// totals add up the outcomes over every check, to show the model reaches
// them all.
type totals struct {
	counts
	rejected int
}

var modelTotals totals

func (s *totals) add(c counts, rejected int) {
	s.accepted += c.accepted
	s.succeeded += c.succeeded
	s.dead += c.dead
	s.reported += c.reported
	s.interrupted += c.interrupted
	s.abandoned += c.abandoned
	s.rejected += rejected
}
