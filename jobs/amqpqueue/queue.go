package amqpqueue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	tbamqp "github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/jobs"
)

// Config names the queue and tunes the consumer.
type Config struct {
	// Queue is the durable work queue, also the destination on job spans.
	// Delayed jobs and retries wait in Queue+amqp.DelayQueueSuffix.
	Queue string
	// Prefetch is how many unacked jobs the broker sends this process
	// ahead of its workers; zero means 16. They go back to the queue if
	// the process dies.
	Prefetch int
	// DeadLetter is the durable queue (declared by New) a message that is
	// not a job (garbage, or a job another version cannot decode) is
	// published to, with its headers and the dead-letter-* headers, before
	// it is acked; when that publish is not confirmed the message goes back
	// to the work queue. Empty rejects such a message after logging it
	// (through the runner), so it is lost unless the queue has a
	// dead-letter exchange of its own.
	DeadLetter string
}

// Queue is a jobs.Queue on a durable RabbitMQ queue. It owns one
// connection, with a confirm-mode channel for publishing and another for
// consuming; Close (which the runner's Shutdown calls) closes it.
type Queue struct {
	conn     *amqp091.Connection
	pub      *amqp091.Channel
	sub      *amqp091.Channel
	queue    string
	delayQ   string
	deadQ    string
	prefetch int
	headers  *carrier.Propagator // names of the dead-letter headers
	closed   atomic.Bool

	startOnce  sync.Once
	deliveries <-chan amqp091.Delivery
	startErr   error
}

// New dials url, declares the work queue and its delay queue (durable),
// and returns a queue on them. Consumption starts at the first Pop, so an
// enqueue-only process takes no jobs.
func New(url string, cfg Config) (*Queue, error) {
	if cfg.Queue == "" {
		return nil, errors.New("amqpqueue: new: empty queue name")
	}
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = 16
	}
	conn, err := amqp091.Dial(url)
	if err != nil {
		return nil, fmt.Errorf("amqpqueue: new %q: dial: %w", cfg.Queue, err)
	}
	q := &Queue{conn: conn, queue: cfg.Queue, delayQ: cfg.Queue + tbamqp.DelayQueueSuffix, deadQ: cfg.DeadLetter,
		prefetch: cfg.Prefetch, headers: carrier.NewPropagator()}
	if err := q.setup(); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("amqpqueue: new %q: %w", cfg.Queue, err)
	}
	return q, nil
}

