package kafkaqueue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/kafkaconn"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/jobs"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// Config names the topic and the consumer group.
type Config struct {
	// Brokers are the bootstrap addresses.
	Brokers []string
	// Topic holds the jobs and is the destination on job spans.
	Topic string
	// Group is the consumer group every worker joins; empty means
	// "tracebridge-jobs".
	Group string
	// SessionTimeout is how long the group waits for a dead worker before
	// its partitions, and their uncommitted jobs, go to another; zero
	// means kafka-go's 30s.
	SessionTimeout time.Duration
	// DeadLetter is the topic a message that is not a job (garbage, or a
	// job another version cannot decode) is written to, with its key,
	// headers and the dead-letter-* headers, before it is committed past.
	// The write is retried until it succeeds or the worker stops, because
	// Kafka commits a position and moving past the message would lose it.
	// Empty commits past such a message after logging it (through the
	// runner), so it is lost.
	DeadLetter string
	// Dialer is how every connection of the queue reaches the cluster:
	// TLS, SASL, client ID, dial function and resolver, as in
	// kafkago.ReaderConfig.Dialer. The group reader uses it as it is, and
	// the writers a Transport with the same settings. Nil means kafka-go's
	// default dialer: plaintext, no authentication.
	Dialer *kafkago.Dialer
}

// Queue is a jobs.Queue on a Kafka topic read by a consumer group. It is
// safe for concurrent use; Close (which the runner's Shutdown calls)
// closes its writer and leaves the group.
type Queue struct {
	cfg Config
	// transport is the writers' own, not kafka-go's shared default, so
	// that Close can close the connections they leave idle; it connects
	// as cfg.Dialer does.
	transport *kafkago.Transport
	w         *kafkago.Writer
	dead      *kafkago.Writer     // to cfg.DeadLetter; nil without one
	headers   *carrier.Propagator // names of the dead-letter headers
	closed    atomic.Bool

	startOnce sync.Once
	r         *kafkago.Reader

	mu    sync.Mutex
	parts map[int]*partition // fetched, not yet committed, by partition
}

// partition tracks fetched offsets so that a commit never passes a job
// still running: Kafka commits a position, not a message, and workers
// finish out of order.
type partition struct {
	fetched []int64 // ascending
	settled map[int64]bool
}

// New returns a queue on cfg.Topic. Its writer waits for every in-sync
// replica (RequiredAcks all); the group reader starts at the first Pop,
// so an enqueue-only process joins no group.
func New(cfg Config) (*Queue, error) {
	if cfg.Topic == "" || len(cfg.Brokers) == 0 {
		return nil, fmt.Errorf("kafkaqueue: new: topic %q, brokers %v: both are required", cfg.Topic, cfg.Brokers)
	}
	if cfg.Group == "" {
		cfg.Group = "tracebridge-jobs"
	}
	q := &Queue{cfg: cfg, transport: kafkaconn.Transport(cfg.Dialer), headers: carrier.NewPropagator(), parts: make(map[int]*partition)}
	q.w = q.writer(cfg.Topic)
	if cfg.DeadLetter != "" {
		q.dead = q.writer(cfg.DeadLetter)
	}
	return q, nil
}

func (q *Queue) writer(topic string) *kafkago.Writer {
	return &kafkago.Writer{Addr: kafkago.TCP(q.cfg.Brokers...), Topic: topic, Transport: q.transport,
		RequiredAcks: kafkago.RequireAll, Balancer: &kafkago.Hash{},
		// One job per write is the common case; do not hold it back for a
		// batch that is not coming.
		BatchTimeout: time.Millisecond, AllowAutoTopicCreation: true}
}

// System reports "kafka".
func (q *Queue) System() string { return "kafka" }

// Name is the topic.
func (q *Queue) Name() string { return q.cfg.Topic }

// Remote reports true: the jobs live in the topic.
func (q *Queue) Remote() bool { return true }

