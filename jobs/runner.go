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
	// InterruptedKey marks an attempt that Shutdown's deadline cancelled;
	// the job is in Shutdown's report.
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

	mu          sync.Mutex
	kinds       map[string]*kind
	unique      map[string]*Envelope // pending unique jobs by kind+key
	inflight    map[*Envelope]struct{}
	outstanding int // jobs enqueued and not finished, plus running Go tasks
	closing     bool
	idle        chan struct{} // closed once closing and outstanding == 0
	unrun       []Unrun       // jobs stopped by Shutdown's deadline
	reported    bool          // Shutdown has returned its report

	pushing       sync.WaitGroup // Enqueues between the closing check and their push
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
// Register kinds before enqueuing them; a kind is registered once.
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
	return msgtrace.Message{Destination: r.q.Name(), ID: e.ID, BodySize: len(e.Payload),
		Attrs: []attribute.KeyValue{KindKey.String(e.Kind)}}
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
		e, err := r.q.Pop(r.pop)
		if err != nil {
			if r.pop.Err() == nil {
				// A broker queue's transient failure: do not spin on it.
				r.t.Logger.Error("jobs: pop", "queue", r.q.Name(), "error", err)
				select {
				case <-time.After(100 * time.Millisecond):
				case <-r.pop.Done():
				}
				continue
			}
			return
		}
		r.run(e)
	}
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

func (r *Runner) run(e *Envelope) {
	r.mu.Lock()
	if r.remote {
		if r.closing { // popped as Shutdown began: safer with the broker
			r.mu.Unlock()
			_ = r.q.Release(context.Background(), e)
			return
		}
		r.outstanding++ // it is this process's job until settled
	}
	if e.uniqueKey != "" && r.unique[e.uniqueKey] == e {
		delete(r.unique, e.uniqueKey)
	}
	if r.hard.Err() != nil {
		if !r.reported {
			r.unrun = append(r.unrun, Unrun{Envelope: *e})
		}
		r.mu.Unlock()
		_ = r.q.Release(context.Background(), e)
		return
	}
	r.inflight[e] = struct{}{}
	k := r.kinds[e.Kind]
	r.mu.Unlock()
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
		err = msgtrace.Permanent(fmt.Errorf("jobs: run job %s of kind %q: %w", e.ID, e.Kind, ErrUnknownKind))
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

// settle ends the attempt and decides the job's fate: done, retried, dead,
// or (at Shutdown's deadline) interrupted and reported.
func (r *Runner) settle(ctx context.Context, proc *msgtrace.Process, e *Envelope, job *Job, set settings, err error) {
	bg := context.WithoutCancel(ctx) // settling must not fail because the job's ctx ended
	if err != nil && r.hard.Err() != nil {
		proc.Span.SetAttributes(InterruptedKey.Bool(true))
		proc.End(bg, err, false)
		r.mu.Lock()
		delete(r.inflight, e)
		reported := r.reported
		if !reported {
			r.unrun = append(r.unrun, Unrun{Envelope: *e, Interrupted: true})
			r.finishLocked()
		}
		r.mu.Unlock()
		if !reported {
			_ = r.q.Release(bg, e)
		}
		return
	}
	final, delay := msgtrace.Decide(err, e.Attempt, set.maxAttempts, set.backoff)
	var settleErr error
	switch {
	case err == nil:
		proc.End(bg, nil, false)
		settleErr = r.q.Ack(bg, e)
	case !final:
		next := e.clone()
		next.Attempt++
		next.NotBefore = time.Now().Add(delay)
		r.t.Carrier().InjectRetry(propagation.MapCarrier(next.Headers),
			carrier.Retry{Attempt: next.Attempt, Previous: proc.SpanContext()})
		proc.End(bg, err, false)
		if settleErr = r.q.Retry(bg, e, next); settleErr == nil {
			r.mu.Lock()
			delete(r.inflight, e)
			if r.remote && !r.reported {
				r.finishLocked()
			}
			r.mu.Unlock()
			return
		}
		// The job cannot be retried, so it is dead now: its handler
		// sees the journey, outside the attempt span that already ended.
		r.dead(bg, job, fmt.Errorf("jobs: retry job %s: %w (after %w)", e.ID, settleErr, err))
		settleErr = r.q.Ack(bg, e)
	default:
		// Inside the final attempt's span, so what the dead-job handler
		// records is a child of the attempt that failed.
		r.dead(bg, job, err)
		proc.End(bg, err, true)
		settleErr = r.q.Ack(bg, e)
	}
	if settleErr != nil {
		r.t.Logger.ErrorContext(bg, "jobs: settle job", "job", e.ID, "kind", e.Kind, "error", settleErr)
	}
	r.mu.Lock()
	delete(r.inflight, e)
	if !r.reported {
		r.finishLocked()
	}
	r.mu.Unlock()
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
// and waits for queued jobs, retries and Go tasks to finish. If ctx ends
// first, it cancels what still runs, waits up to Config.ShutdownGrace for
// handlers to return, and returns every job that did not finish (queued,
// waiting for a retry, or interrupted) with an error wrapping ctx's.
// Nothing is dropped silently. Call it once.
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
		r.stopPop() // the broker keeps what no worker here has taken
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
		r.stopPop()
		r.workers.Wait()
		r.tasks.Wait()
		r.cancelRunning()
		return nil, nil
	case <-ctx.Done():
	}

	r.cancelRunning()
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

	r.mu.Lock()
	r.reported = true
	out := r.unrun
	r.unrun = nil
	for e := range r.inflight { // handlers that ignored cancellation
		out = append(out, Unrun{Envelope: *e, Interrupted: true})
	}
	r.mu.Unlock()
	queued, err := r.q.Drain(context.WithoutCancel(ctx))
	for _, e := range queued {
		out = append(out, Unrun{Envelope: *e})
	}
	if err != nil {
		return out, fmt.Errorf("jobs: shutdown: drain %q: %w (%w)", r.q.Name(), err, ctx.Err())
	}
	return out, fmt.Errorf("jobs: shutdown: %d jobs did not finish: %w", len(out), ctx.Err())
}
