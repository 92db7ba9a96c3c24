package jobs

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Attribute keys the runner adds to its spans, for queries and tail
// sampling rules that select jobs.
const (
	// KindKey is the job's kind, on its send and process spans. The kind
	// is not in the span name, which names the queue as for any message.
	KindKey = attribute.Key("tracebridge.job.kind")
	// DuplicateKey marks the send span of a job that matched a pending
	// unique job: "dropped" or "merged".
	DuplicateKey = attribute.Key("tracebridge.job.duplicate")
	// InterruptedKey marks an attempt that Shutdown's deadline cancelled
	// or abandoned; the job is in Shutdown's report, or, with a
	// broker-backed queue, back with the broker.
	InterruptedKey = attribute.Key("tracebridge.job.interrupted")
	// TaskKey is the name given to Go, on the task's span.
	TaskKey = attribute.Key("tracebridge.task.name")
)

const (
	defaultQueueSize = 1024
	defaultTimeout   = 5 * time.Minute
	defaultGrace     = time.Second
)

// Runner runs registered job kinds on a pool of workers and fire-and-forget
// tasks started with Go. Create it with New, Register kinds, Enqueue jobs
// and call Shutdown once. It is safe for concurrent use.
type Runner struct {
	cfg    Config
	t      *msgtrace.Tracer
	tracer trace.Tracer // for Go's task spans, which are not messaging spans
	q      Queue
	remote bool // q's jobs live with a broker, not in this process
	base   settings

	mu     sync.Mutex
	kinds  map[string]*kind
	unique map[string]*Envelope // pending unique jobs by kind+key
	// inflight holds the jobs whose handler runs. A worker removes its job
	// when the handler returns, and so claims the right to record the
	// outcome; Shutdown empties it when it takes its report, so a handler
	// that returns later finds its job gone and records nothing.
	inflight    map[*Envelope]struct{}
	outstanding int // jobs enqueued and not finished, plus running Go tasks
	closing     bool
	idle        chan struct{} // closed once closing and outstanding == 0
	unrun       []Unrun       // jobs stopped by Shutdown's deadline, for its report
	noPop       bool          // workers take no more jobs; set before stopPop

	pushing       sync.WaitGroup // Enqueues between the closing check and their push
	popping       sync.WaitGroup // workers between Pop and taking (or reporting) its job
	retrying      sync.WaitGroup // in-process retries between their claim and q.Retry
	workers       sync.WaitGroup
	tasks         sync.WaitGroup
	nInflight     atomic.Int64
	intake        context.Context // ends when Shutdown begins: wakes blocked Enqueues
	stopIntake    context.CancelFunc
	pop           context.Context // ends when the workers should stop taking jobs
	stopPop       context.CancelFunc
	hard          context.Context // ends at Shutdown's deadline: cancels running work
	cancelRunning context.CancelFunc
	gauges        metric.Registration
}

type kind struct {
	handler Handler
	set     settings
}

// New starts a runner with cfg's job settings and the shared tracebridge
// options; it reads WithTracerProvider, WithMeterProvider, WithPropagators,
// WithRetry (the default attempts and backoff of every kind), WithConcurrency
// (workers; default GOMAXPROCS), WithErrorOnEveryAttempt, WithParentPolicy
// and WithLogger. Its workers run until Shutdown.
func New(cfg Config, opts ...tracebridge.Option) *Runner {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = defaultQueueSize
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = defaultGrace
	}
	if cfg.Queue == nil {
		cfg.Queue = NewMemoryQueue("jobs", cfg.QueueSize)
	}
	// Jobs are mostly I/O-bound, so one worker (the consumers' default)
	// would be a surprising default; GOMAXPROCS is overridden by
	// WithConcurrency, which comes later.
	defConc := func(c *msgtrace.Config) { c.Concurrency = runtime.GOMAXPROCS(0) }
	t := msgtrace.New(cfg.Queue.System(), append([]msgtrace.Option{defConc}, opts...))
	r := &Runner{
		cfg:      cfg,
		t:        t,
		tracer:   t.TracerProvider.Tracer(msgtrace.ScopeName, trace.WithInstrumentationVersion(msgtrace.Version)),
		q:        cfg.Queue,
		remote:   isRemote(cfg.Queue),
		base:     settings{maxAttempts: t.MaxAttempts, timeout: cfg.Timeout, backoff: t.Backoff},
		kinds:    make(map[string]*kind),
		unique:   make(map[string]*Envelope),
		inflight: make(map[*Envelope]struct{}),
		idle:     make(chan struct{}),
	}
	// The runner's contexts carry no values: they exist only to cancel.
	// Each job's context is built from its own headers on top of them.
	r.intake, r.stopIntake = context.WithCancel(context.Background())
	r.hard, r.cancelRunning = context.WithCancel(context.Background())
	r.pop, r.stopPop = context.WithCancel(r.hard)
	r.registerGauges()
	for range t.Concurrency {
		r.workers.Add(1)
		go r.work()
	}
	return r
}

