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
	"github.com/tracebridge/tracebridge/internal/amqpframe"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
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
	// to the work queue. A dead letter whose headers would not fit in one
	// frame (frame_max) is trimmed as the amqp Consumer trims its dead
	// letters (see the README's RabbitMQ section): the removed keys are
	// listed in its dead-letter-dropped-headers header. Empty rejects such a message after logging it
	// (through the runner), so it is lost unless the queue has a
	// dead-letter exchange of its own.
	DeadLetter string
	// ReconnectWait is how long a publish (an enqueue, a retry, a dead
	// letter) waits for a lost connection to come back before it fails;
	// zero means 30s. Pop waits as long as its context allows.
	ReconnectWait time.Duration
}

// DefaultReconnectWait is Config.ReconnectWait's default.
const DefaultReconnectWait = 30 * time.Second

// reconnectBackoff paces redials after the connection is lost.
var reconnectBackoff = msgtrace.Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second}

// Queue is a jobs.Queue on a durable RabbitMQ queue. It holds one
// connection at a time, with a confirm-mode channel for publishing and
// another for consuming, and dials a new one when it is lost (a broker
// restart, a network drop): what was taken and not acked is requeued by
// the broker, and the workers carry on. Close (which the runner's Shutdown
// calls) closes it.
type Queue struct {
	url           string
	queue         string
	delayQ        string
	deadQ         string
	prefetch      int
	reconnectWait time.Duration
	headers       *carrier.Propagator // names of the dead-letter headers
	closed        atomic.Bool
	closing       context.Context // ends at Close, and any redial with it
	close         context.CancelFunc

	mu        sync.Mutex
	sess      *session      // nil while disconnected
	redialing chan struct{} // closed when the running redial ends; nil when none runs
}

// session is one connection and what was set up on it.
type session struct {
	conn *amqp091.Connection
	pub  *amqp091.Channel
	lost chan struct{} // closed when the connection closes

	mu         sync.Mutex
	deliveries <-chan amqp091.Delivery // nil until the first Pop
}

// New dials url, declares the work queue and its delay queue (durable),
// and returns a queue on them. Consumption starts at the first Pop, so an
// enqueue-only process takes no jobs. A queue name that AMQP cannot carry
// (over 255 bytes, its delay queue's name included) is refused with an
// error wrapping amqp.ErrShortStringTooLong.
func New(url string, cfg Config) (*Queue, error) {
	if cfg.Queue == "" {
		return nil, errors.New("amqpqueue: new: empty queue name")
	}
	// amqp091 would declare and publish to a name over 255 bytes truncated,
	// a different queue, without an error.
	for _, q := range [...]struct{ what, name string }{{"queue", cfg.Queue}, {"delay queue", cfg.Queue + tbamqp.DelayQueueSuffix},
		{"dead-letter queue", cfg.DeadLetter}} {
		if err := amqpframe.ShortString(q.what, q.name); err != nil {
			return nil, fmt.Errorf("amqpqueue: new %q: %w", cfg.Queue, err)
		}
	}
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = 16
	}
	if cfg.ReconnectWait <= 0 {
		cfg.ReconnectWait = DefaultReconnectWait
	}
	q := &Queue{url: url, queue: cfg.Queue, delayQ: cfg.Queue + tbamqp.DelayQueueSuffix, deadQ: cfg.DeadLetter,
		prefetch: cfg.Prefetch, reconnectWait: cfg.ReconnectWait, headers: carrier.NewPropagator()}
	q.closing, q.close = context.WithCancel(context.Background())
	s, err := q.dial()
	if err != nil {
		q.close()
		return nil, fmt.Errorf("amqpqueue: new %q: %w", cfg.Queue, err)
	}
	q.sess = s
	return q, nil
}

// dial connects and declares the work queue, its delay queue and the
// dead-letter queue, all durable, as on every reconnect.
func (q *Queue) dial() (*session, error) {
	conn, err := amqp091.Dial(q.url)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	s := &session{conn: conn, lost: make(chan struct{})}
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	go func() {
		<-closed
		close(s.lost)
	}()
	if err := q.declare(s); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return s, nil
}

