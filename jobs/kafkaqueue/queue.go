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
}

// Queue is a jobs.Queue on a Kafka topic read by a consumer group. It is
// safe for concurrent use; Close (which the runner's Shutdown calls)
// closes its writer and leaves the group.
type Queue struct {
	cfg    Config
	w      *kafkago.Writer
	closed atomic.Bool

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
	w := &kafkago.Writer{Addr: kafkago.TCP(cfg.Brokers...), Topic: cfg.Topic,
		RequiredAcks: kafkago.RequireAll, Balancer: &kafkago.Hash{},
		// One job per write is the common case; do not hold it back for a
		// batch that is not coming.
		BatchTimeout: time.Millisecond, AllowAutoTopicCreation: true}
	return &Queue{cfg: cfg, w: w, parts: make(map[int]*partition)}, nil
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
			MaxWait: 500 * time.Millisecond})
	})
	return q.r
}

// Pop fetches the next job and waits out its NotBefore: Kafka cannot hold
// a message back, so a delayed job or a retry holds the worker that
// fetched it until it is due. A message that is not a job is settled
// (committed past) so it does not block its partition.
func (q *Queue) Pop(ctx context.Context) (*jobs.Envelope, error) {
	r := q.reader()
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
		_ = q.settle(ctx, m)
		return nil, fmt.Errorf("kafkaqueue: pop from %q partition %d offset %d: %w", q.cfg.Topic, m.Partition, m.Offset, err)
	}
	e.Receipt = m
	if err := jobs.WaitUntil(ctx, e.NotBefore); err != nil {
		// Left uncommitted: it is delivered again after a restart.
		return nil, err
	}
	return e, nil
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

// Close closes the writer and, if it was started, the reader, which
// leaves the group so its partitions move at once.
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	err := q.w.Close()
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