// Register sets the handler of a job kind and its defaults (attempts,
// timeout, backoff, delay, uniqueness), which each Enqueue can override.
// Register kinds before enqueuing them; a kind is registered once. A worker
// that takes a job of a kind it does not know (yet) from a broker-backed
// queue fails that attempt and retries it with the usual backoff, so kinds
// registered right after New lose nothing.
func (r *Runner) Register(kindName string, h Handler, opts ...JobOption) error {
	if kindName == "" || h == nil {
		return fmt.Errorf("jobs: register kind %q: empty kind or nil handler", kindName)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return fmt.Errorf("jobs: register kind %q: %w", kindName, ErrClosed)
	}
	if _, dup := r.kinds[kindName]; dup {
		return fmt.Errorf("jobs: register kind %q: already registered", kindName)
	}
	r.kinds[kindName] = &kind{handler: h, set: r.base.with(opts)}
	return nil
}

func (r *Runner) kind(name string) *kind {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.kinds[name]
}

func (r *Runner) message(e *Envelope) msgtrace.Message {
	// The kind by value (Attr): a one-element Attrs slice would be an
	// allocation per span.
	return msgtrace.Message{Destination: r.q.Name(), ID: e.ID, BodySize: len(e.Payload),
		Attr: KindKey.String(e.Kind)}
}

// Enqueue records a PRODUCER span and queues a job of a registered kind.
// The job captures ctx's journey (trace, baggage, session) in its headers
// but not its cancellation, deadline or other values: it outlives the
// request that enqueued it, and its handler gets a context rebuilt from
// the headers. payload is copied. It returns the job's ID; with a unique
// key that matches a pending job, that job's ID and ErrDuplicate. When the
// queue is full it waits for room (until ctx ends), or returns ErrQueueFull
// with Config.FailFast.
func (r *Runner) Enqueue(ctx context.Context, kindName string, payload []byte, opts ...JobOption) (string, error) {
	k := r.kind(kindName)
	if k == nil {
		return "", fmt.Errorf("jobs: enqueue %q: %w", kindName, ErrUnknownKind)
	}
	job := settings{}.with(opts)
	set := k.set.with(opts)
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("jobs: enqueue %q: job ID: %w", kindName, err)
	}
	now := time.Now()
	e := &Envelope{
		ID: id.String(), Kind: kindName, Payload: append([]byte(nil), payload...),
		Headers: make(map[string]string, 4), Attempt: 1, EnqueuedAt: now,
		MaxAttempts: job.maxAttempts, Timeout: job.timeout,
		BackoffInitial: job.backoff.Initial, BackoffMax: job.backoff.Max,
	}
	if set.delay > 0 {
		e.NotBefore = now.Add(set.delay)
	}
	sctx, op := r.t.StartSend(ctx, propagation.MapCarrier(e.Headers), r.message(e))
	id2, err := r.enqueue(sctx, e, set)
	if errors.Is(err, ErrDuplicate) {
		op.Span.SetAttributes(DuplicateKey.String(dupOutcome(set)))
		op.End(sctx, nil)
		return id2, err
	}
	op.End(sctx, err)
	return id2, err
}

