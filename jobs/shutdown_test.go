package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
)

// With jobs in flight and queued, Shutdown with a short deadline cancels
// the running ones and returns every job that did not finish:
// in flight + done + returned = enqueued. Goroutines go back to baseline.
func TestShutdownDeadlineReturnsUnrun(t *testing.T) {
	base := runtime.NumGoroutine()
	tel := testenv.NewTelemetry(t)
	const workers, fast1, fast2 = 4, 10, 50
	r := jobs.New(jobs.Config{}, tracebridge.WithConcurrency(workers),
		tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithMeterProvider(tel.MeterProvider))

	var done, running atomic.Int64
	var mu sync.Mutex
	slowIDs := map[string]bool{}
	_ = r.Register("fast", func(context.Context, *jobs.Job) error { done.Add(1); return nil })
	_ = r.Register("slow", func(ctx context.Context, job *jobs.Job) error {
		running.Add(1)
		<-ctx.Done() // only Shutdown's deadline ends it
		running.Add(-1)
		return ctx.Err()
	})

	enqueued := 0
	enqueue := func(kind string, n int) {
		for range n {
			id, err := r.Enqueue(context.Background(), kind, []byte(kind))
			if err != nil {
				t.Fatal(err)
			}
			if kind == "slow" {
				mu.Lock()
				slowIDs[id] = true
				mu.Unlock()
			}
			enqueued++
		}
	}
	enqueue("fast", fast1)
	eventually(t, "the first fast jobs to finish", func() bool { return done.Load() == fast1 })
	enqueue("slow", workers) // occupies every worker
	eventually(t, "every worker to be busy", func() bool { return running.Load() == workers })
	enqueue("fast", fast2) // cannot run before the deadline

	inFlight := running.Load()
	if n, ok := tel.SumInt(t, "tracebridge.jobs.inflight"); !ok || n != inFlight {
		t.Fatalf("tracebridge.jobs.inflight = %d (reported %v), want %d", n, ok, inFlight)
	}
	if n, ok := tel.SumInt(t, "tracebridge.jobs.queue.depth"); !ok || n != fast2 {
		t.Fatalf("tracebridge.jobs.queue.depth = %d (reported %v), want %d", n, ok, fast2)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	unrun, err := r.Shutdown(ctx)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown past its deadline returned %v", err)
	}
	var interrupted, notStarted int
	for _, u := range unrun {
		if u.Interrupted {
			interrupted++
			if !slowIDs[u.ID] || u.Kind != "slow" || string(u.Payload) != "slow" {
				t.Fatalf("interrupted job %s (%s) was not one of the running ones", u.ID, u.Kind)
			}
			continue
		}
		notStarted++
		if u.Kind != "fast" || u.Attempt != 1 || u.Headers["traceparent"] == "" {
			t.Fatalf("returned job %+v: want an unstarted fast job with its journey headers", u)
		}
	}
	t.Logf("enqueued %d: done %d, in flight at the deadline %d (returned interrupted %d), returned unstarted %d; shutdown took %v",
		enqueued, done.Load(), inFlight, interrupted, notStarted, took)
	if int(inFlight)+int(done.Load())+notStarted != enqueued {
		t.Fatalf("in flight %d + done %d + returned %d != enqueued %d", inFlight, done.Load(), notStarted, enqueued)
	}
	if interrupted != int(inFlight) || notStarted != fast2 {
		t.Fatalf("returned %d interrupted and %d unstarted, want %d and %d", interrupted, notStarted, inFlight, fast2)
	}
	if _, err := r.Enqueue(context.Background(), "fast", nil); !errors.Is(err, jobs.ErrClosed) {
		t.Fatalf("enqueue after shutdown: %v, want ErrClosed", err)
	}
	for _, s := range tel.Named("process jobs") {
		if v, _ := testenv.Attr(s, jobs.InterruptedKey); v.AsBool() {
			interrupted--
		}
	}
	if interrupted != 0 {
		t.Fatal("interrupted attempts are not marked on their spans")
	}
	settleGoroutines(t, base)
}

