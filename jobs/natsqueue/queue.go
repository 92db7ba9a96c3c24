package natsqueue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/jobs"
	tbnats "github.com/tracebridge/tracebridge/nats"
)

// DefaultAckWait is how long JetStream waits for a worker's ack before it
// redelivers a job when Config.AckWait is zero. A running job is kept
// alive past it by progress signals, so it bounds only how long a crashed
// worker's job stays invisible.
const DefaultAckWait = 30 * time.Second

// Config names the stream and tunes the consumer.
type Config struct {
	// Stream is the work-queue stream's name, also its subject and the
	// destination on job spans. Required; letters, digits, - and _.
	Stream string
	// Consumer is the durable pull consumer every worker shares. Empty
	// means "workers".
	Consumer string
	// AckWait: see DefaultAckWait.
	AckWait time.Duration
	// DeadLetter is the subject a message that is not a job (garbage, or
	// a job another version cannot decode) is published to, with its
	// headers and the dead-letter-* headers, before it is terminated; a
	// stream of yours must capture it. When the publish fails the message
	// stays on the work stream. Empty terminates such a message after
	// logging it (through the runner), so it is lost.
	DeadLetter string
}

// Queue is a jobs.Queue on a JetStream work-queue stream. It is safe for
// concurrent use; open one per process on the same stream and their
// runners share the jobs.
type Queue struct {
	js         jetstream.JetStream
	cons       jetstream.Consumer
	stream     string
	ackWait    time.Duration
	deadLetter string
	headers    *carrier.Propagator // names of the dead-letter headers
	closed     atomic.Bool

	mu         sync.Mutex
	deliveries map[*delivery]struct{} // popped, not yet settled: their heartbeats run
}

// delivery is a popped job's Receipt: the message to settle and the
// progress heartbeat that keeps it from being redelivered while it runs.
type delivery struct {
	msg  jetstream.Msg
	stop func()
}

// New creates (or updates) the work-queue stream cfg.Stream and its
// durable consumer and returns a queue on them. ctx bounds the setup.
// js is the raw JetStream API: the runner records the job spans, so the
// publishes need no send span of their own.
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Queue, error) {
	if cfg.Stream == "" {
		return nil, errors.New("natsqueue: new: empty stream name")
	}
	if cfg.Consumer == "" {
		cfg.Consumer = "workers"
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
	// File storage, because an acknowledged enqueue must survive a server
	// restart as well as a worker crash.
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: cfg.Stream,
		Subjects: []string{cfg.Stream}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage}); err != nil {
		return nil, fmt.Errorf("natsqueue: new: stream %q: %w", cfg.Stream, err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Stream, jetstream.ConsumerConfig{
		Durable: cfg.Consumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: cfg.AckWait})
	if err != nil {
		return nil, fmt.Errorf("natsqueue: new: consumer %q on stream %q: %w", cfg.Consumer, cfg.Stream, err)
	}
	return &Queue{js: js, cons: cons, stream: cfg.Stream, ackWait: cfg.AckWait,
		deadLetter: cfg.DeadLetter, headers: carrier.NewPropagator(),
		deliveries: make(map[*delivery]struct{})}, nil
}

// System reports "nats".
func (q *Queue) System() string { return "nats" }

// Name is the stream.
func (q *Queue) Name() string { return q.stream }

// Push publishes e and returns once JetStream acknowledged storing it.
// The message ID (job ID and attempt) lets JetStream drop a duplicate
// publish within its duplicate window. block is ignored: the stream has
// no bound of the runner's.
func (q *Queue) Push(ctx context.Context, e *jobs.Envelope, _ bool) error {
	if q.closed.Load() {
		return fmt.Errorf("natsqueue: push job %s: %w", e.ID, jobs.ErrClosed)
	}
	return q.publish(ctx, e)
}