func dupOutcome(s settings) string {
	if s.merge != nil {
		return "merged"
	}
	return "dropped"
}

func (r *Runner) enqueue(ctx context.Context, e *Envelope, set settings) (string, error) {
	var key string
	if set.uniqueKey != nil {
		key = e.Kind + "\x00" + set.uniqueKey(e.Payload)
	}
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return "", fmt.Errorf("jobs: enqueue %q: %w", e.Kind, ErrClosed)
	}
	if key != "" {
		if p, ok := r.unique[key]; ok {
			// A pending job is in the queue and untouched by workers until
			// a worker claims it under r.mu, so its payload can change here.
			_, inPlace := r.q.(*MemoryQueue)
			if set.merge != nil && inPlace {
				p.Payload = set.merge(p.Payload, e.Payload)
			}
			r.mu.Unlock()
			return p.ID, fmt.Errorf("jobs: enqueue %q: pending job %s: %w", e.Kind, p.ID, ErrDuplicate)
		}
		r.unique[key] = e
		e.uniqueKey = key
	}
	r.outstanding++
	r.pushing.Add(1)
	r.mu.Unlock()

	// Try without waiting first: the common case then needs no context
	// plumbing. A push that waits must end when Shutdown begins, not only
	// with ctx.
	err := r.q.Push(ctx, e, false)
	if errors.Is(err, ErrQueueFull) && !r.cfg.FailFast {
		pctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(r.intake, cancel)
		err = r.q.Push(pctx, e, true)
		stop()
		cancel()
	}
	if err != nil && r.intake.Err() != nil && !errors.Is(err, ErrQueueFull) {
		err = fmt.Errorf("jobs: enqueue %q: %w (%w)", e.Kind, ErrClosed, err)
	} else if err != nil {
		err = fmt.Errorf("jobs: enqueue %q: %w", e.Kind, err)
	}
	r.mu.Lock()
	// A job the broker confirmed is the broker's: another process may run
	// it, so this one neither waits for it nor can tell when it leaves.
	if err != nil || r.remote {
		if key != "" && r.unique[key] == e {
			delete(r.unique, key)
		}
		r.finishLocked()
	}
	r.pushing.Done()
	r.mu.Unlock()
	if err != nil {
		return "", err
	}
	return e.ID, nil
}

// finishLocked counts one job or task as finished; the caller holds r.mu.
func (r *Runner) finishLocked() {
	r.outstanding--
	if r.closing && r.outstanding == 0 {
		close(r.idle)
	}
}

func (r *Runner) finish() {
	r.mu.Lock()
	r.finishLocked()
	r.mu.Unlock()
}

func (r *Runner) work() {
	defer r.workers.Done()
	for {
		e, k, ok := r.next()
		if !ok {
			return
		}
		r.run(e, k)
	}
}

// next pops the next job this worker may run, with its kind, or reports
// false once the workers must stop. A job popped as Shutdown stops the
// workers is handed back or reported by take, never dropped: Shutdown
// waits for every worker between Pop and take before it reports.
func (r *Runner) next() (*Envelope, *kind, bool) {
	for {
		r.mu.Lock()
		if r.noPop {
			r.mu.Unlock()
			return nil, nil, false
		}
		r.popping.Add(1)
		r.mu.Unlock()
		e, err := r.q.Pop(r.pop)
		if err == nil {
			k, run := r.take(e)
			r.popping.Done()
			if run {
				return e, k, true
			}
			continue
		}
		r.popping.Done()
		if r.pop.Err() != nil {
			return nil, nil, false
		}
		// A broker queue's transient failure: do not spin on it.
		r.t.Logger.Error("jobs: pop", "queue", r.q.Name(), "error", err)
		select {
		case <-time.After(100 * time.Millisecond):
		case <-r.pop.Done():
		}
	}
}