// Without a deadline, Shutdown drains everything queued, retries included.
func TestShutdownDrainsEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	r := jobs.New(jobs.Config{}, tracebridge.WithConcurrency(2))
	var done atomic.Int64
	_ = r.Register("work", func(ctx context.Context, job *jobs.Job) error {
		if job.Attempt == 1 && job.Payload[0]%2 == 0 {
			return errors.New("retry me")
		}
		time.Sleep(time.Millisecond)
		done.Add(1)
		return nil
	}, jobs.WithBackoff(5*time.Millisecond, 10*time.Millisecond))
	const n = 100
	for i := range n {
		if _, err := r.Enqueue(context.Background(), "work", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	unrun, err := r.Shutdown(context.Background())
	if err != nil || len(unrun) != 0 {
		t.Fatalf("shutdown: %d unrun, %v", len(unrun), err)
	}
	if done.Load() != n {
		t.Fatalf("%d of %d jobs done after a full drain", done.Load(), n)
	}
	if _, err := r.Shutdown(context.Background()); !errors.Is(err, jobs.ErrClosed) {
		t.Fatalf("second shutdown: %v, want ErrClosed", err)
	}
	settleGoroutines(t, base)
}

// A full queue fails fast with FailFast, and otherwise blocks until ctx
// ends or Shutdown begins.
func TestQueueFull(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	hold := func(context.Context, *jobs.Job) error {
		started <- struct{}{}
		<-release
		return nil
	}
	fill := func(t *testing.T, r *jobs.Runner) {
		_ = r.Register("hold", hold)
		if _, err := r.Enqueue(context.Background(), "hold", nil); err != nil {
			t.Fatal(err)
		}
		<-started // the only worker is busy now
		for range 2 {
			if _, err := r.Enqueue(context.Background(), "hold", nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("fail fast", func(t *testing.T) {
		r, _ := newRunner(t, jobs.Config{QueueSize: 2, FailFast: true}, tracebridge.WithConcurrency(1))
		fill(t, r)
		if _, err := r.Enqueue(context.Background(), "hold", nil); !errors.Is(err, jobs.ErrQueueFull) {
			t.Fatalf("enqueue into a full queue: %v, want ErrQueueFull", err)
		}
		for range 3 {
			release <- struct{}{}
		}
	})
	t.Run("block", func(t *testing.T) {
		r, _ := newRunner(t, jobs.Config{QueueSize: 2}, tracebridge.WithConcurrency(1))
		fill(t, r)
		start := time.Now() // before the deadline is set, so the wait is at least 30ms from it
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		if _, err := r.Enqueue(ctx, "hold", nil); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 30*time.Millisecond {
			t.Fatalf("blocked enqueue: %v after %v, want DeadlineExceeded after 30ms", err, time.Since(start))
		}
		errc := make(chan error, 1)
		go func() {
			_, err := r.Enqueue(context.Background(), "hold", nil)
			errc <- err
		}()
		time.Sleep(10 * time.Millisecond)
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer scancel()
		unrun, _ := r.Shutdown(sctx)
		if err := <-errc; !errors.Is(err, jobs.ErrClosed) {
			t.Fatalf("enqueue blocked across Shutdown: %v, want ErrClosed", err)
		}
		close(release)
		if len(unrun) != 3 {
			t.Fatalf("%d unrun, want the held job and the 2 queued", len(unrun))
		}
	})
}

// What each way a handler can end at Shutdown's deadline makes of its job
// (one job, one worker, 3 attempts allowed): exactly one of run to
// completion or reported, as Shutdown's doc promises, and nothing after
// the report (no retry, no dead-job handler) for a handler that returns
// late. Each case checks the outcome, and the ledger audits the rest.
func TestShutdownHandlerOutcomes(t *testing.T) {
	errRetry := errors.New("retry me")
	cases := []struct {
		name    string
		attempt int           // the attempt that blocks; earlier ones fail
		grace   time.Duration // long: the handler returns within it
		late    bool          // the handler returns only after Shutdown did
		ret     func(ctx context.Context) error
		// Outcome: reported (and how), or else dead or succeeded.
		reported, interrupted, abandoned, dead bool
	}{
		{name: "ignores cancellation and succeeds within the grace", attempt: 1, grace: time.Minute,
			ret: func(context.Context) error { return nil }},
		{name: "honours cancellation", attempt: 1, grace: time.Minute,
			ret:      func(ctx context.Context) error { return ctx.Err() },
			reported: true, interrupted: true},
		{name: "fails after cancellation on its last attempt", attempt: 3, grace: time.Minute,
			ret:      func(context.Context) error { return errRetry },
			reported: true, interrupted: true},
		{name: "fails permanently after cancellation", attempt: 1, grace: time.Minute,
			ret:  func(context.Context) error { return tracebridge.Permanent(errRetry) },
			dead: true},
		{name: "panics after cancellation", attempt: 1, grace: time.Minute,
			ret:      func(context.Context) error { panic("late panic") },
			reported: true, interrupted: true},
		{name: "succeeds after Shutdown returned", attempt: 1, grace: 20 * time.Millisecond, late: true,
			ret:      func(context.Context) error { return nil },
			reported: true, interrupted: true, abandoned: true},
		{name: "fails after Shutdown returned", attempt: 2, grace: 20 * time.Millisecond, late: true,
			ret:      func(context.Context) error { return errRetry },
			reported: true, interrupted: true, abandoned: true},
		{name: "fails permanently after Shutdown returned", attempt: 1, grace: 20 * time.Millisecond, late: true,
			ret:      func(context.Context) error { return tracebridge.Permanent(errRetry) },
			reported: true, interrupted: true, abandoned: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			l := newLedger()
			r := jobs.New(jobs.Config{ShutdownGrace: c.grace, Timeout: -1, DeadJob: l.deadJob},
				tracebridge.WithConcurrency(1), tracebridge.WithRetry(3, time.Millisecond, time.Millisecond))
			blocked := make(chan struct{})
			release := make(chan struct{}) // closed after Shutdown returned, for late handlers
			var returned atomic.Bool
			_ = r.Register("k", func(ctx context.Context, j *jobs.Job) (err error) {
				l.start(j)
				defer func() {
					p := recover()
					if p != nil {
						err = fmt.Errorf("panic: %v", p)
					}
					returned.Store(j.Attempt == c.attempt)
					l.end(j, err)
					if p != nil {
						panic(p)
					}
				}()
				if j.Attempt < c.attempt {
					return errRetry
				}
				close(blocked)
				<-ctx.Done() // Shutdown's deadline
				if c.late {
					<-release
				} else {
					time.Sleep(20 * time.Millisecond) // still ignoring it
				}
				return c.ret(ctx)
			})
			if _, err := r.Enqueue(context.Background(), "k", []byte("job")); err != nil {
				t.Fatal(err)
			}
			<-blocked
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancel()
			unrun, err := r.Shutdown(ctx)
			returnedFirst := returned.Load()
			close(release)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("shutdown: %v, want DeadlineExceeded", err)
			}
			if c.late == returnedFirst {
				t.Fatalf("handler returned before Shutdown: %v, want %v", returnedFirst, !c.late)
			}
			// The late worker has exited too: its outcome is recorded or
			// not by now.
			if err := l.quiesce(5*time.Second, leaks); err != nil {
				t.Fatal(err)
			}

			if v, _ := l.audit([]string{"job"}, nil, unrun); len(v) > 0 {
				t.Fatalf("contract violated: %v (report %+v)", v, unrun)
			}
			if got := len(unrun) == 1; got != c.reported {
				t.Fatalf("reported %d jobs, want reported=%v", len(unrun), c.reported)
			}
			if c.reported {
				u := unrun[0]
				if u.Interrupted != c.interrupted || u.Abandoned != c.abandoned || u.Attempt != c.attempt {
					t.Fatalf("reported %+v, want interrupted=%v abandoned=%v attempt=%d", u, c.interrupted, c.abandoned, c.attempt)
				}
			}
			l.mu.Lock()
			dead := l.jobs["job"].dead
			l.mu.Unlock()
			if (dead == 1) != c.dead {
				t.Fatalf("dead-job handler called %d times, want dead=%v", dead, c.dead)
			}
		})
	}
}

// Shutdown leaves no goroutine behind once its handlers and Go tasks have
// returned: workers, the grace timer's watcher, the queue's waiters. Jobs
// are in flight (blocked until cancelled), queued, delayed and waiting for
// a retry when the deadline passes.
func TestShutdownLeavesNoGoroutines(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	r := jobs.New(jobs.Config{QueueSize: 64, ShutdownGrace: 2 * time.Second},
		tracebridge.WithConcurrency(4), tracebridge.WithRetry(3, time.Minute, time.Minute))
	var running atomic.Int64
	_ = r.Register("block", func(ctx context.Context, _ *jobs.Job) error {
		running.Add(1)
		<-ctx.Done()
		return ctx.Err()
	})
	_ = r.Register("fail", func(context.Context, *jobs.Job) error { return errors.New("retried in a minute") })
	for _, kind := range []string{"fail", "block", "block", "block", "block", "block", "block"} {
		if _, err := r.Enqueue(context.Background(), kind, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Enqueue(context.Background(), "block", nil, jobs.WithDelay(time.Minute)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := r.Go(context.Background(), "task", func(ctx context.Context) error { <-ctx.Done(); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the workers to block", func() bool { return running.Load() == 4 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	unrun, err := r.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || len(unrun) != 8 {
		t.Fatalf("shutdown: %d unrun (%v), want all 8 jobs", len(unrun), err)
	}
	goleak.VerifyNone(t, leaks)
}

// gatedProcessSpans is a TracerProvider whose "process" spans start only
// once gate is closed, announcing each wait on waiting: a worker that took
// a job and is about to call its handler, held there as the scheduler of
// a loaded machine may hold it.
type gatedProcessSpans struct {
	trace.TracerProvider
	waiting chan<- struct{}
	gate    <-chan struct{}
}

func (p gatedProcessSpans) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return gatedTracer{p.TracerProvider.Tracer(name, opts...), p}
}

type gatedTracer struct {
	trace.Tracer
	p gatedProcessSpans
}

func (g gatedTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if strings.HasPrefix(name, "process ") {
		g.p.waiting <- struct{}{}
		<-g.p.gate
	}
	return g.Tracer.Start(ctx, name, opts...)
}

// TestShutdownReportsAJobItsWorkerHadNotStarted: a worker takes a job and
// is held before its handler begins while Shutdown's deadline and grace
// pass. Whatever Shutdown reports about that job, and whatever the
// handler then does, must agree with the contract once every goroutine of
// the runner is gone, as audit checks.
func TestShutdownReportsAJobItsWorkerHadNotStarted(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	l := newLedger()
	waiting, gate := make(chan struct{}, 1), make(chan struct{})
	tp := gatedProcessSpans{TracerProvider: sdktrace.NewTracerProvider(), waiting: waiting, gate: gate}
	r := jobs.New(jobs.Config{ShutdownGrace: time.Millisecond, Timeout: -1, DeadJob: l.deadJob},
		tracebridge.WithConcurrency(1), tracebridge.WithTracerProvider(tp))
	_ = r.Register("k", func(ctx context.Context, j *jobs.Job) (err error) {
		l.start(j)
		defer func() { l.end(j, err) }()
		return nil
	})
	if _, err := r.Enqueue(context.Background(), "k", []byte("job")); err != nil {
		t.Fatal(err)
	}
	<-waiting // taken, its handler not begun
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	unrun, err := r.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown: %v, want DeadlineExceeded", err)
	}
	// The worker goes on well after Shutdown returned.
	time.AfterFunc(50*time.Millisecond, func() { close(gate) })
	if err := l.quiesce(5*time.Second, leaks); err != nil {
		t.Fatal(err)
	}
	if v, _ := l.audit([]string{"job"}, nil, unrun); len(v) > 0 {
		t.Fatalf("contract violated: %v (report %+v)", v, unrun)
	}
}