// Push writes e, keyed by its job ID, and returns once every in-sync
// replica has it. block is ignored: the topic has no bound of the runner's.
func (q *Queue) Push(ctx context.Context, e *jobs.Envelope, _ bool) error {
	if q.closed.Load() {
		return fmt.Errorf("kafkaqueue: push job %s: %w", e.ID, jobs.ErrClosed)
	}
	return q.write(ctx, e)
}

func (q *Queue) write(ctx context.Context, e *jobs.Envelope) error {
	m := kafkago.Message{Key: []byte(e.ID), Value: e.Payload}
	jobs.EncodeEnvelope(tbkafka.NewCarrier(&m.Headers), e)
	if err := q.w.WriteMessages(ctx, m); err != nil {
		return fmt.Errorf("kafkaqueue: write job %s attempt %d to %q: %w", e.ID, e.Attempt, q.cfg.Topic, err)
	}
	return nil
}

func (q *Queue) reader() *kafkago.Reader {
	q.startOnce.Do(func() {
		q.r = kafkago.NewReader(kafkago.ReaderConfig{Brokers: q.cfg.Brokers, Topic: q.cfg.Topic,
			GroupID: q.cfg.Group, StartOffset: kafkago.FirstOffset, SessionTimeout: q.cfg.SessionTimeout,
			MaxWait: 500 * time.Millisecond, Dialer: q.cfg.Dialer})
	})
	return q.r
}

// Pop fetches the next job and waits out its NotBefore: Kafka cannot hold
// a message back, so a delayed job or a retry holds the worker that
// fetched it until it is due. A message that is not a job goes to
// Config.DeadLetter (see there) and is reported as an error. After Close
// it fails with jobs.ErrClosed.
func (q *Queue) Pop(ctx context.Context) (*jobs.Envelope, error) {
	r := q.reader()
	if r == nil || q.closed.Load() {
		return nil, fmt.Errorf("kafkaqueue: pop from %q: %w", q.cfg.Topic, jobs.ErrClosed)
	}
	m, err := r.FetchMessage(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("kafkaqueue: fetch from %q: %w", q.cfg.Topic, err)
	}
	q.track(m)
	e, err := jobs.DecodeEnvelope(tbkafka.NewCarrier(&m.Headers), m.Value)
	if err != nil {
		return nil, q.undecodable(ctx, m, err)
	}
	e.Receipt = m
	if err := jobs.WaitUntil(ctx, e.NotBefore); err != nil {
		// Left uncommitted: it is delivered again after a restart.
		return nil, err
	}
	return e, nil
}

// deadLetterBackoff paces the retries of a dead-letter write.
var deadLetterBackoff = msgtrace.Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second}

// undecodable settles a message that is not a job: written to the
// dead-letter topic, retried until that succeeds, and then committed past;
// committed past at once without a dead-letter topic. Retrying it would fail
// the same way for ever, and it must not block its partition.
func (q *Queue) undecodable(ctx context.Context, m kafkago.Message, derr error) error {
	err := fmt.Errorf("kafkaqueue: pop from %q partition %d offset %d: %w", q.cfg.Topic, m.Partition, m.Offset, derr)
	if q.dead == nil {
		_ = q.settle(ctx, m)
		return fmt.Errorf("%w; committed past, no dead-letter topic", err)
	}
	dl := kafkago.Message{Key: m.Key, Value: m.Value, Headers: slices.Clone(m.Headers)}
	q.headers.InjectDeadLetter(tbkafka.NewCarrier(&dl.Headers), carrier.DeadLetter{Reason: derr.Error(), Source: q.cfg.Topic})
	for try := 1; ; try++ {
		werr := q.dead.WriteMessages(ctx, dl)
		if werr == nil {
			break
		}
		// Left uncommitted, it holds its partition's commits back and is
		// delivered again after a restart; a write that cannot succeed
		// (too large, not authorized) is not retried for ever.
		var kerr kafkago.Error
		if errors.As(werr, &kerr) && !kerr.Temporary() || !msgtrace.Sleep(ctx, deadLetterBackoff.Delay(try)) {
			return fmt.Errorf("%w; dead letter to %q failed, left uncommitted: %w", err, q.cfg.DeadLetter, werr)
		}
	}
	// Committed even if the worker is stopping now: the dead letter is
	// written, and leaving the offset would write it again.
	_ = q.settle(context.WithoutCancel(ctx), m)
	return fmt.Errorf("%w; moved to %q", err, q.cfg.DeadLetter)
}