// take registers a popped job as running and returns its kind, or reports
// false for a job that must not start: one a broker queue delivered as
// Shutdown began (handed back to the broker), or one an in-process queue
// delivered at Shutdown's deadline (reported, as if it were still queued).
func (r *Runner) take(e *Envelope) (*kind, bool) {
	r.mu.Lock()
	if e.uniqueKey != "" && r.unique[e.uniqueKey] == e {
		delete(r.unique, e.uniqueKey)
	}
	switch {
	case r.remote && r.closing:
		r.mu.Unlock()
		_ = r.q.Release(context.Background(), e)
		return nil, false
	case !r.remote && r.hard.Err() != nil:
		r.unrun = append(r.unrun, Unrun{Envelope: *e})
		r.finishLocked()
		r.mu.Unlock()
		return nil, false
	}
	if r.remote {
		r.outstanding++ // it is this process's job until settled
	}
	r.inflight[e] = struct{}{}
	k := r.kinds[e.Kind]
	r.mu.Unlock()
	return k, true
}

// resolve merges the worker's kind settings with the job's own overrides.
func (e *Envelope) resolve(s settings) settings {
	if e.MaxAttempts > 0 {
		s.maxAttempts = e.MaxAttempts
	}
	if e.Timeout != 0 {
		s.timeout = e.Timeout
	}
	if e.BackoffInitial > 0 || e.BackoffMax > 0 {
		s.backoff = msgtrace.Backoff{Initial: e.BackoffInitial, Max: e.BackoffMax}
	}
	return s
}

func (r *Runner) run(e *Envelope, k *kind) {
	r.nInflight.Add(1)
	defer r.nInflight.Add(-1)

	set := r.base
	if k != nil {
		set = k.set
	}
	set = e.resolve(set)
	job := &Job{ID: e.ID, Kind: e.Kind, Payload: e.Payload, Attempt: e.Attempt,
		MaxAttempts: set.maxAttempts, EnqueuedAt: e.EnqueuedAt}

	// The journey comes from the headers alone, as it would in another
	// process; r.hard adds only Shutdown's cancellation.
	ctx, proc := r.t.StartProcess(r.hard, msgtrace.Delivery{Message: r.message(e),
		Carrier: propagation.MapCarrier(e.Headers), Attempt: e.Attempt, PublishedAt: e.EnqueuedAt})
	var err error
	if k == nil {
		// Not permanent: a worker can take a job from a broker before its
		// program has registered the kind (New starts the workers), and a
		// rolling deploy can put a new kind on the queue before every worker
		// knows it. The job is retried with backoff and goes to the dead-job
		// handler only once its attempts are spent.
		err = fmt.Errorf("jobs: run job %s of kind %q: %w", e.ID, e.Kind, ErrUnknownKind)
	} else if r.hard.Err() != nil && !r.holds(e) {
		// Shutdown reported this job before its handler began: a worker
		// slow to get here must not start what the report calls unrun.
		err = context.Cause(r.hard)
	} else {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if set.timeout > 0 {
			actx, cancel = context.WithTimeout(ctx, set.timeout)
		}
		err = msgtrace.Call(func() error { return k.handler(actx, job) })
		cancel()
	}
	r.settle(ctx, proc, e, job, set, err)
}

// outcome is what settle decided for an attempt, under r.mu.
type outcome int

const (
	abandoned   outcome = iota // Shutdown reported it while the handler ran
	interrupted                // failed after Shutdown's deadline: reported or handed back
	succeeded
	retried
	dead
)

// holds reports whether e is still in flight, not yet taken by Shutdown's
// report.
func (r *Runner) holds(e *Envelope) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.inflight[e]
	return ok
}

// claim removes e from inflight and decides its outcome, so that the
// decision and Shutdown's report never disagree: once Shutdown took its
// report, every claim finds its job gone.
func (r *Runner) claim(e *Envelope, err error, final bool) outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, mine := r.inflight[e]; !mine {
		return abandoned
	}
	delete(r.inflight, e)
	switch {
	case err == nil:
		return succeeded
	case r.hard.Err() != nil && !msgtrace.IsPermanent(err):
		// The failure may be the cancellation itself, so the attempt did
		// not run to completion: reported, not retried or declared dead.
		if !r.remote {
			r.unrun = append(r.unrun, Unrun{Envelope: *e, Interrupted: true})
		}
		r.finishLocked()
		return interrupted
	case final:
		return dead
	}
	if !r.remote {
		r.retrying.Add(1) // Shutdown drains the queue only after this retry is in it
	}
	return retried
}