func (q *Queue) declare(s *session) error {
	var err error
	if s.pub, err = s.conn.Channel(); err != nil {
		return fmt.Errorf("publish channel: %w", err)
	}
	if err = s.pub.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	if _, err = s.pub.QueueDeclare(q.queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare: %w", err)
	}
	// The same delay-queue shape the amqp Consumer uses: expired messages
	// are dead-lettered back to the work queue through the default exchange.
	if _, err = s.pub.QueueDeclare(q.delayQ, true, false, false, false, amqp091.Table{
		"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q.queue}); err != nil {
		return fmt.Errorf("declare delay queue %q: %w", q.delayQ, err)
	}
	if q.deadQ != "" {
		if _, err = s.pub.QueueDeclare(q.deadQ, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare dead-letter queue %q: %w", q.deadQ, err)
		}
	}
	return nil
}

// isLost reports whether the connection or its publish channel closed;
// both flags are set synchronously by amqp091, before any notification.
func (s *session) isLost() bool {
	select {
	case <-s.lost:
		return true
	default:
		return s.conn.IsClosed() || s.pub.IsClosed()
	}
}

// session returns the live connection. When it was lost, one redial runs
// in the background (until it succeeds or Close) and every caller waits for
// it only as long as its own ctx allows, so an outage never holds a caller
// past its deadline.
func (q *Queue) session(ctx context.Context) (*session, error) {
	for {
		q.mu.Lock()
		if s := q.sess; s != nil && !s.isLost() {
			q.mu.Unlock()
			return s, nil
		}
		if q.closed.Load() {
			q.mu.Unlock()
			return nil, fmt.Errorf("amqpqueue: %q: %w", q.queue, jobs.ErrClosed)
		}
		ready := q.redialing
		if ready == nil {
			ready = make(chan struct{})
			q.redialing = ready
			go q.redial(ready)
		}
		q.mu.Unlock()
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("amqpqueue: %q: %w (%w)", q.queue, tbamqp.ErrDisconnected, ctx.Err())
		}
	}
}

// redial dials with the shared jittered backoff until it connects or the
// queue is closed, then closes ready.
func (q *Queue) redial(ready chan struct{}) {
	var s *session
	err := msgtrace.Redial(q.closing, reconnectBackoff, 0, func(context.Context) error {
		var err error
		s, err = q.dial()
		return err
	}, nil)
	q.mu.Lock()
	if err == nil {
		if q.closed.Load() {
			_ = s.conn.Close()
		} else {
			q.sess = s
		}
	}
	q.redialing = nil
	q.mu.Unlock()
	close(ready)
}

// drop forgets s after an error on it, so the next call redials.
func (q *Queue) drop(s *session) {
	q.mu.Lock()
	if q.sess == s {
		q.sess = nil
	}
	q.mu.Unlock()
	_ = s.conn.Close()
}

// System reports "rabbitmq".
func (q *Queue) System() string { return "rabbitmq" }

// Name is the work queue.
func (q *Queue) Name() string { return q.queue }

// Remote reports true: the jobs live in RabbitMQ.
func (q *Queue) Remote() bool { return true }

// Push publishes e persistently and returns once the broker confirmed it.
// block is ignored: the queue has no bound of the runner's. A job whose
// headers (its ID, kind and journey) would not fit in one frame of the
// connection fails with an error wrapping amqp.ErrFrameTooLarge, before
// anything is sent.
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
	if err := q.confirmed(ctx, key, msg, amqpframe.Check); err != nil {
		return fmt.Errorf("amqpqueue: publish job %s attempt %d to %q: %w", e.ID, e.Attempt, key, err)
	}
	return nil
}

// confirmed publishes msg to queue key and waits for the broker's confirm,
// waiting up to ReconnectWait for a lost connection to come back. fit
// gets msg and the connection's frame_max before each publish, to refuse
// (amqpframe.Check) or trim (a dead letter) a message whose properties
// would not fit in one frame: sent, it would make the broker close the
// connection, and with it every job this process holds.
func (q *Queue) confirmed(ctx context.Context, key string, msg amqp091.Publishing, fit func(*amqp091.Publishing, int) error) error {
	wctx, cancel := context.WithTimeout(ctx, q.reconnectWait)
	defer cancel()
	var dc *amqp091.DeferredConfirmation
	var s *session
	for {
		var err error
		if s, err = q.session(wctx); err != nil {
			return err
		}
		if err := fit(&msg, s.conn.Config.FrameSize); err != nil {
			return err
		}
		dc, err = s.pub.PublishWithDeferredConfirmWithContext(ctx, "", key, false, false, msg)
		if err == nil {
			break
		}
		q.drop(s)
		if !errors.Is(err, amqp091.ErrClosed) {
			return err
		}
		// The channel closed before anything was sent: wait for the next
		// connection within the same ReconnectWait.
	}
	ok, err := dc.WaitContext(ctx)
	switch {
	case err != nil:
		return err
	case !ok && s.isLost():
		// The channel closed under the publish; the broker may or may not
		// have it, and the caller's retry decides.
		return fmt.Errorf("%w: the connection closed before the confirm", tbamqp.ErrDisconnected)
	case !ok:
		return tbamqp.ErrNacked
	}
	return nil
}