func (q *Queue) track(m kafkago.Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	p := q.parts[m.Partition]
	if p == nil {
		p = &partition{settled: make(map[int64]bool)}
		q.parts[m.Partition] = p
	}
	if i, found := slices.BinarySearch(p.fetched, m.Offset); !found {
		p.fetched = slices.Insert(p.fetched, i, m.Offset)
	}
}

// settle marks m finished and commits its partition up to the last
// offset before which everything fetched is finished.
func (q *Queue) settle(ctx context.Context, m kafkago.Message) error {
	q.mu.Lock()
	p := q.parts[m.Partition]
	if p == nil {
		q.mu.Unlock()
		return nil
	}
	p.settled[m.Offset] = true
	upto := int64(-1)
	for len(p.fetched) > 0 && p.settled[p.fetched[0]] {
		upto = p.fetched[0]
		delete(p.settled, upto)
		p.fetched = p.fetched[1:]
	}
	q.mu.Unlock()
	if upto < 0 {
		return nil
	}
	c := kafkago.Message{Topic: m.Topic, Partition: m.Partition, Offset: upto}
	if err := q.reader().CommitMessages(ctx, c); err != nil {
		return fmt.Errorf("kafkaqueue: commit %q partition %d offset %d: %w", q.cfg.Topic, m.Partition, upto, err)
	}
	return nil
}

func message(e *jobs.Envelope) (kafkago.Message, error) {
	m, ok := e.Receipt.(kafkago.Message)
	if !ok {
		return m, fmt.Errorf("kafkaqueue: job %s was not popped from a kafkaqueue", e.ID)
	}
	return m, nil
}

// Ack commits the finished job (once every job before it in its
// partition has finished too).
func (q *Queue) Ack(ctx context.Context, e *jobs.Envelope) error {
	m, err := message(e)
	if err != nil {
		return err
	}
	if err := q.settle(ctx, m); err != nil {
		return fmt.Errorf("kafkaqueue: ack job %s: %w", e.ID, err)
	}
	return nil
}

// Retry writes next, with its retry headers and NotBefore, and settles
// prev only after the write was acknowledged, so a crash in between
// repeats an attempt instead of losing the job.
func (q *Queue) Retry(ctx context.Context, prev, next *jobs.Envelope) error {
	m, err := message(prev)
	if err != nil {
		return err
	}
	if err := q.write(ctx, next); err != nil {
		return fmt.Errorf("kafkaqueue: retry: %w", err)
	}
	// next is stored: a failed commit only repeats prev's attempt after a
	// rebalance; the job is not dead.
	_ = q.settle(ctx, m)
	return nil
}

// Release leaves the job uncommitted, holding back its partition's commit
// position, so the group delivers it again after this process leaves.
func (q *Queue) Release(context.Context, *jobs.Envelope) error { return nil }

// Drain returns none: the jobs stay in the topic.
func (q *Queue) Drain(context.Context) ([]*jobs.Envelope, error) { return nil, nil }

// Len is -1: lag is a broker round trip away.
func (q *Queue) Len() int { return -1 }

// Close closes the writers and their connections and, if it was started,
// the reader, which leaves the group so its partitions, and the jobs
// fetched here and not committed, move to another worker at once.
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	err := q.w.Close()
	if q.dead != nil {
		err = errors.Join(err, q.dead.Close())
	}
	q.transport.CloseIdleConnections()
	q.startOnce.Do(func() {}) // no reader from now on
	if q.r != nil {
		err = errors.Join(err, q.r.Close())
	}
	if err != nil {
		return fmt.Errorf("kafkaqueue: close %q: %w", q.cfg.Topic, err)
	}
	return nil
}

var _ jobs.RemoteQueue = (*Queue)(nil)