// settle ends the attempt and carries out its outcome: done, retried,
// dead, or (at Shutdown's deadline) interrupted and reported.
func (r *Runner) settle(ctx context.Context, proc *msgtrace.Process, e *Envelope, job *Job, set settings, err error) {
	bg := context.WithoutCancel(ctx) // settling must not fail because the job's ctx ended
	final, delay := msgtrace.Decide(err, e.Attempt, set.maxAttempts, set.backoff)
	var settleErr error
	switch r.claim(e, err, final) {
	case abandoned:
		// Shutdown has reported this job (or handed it back to its broker)
		// and returned: whatever the handler did is no longer recorded.
		proc.Span.SetAttributes(InterruptedKey.Bool(true))
		proc.End(bg, err, false)
		return
	case interrupted:
		proc.Span.SetAttributes(InterruptedKey.Bool(true))
		proc.End(bg, err, false)
		_ = r.q.Release(bg, e)
		return
	case succeeded:
		proc.End(bg, nil, false)
		settleErr = r.q.Ack(bg, e)
	case retried:
		next := e.clone()
		next.Attempt++
		next.NotBefore = time.Now().Add(delay)
		r.t.Carrier().InjectRetry(propagation.MapCarrier(next.Headers),
			carrier.Retry{Attempt: next.Attempt, Previous: proc.SpanContext()})
		proc.End(bg, err, false)
		settleErr = r.q.Retry(bg, e, next)
		if !r.remote {
			r.retrying.Done()
		}
		if settleErr == nil {
			if r.remote {
				r.finish() // the next attempt is the broker's
			}
			return
		}
		// The job cannot be retried, so it is dead now: its handler
		// sees the journey, outside the attempt span that already ended.
		r.dead(bg, job, fmt.Errorf("jobs: retry job %s: %w (after %w)", e.ID, settleErr, err))
		settleErr = r.q.Ack(bg, e)
	case dead:
		// Inside the final attempt's span, so what the dead-job handler
		// records is a child of the attempt that failed.
		r.dead(bg, job, err)
		proc.End(bg, err, true)
		settleErr = r.q.Ack(bg, e)
	}
	if settleErr != nil {
		r.t.Logger.ErrorContext(bg, "jobs: settle job", "job", e.ID, "kind", e.Kind, "error", settleErr)
	}
	r.finish()
}

func (r *Runner) dead(ctx context.Context, job *Job, err error) {
	if r.cfg.DeadJob == nil {
		r.t.Logger.ErrorContext(ctx, "jobs: dead job", "job", job.ID, "kind", job.Kind, "attempts", job.Attempt, "error", err)
		return
	}
	if perr := msgtrace.Call(func() error { r.cfg.DeadJob(ctx, job, err); return nil }); perr != nil {
		r.t.Logger.ErrorContext(ctx, "jobs: dead-job handler", "job", job.ID, "kind", job.Kind, "error", perr)
	}
}