// deliveries starts consuming on s at its first Pop.
func (q *Queue) deliveries(s *session) (<-chan amqp091.Delivery, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deliveries != nil {
		return s.deliveries, nil
	}
	sub, err := s.conn.Channel()
	if err == nil {
		if err = sub.Qos(q.prefetch, 0, false); err == nil {
			s.deliveries, err = sub.Consume(q.queue, "", false, false, false, false, nil)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("amqpqueue: consume %q: %w", q.queue, err)
	}
	return s.deliveries, nil
}

// Pop returns the next delivery, reconnecting first when the connection
// was lost. The delay queue releases a job when it is due, but RabbitMQ's
// clock and ours may differ, so Pop waits out any rest of NotBefore. A
// message that is not a job goes to Config.DeadLetter (see there) and is
// reported as an error.
func (q *Queue) Pop(ctx context.Context) (*jobs.Envelope, error) {
	var d amqp091.Delivery
	for {
		s, err := q.session(ctx)
		if err != nil {
			return nil, fmt.Errorf("amqpqueue: pop from %q: %w", q.queue, err)
		}
		ds, err := q.deliveries(s)
		if err != nil {
			q.drop(s)
			return nil, err
		}
		var ok bool
		select {
		case d, ok = <-ds:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if ok {
			break
		}
		// The connection or the channel closed: the broker requeues what
		// this process had not acked, and the next session consumes again.
		q.drop(s)
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
	msg := tbamqp.Republishing(&d)
	q.headers.InjectDeadLetter(tbamqp.Carrier(msg.Headers), carrier.DeadLetter{Reason: derr.Error(), Source: q.queue})
	var dropped []string
	trim := func(msg *amqp091.Publishing, frameMax int) (err error) {
		dropped, err = amqpframe.FitDeadLetter(msg, frameMax, 0, q.headers.Names())
		return err
	}
	if perr := q.confirmed(ctx, q.deadQ, msg, trim); perr != nil {
		// Requeued after a pause, so a dead-letter queue that refuses
		// publishes does not turn into a redelivery loop.
		msgtrace.Sleep(ctx, time.Second)
		_ = d.Nack(false, true)
		return fmt.Errorf("%w; dead letter to %q failed, requeued: %w", err, q.deadQ, perr)
	}
	_ = d.Ack(false)
	if len(dropped) > 0 {
		return fmt.Errorf("%w; moved to %q without headers %q, to fit the message in one frame", err, q.deadQ, dropped)
	}
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
// repeats an attempt instead of losing the job. When prev's connection is
// gone, or next cannot be published, prev is handed back to the broker
// instead and runs again with the same attempt number: the job is never
// reported dead while RabbitMQ still holds it, nor copied. The exception
// is a next whose headers do not fit in one frame (it never will): the
// error, wrapping amqp.ErrFrameTooLarge, makes the runner report the job
// dead and ack prev.
func (q *Queue) Retry(ctx context.Context, prev, next *jobs.Envelope) error {
	d, err := delivery(prev)
	if err != nil {
		return err
	}
	if ch, ok := d.Acknowledger.(interface{ IsClosed() bool }); ok && ch.IsClosed() {
		return nil // the broker requeued prev when its channel closed
	}
	if err := q.publish(ctx, next); err != nil {
		if errors.Is(err, tbamqp.ErrFrameTooLarge) {
			// next will never fit in one frame: handing prev back would
			// run this attempt again for ever. The runner gives the job
			// up as dead and acks prev.
			return fmt.Errorf("amqpqueue: retry: %w", err)
		}
		_ = d.Nack(false, true) // or requeued by the broker if the channel is gone
		return nil
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
	q.close()
	q.mu.Lock()
	s := q.sess
	q.sess = nil
	q.mu.Unlock()
	if s == nil {
		return nil
	}
	if err := s.conn.Close(); err != nil && !errors.Is(err, amqp091.ErrClosed) {
		return fmt.Errorf("amqpqueue: close %q: %w", q.queue, err)
	}
	return nil
}

var _ jobs.RemoteQueue = (*Queue)(nil)