func (q *Queue) publish(ctx context.Context, e *jobs.Envelope) error {
	m := &natsgo.Msg{Subject: q.stream, Data: e.Payload, Header: natsgo.Header{}}
	jobs.EncodeEnvelope(tbnats.HeaderCarrier(m.Header), e)
	if _, err := q.js.PublishMsg(ctx, m, jetstream.WithMsgID(e.ID+"/"+strconv.Itoa(e.Attempt))); err != nil {
		return fmt.Errorf("natsqueue: publish job %s attempt %d to %q: %w", e.ID, e.Attempt, q.stream, err)
	}
	return nil
}

// pollWait bounds one pull request, so Pop notices a closed connection.
const pollWait = 5 * time.Second

// Pop pulls the next due job. A job that is not due yet is handed back
// with NakWithDelay, so it waits on the server rather than in a worker.
// A message that is not a job goes to Config.DeadLetter (see there) and is
// reported as an error. After Close it fails with jobs.ErrClosed.
func (q *Queue) Pop(ctx context.Context) (*jobs.Envelope, error) {
	for {
		if q.closed.Load() {
			return nil, fmt.Errorf("natsqueue: pop from %q: %w", q.stream, jobs.ErrClosed)
		}
		pctx, cancel := context.WithTimeout(ctx, pollWait)
		msg, err := q.cons.Next(jetstream.FetchContext(pctx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, natsgo.ErrTimeout) ||
				errors.Is(err, jetstream.ErrNoMessages) {
				continue
			}
			return nil, fmt.Errorf("natsqueue: pop from %q: %w", q.stream, err)
		}
		var h natsgo.Header
		if h = msg.Headers(); h == nil {
			h = natsgo.Header{}
		}
		e, err := jobs.DecodeEnvelope(tbnats.HeaderCarrier(h), msg.Data())
		if err != nil {
			return nil, q.undecodable(ctx, msg, h, err)
		}
		if wait := time.Until(e.NotBefore); wait > 0 {
			if err := msg.NakWithDelay(wait); err != nil {
				return nil, fmt.Errorf("natsqueue: pop from %q: defer job %s: %w", q.stream, e.ID, err)
			}
			continue
		}
		d := &delivery{msg: msg}
		if !q.track(d) {
			_ = msg.Nak() // closed while pulling: at once to another worker
			return nil, fmt.Errorf("natsqueue: pop from %q: %w", q.stream, jobs.ErrClosed)
		}
		e.Receipt = d
		return e, nil
	}
}

// track starts d's heartbeat and records it until it is settled, so Close
// can stop it; it reports false, starting nothing, once the queue is closed.
func (q *Queue) track(d *delivery) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed.Load() {
		return false
	}
	d.stop = q.heartbeat(d.msg)
	q.deliveries[d] = struct{}{}
	return true
}

// undecodable settles a message that is not a job: dead-lettered and then
// terminated, or left for redelivery when the dead letter cannot be
// published; terminated at once without a dead-letter subject. Retrying it
// would fail the same way for ever.
func (q *Queue) undecodable(ctx context.Context, msg jetstream.Msg, h natsgo.Header, derr error) error {
	err := fmt.Errorf("natsqueue: pop from %q: %w", q.stream, derr)
	if q.deadLetter == "" {
		_ = msg.Term()
		return fmt.Errorf("%w; terminated, no dead-letter subject", err)
	}
	dl := tbnats.RepublishHeader(h)
	q.headers.InjectDeadLetter(tbnats.HeaderCarrier(dl), carrier.DeadLetter{Reason: derr.Error(), Source: q.stream})
	// Deduplicated by stream position: a dead letter whose PubAck or Term
	// was lost is published again on redelivery, and dropped by the server.
	var opts []jetstream.PublishOpt
	if md, merr := msg.Metadata(); merr == nil {
		opts = append(opts, jetstream.WithMsgID(md.Stream+"/"+strconv.FormatUint(md.Sequence.Stream, 10)))
	}
	if _, perr := q.js.PublishMsg(ctx, &natsgo.Msg{Subject: q.deadLetter, Data: msg.Data(), Header: dl}, opts...); perr != nil {
		_ = msg.NakWithDelay(time.Second)
		return fmt.Errorf("%w; dead letter to %q failed, left on the stream: %w", err, q.deadLetter, perr)
	}
	_ = msg.Term()
	return fmt.Errorf("%w; moved to %q", err, q.deadLetter)
}