// Shutdown stops intake (Enqueue and Go fail with ErrClosed from now on)
// and waits for queued jobs, retries and Go tasks to finish; with a
// broker-backed queue (RemoteQueue) it stops taking jobs at once and waits
// only for those its workers took. It returns nil, nil when all finished.
//
// If ctx ends first, Shutdown stops the workers taking jobs, cancels the
// context of every running handler and Go task, waits up to
// Config.ShutdownGrace for them to return, and then returns with an error
// wrapping ctx's. Every job Enqueue accepted is then exactly one of: run to
// completion (it succeeded, or it is dead: failed permanently or for the
// last time, and went to the dead-job handler), or left unrun, and never
// both:
//
//   - A handler that returns before the grace ends decides: nil means the
//     job ran; a permanent error means it is dead; any other error means
//     it was interrupted (the error may be the cancellation itself), so it
//     is neither retried nor declared dead but left unrun.
//   - A handler still running when the grace ends is abandoned: Shutdown
//     leaves it unrun and returns without it, and ignores what it returns
//     later (no ack, no retry, no dead-job handler). Go cannot stop a
//     goroutine, so such a handler may still finish its work; handlers
//     that honour ctx are never abandoned.
//
// What "left unrun" means depends on the queue. With an in-process queue
// (the default MemoryQueue), whose jobs die with the process, Shutdown
// returns each unrun job exactly once: still queued or waiting for a retry
// (Interrupted false), interrupted (Interrupted true), or abandoned
// (Interrupted and Abandoned true). With a broker-backed queue it returns
// none: a job no worker here took stays with the broker, and an
// interrupted or abandoned one is handed back with Queue.Release, so the
// broker delivers it again, to this process or another; reporting it as
// well would make a caller who re-enqueues the report run it twice.
//
// Call Shutdown once; later calls return ErrClosed.
func (r *Runner) Shutdown(ctx context.Context) ([]Unrun, error) {
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return nil, fmt.Errorf("jobs: shutdown: %w", ErrClosed)
	}
	r.closing = true
	if r.outstanding == 0 {
		close(r.idle)
	}
	r.mu.Unlock()
	if r.remote {
		r.stopTaking() // the broker keeps what no worker here has taken
	}
	r.stopIntake()
	r.pushing.Wait() // pushes end quickly now; after this the queue holds every job
	defer func() {
		if r.gauges != nil {
			_ = r.gauges.Unregister()
		}
		_ = r.q.Close()
	}()

	select {
	case <-r.idle:
		r.stopTaking()
		r.workers.Wait()
		r.tasks.Wait()
		r.cancelRunning()
		return nil, nil
	case <-ctx.Done():
	}

	// Cancelled first, so a job popped from now on is reported by take
	// instead of started.
	r.cancelRunning()
	r.stopTaking()
	done := make(chan struct{})
	go func() {
		r.workers.Wait()
		r.tasks.Wait()
		close(done)
	}()
	grace := time.NewTimer(r.cfg.ShutdownGrace)
	select {
	case <-done:
	case <-grace.C:
	}
	grace.Stop()
	return r.report(ctx)
}

// stopTaking makes the workers stop popping jobs.
func (r *Runner) stopTaking() {
	r.mu.Lock()
	r.noPop = true
	r.mu.Unlock()
	r.stopPop()
}

// report takes Shutdown's report once its deadline passed and the grace
// ended: after it, the handlers still running are abandoned.
func (r *Runner) report(ctx context.Context) ([]Unrun, error) {
	bg := context.WithoutCancel(ctx)
	if !r.remote {
		// A job popped as the deadline passed is in no queue and no
		// handler: its worker reports it in take. Pop returns at once now
		// that its ctx ended, so this wait is short.
		r.popping.Wait()
	}
	r.mu.Lock()
	out := r.unrun
	r.unrun = nil
	abandoned := make([]*Envelope, 0, len(r.inflight))
	for e := range r.inflight {
		abandoned = append(abandoned, e)
	}
	clear(r.inflight) // from now on every claim finds its job gone
	r.mu.Unlock()

	if r.remote {
		for _, e := range abandoned {
			_ = r.q.Release(bg, e)
		}
		return nil, fmt.Errorf("jobs: shutdown: unfinished jobs stay with %s %q: %w", r.q.System(), r.q.Name(), ctx.Err())
	}
	for _, e := range abandoned {
		out = append(out, Unrun{Envelope: *e, Interrupted: true, Abandoned: true})
	}
	r.retrying.Wait() // a retry decided before the report is in the queue now
	queued, err := r.q.Drain(bg)
	for _, e := range queued {
		out = append(out, Unrun{Envelope: *e})
	}
	if err != nil {
		return out, fmt.Errorf("jobs: shutdown: drain %q: %w (%w)", r.q.Name(), err, ctx.Err())
	}
	return out, fmt.Errorf("jobs: shutdown: %d jobs did not finish: %w", len(out), ctx.Err())
}