func (q *Queue) setup() error {
	var err error
	if q.pub, err = q.conn.Channel(); err != nil {
		return fmt.Errorf("publish channel: %w", err)
	}
	if err = q.pub.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	if _, err = q.pub.QueueDeclare(q.queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare: %w", err)
	}
	// The same delay-queue shape the amqp Consumer uses: expired messages
	// are dead-lettered back to the work queue through the default exchange.
	if _, err = q.pub.QueueDeclare(q.delayQ, true, false, false, false, amqp091.Table{
		"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q.queue}); err != nil {
		return fmt.Errorf("declare delay queue %q: %w", q.delayQ, err)
	}
	if q.deadQ != "" {
		if _, err = q.pub.QueueDeclare(q.deadQ, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare dead-letter queue %q: %w", q.deadQ, err)
		}
	}
	return nil
}

// System reports "rabbitmq".
func (q *Queue) System() string { return "rabbitmq" }

// Name is the work queue.
func (q *Queue) Name() string { return q.queue }

// Remote reports true: the jobs live in RabbitMQ.
func (q *Queue) Remote() bool { return true }

// Push publishes e persistently and returns once the broker confirmed it.
// block is ignored: the queue has no bound of the runner's.
func (q *Queue) Push(ctx context.Context, e *jobs.Envelope, _ bool) error {
	if q.closed.Load() {
		return fmt.Errorf("amqpqueue: push job %s: %w", e.ID, jobs.ErrClosed)
	}
	return q.publish(ctx, e)
}

// publish sends a due job to the work queue and a delayed one to the delay
// queue with its wait as the message TTL, and waits for the confirm.
func (q *Queue) publish(ctx context.Context, e *jobs.Envelope) error {
	msg := amqp091.Publishing{Headers: amqp091.Table{}, Body: e.Payload, MessageId: e.ID,
		DeliveryMode: amqp091.Persistent, ContentType: "application/octet-stream"}
	jobs.EncodeEnvelope(tbamqp.Carrier(msg.Headers), e)
	key := q.queue
	if wait := time.Until(e.NotBefore); wait > 0 {
		key = q.delayQ
		msg.Expiration = strconv.FormatInt(max(wait.Milliseconds(), 1), 10)
	}
	if err := q.confirmed(ctx, key, msg); err != nil {
		return fmt.Errorf("amqpqueue: publish job %s attempt %d to %q: %w", e.ID, e.Attempt, key, err)
	}
	return nil
}

// confirmed publishes msg to queue key and waits for the broker's confirm.
func (q *Queue) confirmed(ctx context.Context, key string, msg amqp091.Publishing) error {
	dc, err := q.pub.PublishWithDeferredConfirmWithContext(ctx, "", key, false, false, msg)
	if err != nil {
		return err
	}
	ok, err := dc.WaitContext(ctx)
	switch {
	case err != nil:
		return err
	case !ok:
		return tbamqp.ErrNacked
	}
	return nil
}

func (q *Queue) start() error {
	q.startOnce.Do(func() {
		var err error
		if q.sub, err = q.conn.Channel(); err == nil {
			if err = q.sub.Qos(q.prefetch, 0, false); err == nil {
				q.deliveries, err = q.sub.Consume(q.queue, "", false, false, false, false, nil)
			}
		}
		if err != nil {
			q.startErr = fmt.Errorf("amqpqueue: consume %q: %w", q.queue, err)
		}
	})
	return q.startErr
}

// Pop returns the next delivery. The delay queue releases a job when it
// is due, but RabbitMQ's clock and ours may differ, so Pop waits out any
// rest of NotBefore. A message that is not a job is rejected without
// requeue: redelivering it would fail the same way for ever.
func (q *Queue) Pop(ctx context.Context) (*jobs.Envelope, error) {
	if err := q.start(); err != nil {
		return nil, err
	}
	var d amqp091.Delivery
	var ok bool
	select {
	case d, ok = <-q.deliveries:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if !ok {
		<-ctx.Done() // closed connection: nothing more will come
		return nil, fmt.Errorf("amqpqueue: pop from %q: %w (%w)", q.queue, tbamqp.ErrDisconnected, ctx.Err())
	}
	e, err := jobs.DecodeEnvelope(tbamqp.Carrier(d.Headers), d.Body)
	if err != nil {
		return nil, q.undecodable(ctx, d, err)
	}
	if err := jobs.WaitUntil(ctx, e.NotBefore); err != nil {
		_ = d.Nack(false, true)
		return nil, err
	}
	e.Receipt = d
	return e, nil
}

// undecodable settles a delivery that is not a job: dead-lettered and then
// acked, or requeued when the dead letter is not confirmed; rejected at once
// without a dead-letter queue. Retrying it would fail the same way for ever.
func (q *Queue) undecodable(ctx context.Context, d amqp091.Delivery, derr error) error {
	err := fmt.Errorf("amqpqueue: pop from %q: %w", q.queue, derr)
	if q.deadQ == "" {
		_ = d.Reject(false)
		return fmt.Errorf("%w; rejected, no dead-letter queue", err)
	}
	h := make(amqp091.Table, len(d.Headers)+3)
	for k, v := range d.Headers {
		h[k] = v
	}
	q.headers.InjectDeadLetter(tbamqp.Carrier(h), carrier.DeadLetter{Reason: derr.Error(), Source: q.queue})
	msg := amqp091.Publishing{Headers: h, Body: d.Body, MessageId: d.MessageId, ContentType: d.ContentType,
		DeliveryMode: amqp091.Persistent}
	if perr := q.confirmed(ctx, q.deadQ, msg); perr != nil {
		_ = d.Nack(false, true)
		return fmt.Errorf("%w; dead letter to %q failed, requeued: %w", err, q.deadQ, perr)
	}
	_ = d.Ack(false)
	return fmt.Errorf("%w; moved to %q", err, q.deadQ)
}

func delivery(e *jobs.Envelope) (amqp091.Delivery, error) {
	d, ok := e.Receipt.(amqp091.Delivery)
	if !ok {
		return d, fmt.Errorf("amqpqueue: job %s was not popped from an amqpqueue", e.ID)
	}
	return d, nil
}

// Ack acks the finished job's delivery.
func (q *Queue) Ack(_ context.Context, e *jobs.Envelope) error {
	d, err := delivery(e)
	if err == nil {
		if err = d.Ack(false); err != nil {
			err = fmt.Errorf("amqpqueue: ack job %s on %q: %w", e.ID, q.queue, err)
		}
	}
	return err
}

// Retry publishes next (to the delay queue while it is not due) and acks
// prev only after the broker confirmed that publish, so a crash in between
// repeats an attempt instead of losing the job.
func (q *Queue) Retry(ctx context.Context, prev, next *jobs.Envelope) error {
	d, err := delivery(prev)
	if err != nil {
		return err
	}
	if err := q.publish(ctx, next); err != nil {
		_ = d.Nack(false, true)
		return fmt.Errorf("amqpqueue: retry: %w", err)
	}
	// next is stored: a failed ack only means prev comes back when the
	// connection closes and runs its attempt again; the job is not dead.
	_ = d.Ack(false)
	return nil
}

// Release requeues the delivery, for any worker to take.
func (q *Queue) Release(_ context.Context, e *jobs.Envelope) error {
	d, err := delivery(e)
	if err == nil {
		if err = d.Nack(false, true); err != nil {
			err = fmt.Errorf("amqpqueue: release job %s on %q: %w", e.ID, q.queue, err)
		}
	}
	return err
}

// Drain returns none: the jobs stay in RabbitMQ; the prefetched ones go
// back to the queue when Close closes the connection.
func (q *Queue) Drain(context.Context) ([]*jobs.Envelope, error) { return nil, nil }

// Len is -1: the count is a broker round trip away.
func (q *Queue) Len() int { return -1 }

// Close closes the connection; RabbitMQ requeues whatever this process
// had taken and not acked.
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	if err := q.conn.Close(); err != nil && !errors.Is(err, amqp091.ErrClosed) {
		return fmt.Errorf("amqpqueue: close %q: %w", q.queue, err)
	}
	return nil
}

var _ jobs.RemoteQueue = (*Queue)(nil)