// heartbeat tells JetStream the job is still running every third of the
// AckWait, so a long job is not redelivered while its worker is alive,
// and a dead worker's job is after at most one AckWait.
func (q *Queue) heartbeat(msg jetstream.Msg) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(q.ackWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// receipt returns e's delivery, its heartbeat stopped, for settling.
func (q *Queue) receipt(e *jobs.Envelope) (*delivery, error) {
	d, ok := e.Receipt.(*delivery)
	if !ok {
		return nil, fmt.Errorf("natsqueue: job %s was not popped from a natsqueue", e.ID)
	}
	q.mu.Lock()
	delete(q.deliveries, d)
	q.mu.Unlock()
	d.stop()
	return d, nil
}

// Ack removes the finished job from the stream, waiting for the server to
// confirm, so a lost ack shows as an error rather than a silent rerun.
func (q *Queue) Ack(ctx context.Context, e *jobs.Envelope) error {
	d, err := q.receipt(e)
	if err != nil {
		return err
	}
	if err := d.msg.DoubleAck(ctx); err != nil {
		return fmt.Errorf("natsqueue: ack job %s on %q: %w", e.ID, q.stream, err)
	}
	return nil
}

// Retry publishes next, which carries the new retry headers and NotBefore,
// and acks prev only once that publish was stored: a crash in between
// runs an attempt twice instead of losing the job. Re-publishing rather
// than NakWithDelay is what lets the retry-previous header reach the next
// attempt, which may run in another process.
func (q *Queue) Retry(ctx context.Context, prev, next *jobs.Envelope) error {
	d, err := q.receipt(prev)
	if err != nil {
		return err
	}
	if err := q.publish(ctx, next); err != nil {
		_ = d.msg.Nak()
		return fmt.Errorf("natsqueue: retry: %w", err)
	}
	// The next attempt is stored, so a failed ack must not make the runner
	// declare the job dead: prev is merely redelivered after AckWait and
	// runs its attempt again.
	_ = d.msg.DoubleAck(ctx)
	return nil
}

// Release naks the job so JetStream redelivers it now, to any worker.
func (q *Queue) Release(_ context.Context, e *jobs.Envelope) error {
	d, err := q.receipt(e)
	if err != nil {
		return err
	}
	if err := d.msg.Nak(); err != nil {
		return fmt.Errorf("natsqueue: release job %s on %q: %w", e.ID, q.stream, err)
	}
	return nil
}

// Remote reports true: the jobs live in the stream.
func (q *Queue) Remote() bool { return true }

// Drain returns none: the jobs stay in the stream for the next worker.
func (q *Queue) Drain(context.Context) ([]*jobs.Envelope, error) { return nil, nil }

// Len is -1: the stream's count is a server round trip away, and it
// includes jobs other processes are running.
func (q *Queue) Len() int { return -1 }

// Close makes Push and Pop fail with jobs.ErrClosed, and stops the
// progress heartbeats of jobs popped and not settled, so JetStream
// redelivers those after AckWait (the runner's Shutdown releases its own
// first, for redelivery at once). They can still be settled. The stream,
// the consumer and the connection stay: they belong to the caller and to
// other processes.
func (q *Queue) Close() error {
	q.closed.Store(true)
	q.mu.Lock()
	open := make([]*delivery, 0, len(q.deliveries))
	for d := range q.deliveries {
		open = append(open, d)
	}
	clear(q.deliveries)
	q.mu.Unlock()
	for _, d := range open {
		d.stop()
	}
	return nil
}

var _ jobs.Queue = (*Queue)(nil)
