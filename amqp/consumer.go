package amqp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/amqpframe"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Handler processes one delivery. Return nil to ack it, an error to retry
// it (or dead-letter it after the last attempt), or a
// tracebridge.Permanent error to dead-letter it at once. A panic is a
// failure like any other. The Consumer settles the delivery: d.Ack and its
// siblings return an error inside a handler.
type Handler func(ctx context.Context, d amqp091.Delivery) error

// Setup declares the topology a consumer needs (queues, exchanges,
// bindings). The Consumer calls it on every (re)connect, before it starts
// consuming, because a broker restart can lose non-durable topology.
type Setup func(ch *amqp091.Channel) error

// DelayQueueSuffix names the delay queue of a work queue: queue +
// DelayQueueSuffix. Failed messages wait there for their backoff (a
// per-message TTL) and are dead-lettered back to the work queue.
const DelayQueueSuffix = ".retry"

// delayQueueAttr records the backoff a retry waits in the delay queue.
const delayQueueAttr = attribute.Key("tracebridge.retry.delay_ms")

// Consumer consumes a queue with a Handler: one process span per delivery
// attempt, manual ack after success, bounded concurrency, retries with
// backoff through a delay queue, dead letters, panic recovery and
// reconnects. Run it with Run.
type Consumer struct {
	t     *msgtrace.Tracer
	link  channelSource
	queue string
	setup Setup
	h     Handler

	// OnReconnect, when set, is called after each reconnect once
	// consumption has resumed; tests and health checks use it.
	OnReconnect func()
}

// NewConsumer returns a Consumer of queue on the broker at url, over a
// connection of its own that it dials, redials after a loss, and closes when
// Run returns; NewConsumerOn consumes over a connection you already have.
// setup (may be nil) declares the topology on every connect. It reads
// WithTracerProvider, WithMeterProvider, WithPropagators, WithTrust,
// WithParentPolicy, WithConcurrency (prefetch is twice the concurrency),
// WithRetry, WithRetryDestination, WithDeadLetter, WithSettleSpans,
// WithErrorOnEveryAttempt and WithLogger.
//
// Retries: by default a failed message is republished, with retry-attempt
// and retry-previous, to the durable delay queue queue+DelayQueueSuffix
// (declared by the consumer) with a per-message TTL of the backoff, and
// RabbitMQ dead-letters it back to queue when the TTL runs out. RabbitMQ
// expires messages only at the head of a queue, so a retry can wait longer
// than its own TTL behind a longer one, never shorter. With
// WithRetryDestination the message is republished to that queue at once,
// and the consumer of that queue waits out the backoff. After the last
// attempt (or a permanent error) the message goes to the WithDeadLetter
// queue (declared durable by the consumer) with its original headers,
// retry-previous and the dead-letter-* headers; without one it is nacked
// without requeue, so a dead-letter exchange configured on the queue still
// catches it. Every republish is confirmed by the broker before the
// original is acked. A dead letter whose headers would not fit in one frame
// (the connection's frame_max) is trimmed to fit, as the README's RabbitMQ
// section describes; a retry that would not fit never will, so the message
// is settled as failed finally instead (dead-lettered, or nacked without
// requeue).
func NewConsumer(url, queue string, setup Setup, h Handler, opts ...tracebridge.Option) *Consumer {
	return &Consumer{t: msgtrace.New("rabbitmq", opts), link: newLink(url), queue: queue, setup: setup, h: h}
}

// Run consumes until ctx ends, reconnecting with backoff whenever the
// connection or channel closes (for NewConsumerOn, see there). When ctx ends it stops taking deliveries,
// lets the handlers in flight finish and settle (their context is not
// cancelled, and Run waits for them however long they take: bound them
// with deadlines of your own), returns unstarted prefetched deliveries to
// the queue, closes the connection and returns nil. A retry waiting out
// its backoff in the consumer, a dead-letter publish being retried, or a
// redial (even one stuck in the AMQP handshake) is abandoned at once and
// its message left unacked. Nothing is lost: a message is acked only after
// its handler succeeded, or after its retry or dead letter was confirmed,
// and the broker requeues every unacked message when the connection
// closes. Nothing Run started outlives it. A failure to connect or set up
// the topology the first time is returned at once, because it is more
// likely a mistake than an outage.
func (c *Consumer) Run(ctx context.Context) error {
	defer c.link.close()
	if err := c.checkNames(); err != nil {
		return err
	}
	first := true
	for {
		var sess *session
		dial := func(ctx context.Context) error {
			s, err := c.open(ctx)
			sess = s
			return err
		}
		if first {
			if err := dial(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		} else if err := c.redial(ctx, func() error { return dial(ctx) }); err != nil {
			if errors.Is(err, errNoRedial) {
				return fmt.Errorf("amqp: consume %q: %w", c.queue, err)
			}
			return nil
		}
		if !first && c.OnReconnect != nil {
			c.OnReconnect()
		}
		first = false
		sess.run(ctx)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// checkNames refuses a queue, delay queue, dead-letter queue or header
// name that AMQP cannot carry (over 255 bytes), which amqp091 would
// truncate into another name without an error: every retry or dead letter
// would fail, or go elsewhere.
func (c *Consumer) checkNames() error {
	for _, q := range [...]struct{ what, name string }{{"queue", c.queue},
		{"delay queue", c.queue + DelayQueueSuffix}, {"dead-letter queue", c.t.DeadLetter}} {
		if err := amqpframe.ShortString(q.what, q.name); err != nil {
			return fmt.Errorf("amqp: consume %q: %w", c.queue, err)
		}
	}
	if err := amqpframe.CheckNames(c.t.Carrier().Names()); err != nil {
		return fmt.Errorf("amqp: consume %q: %w", c.queue, err)
	}
	return nil
}

// session is one channel's worth of consuming.
type session struct {
	c          *Consumer
	ch         *amqp091.Channel
	pub        *Publisher // republishes on the same channel, confirmed
	deliveries <-chan amqp091.Delivery
	tag        string
}

func (c *Consumer) open(ctx context.Context) (*session, error) {
	ch, frameMax, err := c.link.channel(ctx)
	if err != nil {
		return nil, err
	}
	fail := func(what string, err error) (*session, error) {
		_ = ch.Close()
		return nil, fmt.Errorf("amqp: consume %q: %s: %w", c.queue, what, err)
	}
	if err := ch.Qos(2*c.t.Concurrency, 0, false); err != nil {
		return fail("qos", err)
	}
	if c.setup != nil {
		if err := c.setup(ch); err != nil {
			return fail("setup", err)
		}
	}
	if c.t.RetryDestination == "" {
		if _, err := ch.QueueDeclare(c.queue+DelayQueueSuffix, true, false, false, false, amqp091.Table{
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": c.queue,
		}); err != nil {
			return fail("declare delay queue", err)
		}
	}
	if c.t.DeadLetter != "" {
		if _, err := ch.QueueDeclare(c.t.DeadLetter, true, false, false, false, nil); err != nil {
			return fail("declare dead-letter queue", err)
		}
	}
	pc, err := newPubChannel(ch, true, c.t.Carrier().Names().Traceparent, frameMax)
	if err != nil {
		return fail("confirm mode", err)
	}
	tag := "tracebridge-" + carrier.NewSessionID()
	deliveries, err := ch.Consume(c.queue, tag, false, false, false, false, nil)
	if err != nil {
		return fail("consume", err)
	}
	addr, port := c.link.server()
	return &session{c: c, ch: ch, pub: &Publisher{t: c.t, fixed: pc, addr: addr, port: port},
		deliveries: deliveries, tag: tag}, nil
}

func (s *session) run(ctx context.Context) {
	var wg sync.WaitGroup
	base := msgtrace.Detach(ctx)
	for range s.c.t.Concurrency {
		wg.Go(func() {
			w := s.newWorker(base, ctx)
			for {
				select {
				case <-ctx.Done():
					return
				case d, ok := <-s.deliveries:
					if !ok {
						return
					}
					if ctx.Err() != nil {
						_ = d.Nack(false, true) // not started: back to the queue now
						return
					}
					w.handle(d)
				}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		_ = s.ch.Cancel(s.tag, false)
	}
	// Closing the channel returns the prefetched, unstarted deliveries.
	_ = s.ch.Close()
}

// worker handles one delivery at a time for a session. Its Settlement is
// built once, bound to the worker, and each delivery is put into d before
// Deliver runs: building the closures per delivery, each capturing its own
// copy of it, cost six allocations per message.
type worker struct {
	s          *session
	base, stop context.Context
	d          amqp091.Delivery // the delivery being handled
	hd         amqp091.Delivery // d as the handler sees it: no Acknowledger
	st         msgtrace.Settlement
}

func (s *session) newWorker(base, stop context.Context) *worker {
	w := &worker{s: s, base: base, stop: stop}
	w.st = msgtrace.Settlement{
		Handle:          w.run,
		Ack:             w.ack,
		AckOp:           "ack",
		Republish:       w.republish,
		GiveUp:          w.giveUp,
		GiveUpOp:        "nack",
		PublishAttempts: 3,
	}
	if s.c.t.DeadLetter != "" {
		w.st.DeadLetter = w.deadLetter
	}
	return w
}

func (w *worker) run(ctx context.Context) error { return w.s.c.h(ctx, w.hd) }
func (w *worker) ack(context.Context) error     { return w.d.Acknowledger.Ack(w.d.DeliveryTag, false) }

func (w *worker) giveUp(context.Context, error) error {
	return w.d.Acknowledger.Nack(w.d.DeliveryTag, false, false)
}

func (w *worker) republish(ctx context.Context, r carrier.Retry) error {
	c := w.s.c
	msg := Republishing(&w.d)
	c.t.Carrier().InjectRetry(Carrier(msg.Headers), r)
	if c.t.RetryDestination != "" {
		return unfit(w.s.pub.PublishWithContext(ctx, "", c.t.RetryDestination, true, false, msg), r)
	}
	delay := c.t.Backoff.Delay(r.Attempt - 1)
	msg.Expiration = strconv.FormatInt(delay.Milliseconds(), 10)
	trace.SpanFromContext(ctx).SetAttributes(delayQueueAttr.Int64(delay.Milliseconds()))
	return unfit(w.s.pub.PublishWithContext(ctx, "", c.queue+DelayQueueSuffix, true, false, msg), r)
}

func (w *worker) deadLetter(ctx context.Context, last trace.SpanContext, dl carrier.DeadLetter) error {
	return w.s.deadLetter(ctx, &w.d, last, dl)
}

// handle runs one delivery through its attempt; msgtrace.Deliver owns the
// order (handler, republish or dead letter, then ack).
func (w *worker) handle(d amqp091.Delivery) {
	c := w.s.c
	w.d, w.hd = d, d
	w.hd.Acknowledger = nil // the consumer settles, not the handler
	md := describe(c.t, &w.d, c.queue)
	if c.t.RetryDestination == "" && Carrier(d.Headers).Get(c.t.Carrier().Names().RetryAttempt) != "" {
		// The delay queue already waited out the backoff.
		md.PublishedAt = time.Time{}
	}
	outcome, err := c.t.Deliver(w.base, w.stop, md, w.st)
	if outcome == msgtrace.Unsettled && w.stop.Err() == nil {
		if ur := asUnfit(err); ur != nil {
			w.s.settleUnfit(w.base, &w.d, ur)
			w.d, w.hd = amqp091.Delivery{}, amqp091.Delivery{}
			return
		}
	}
	if outcome == msgtrace.Unsettled {
		// The broker still holds it: hand it back now rather than at
		// channel close, unless the channel is gone anyway.
		if nerr := d.Acknowledger.Nack(d.DeliveryTag, false, true); nerr != nil && !errors.Is(nerr, amqp091.ErrClosed) {
			c.t.Logger.Warn("tracebridge: could not requeue unsettled message", "queue", c.queue,
				"message_id", d.MessageId, "error", errors.Join(err, nerr))
		}
	}
	// Drop the references: the delivery's body and headers are not kept
	// alive until the next one.
	w.d, w.hd = amqp091.Delivery{}, amqp091.Delivery{}
}

// deadLetter publishes d to the dead-letter queue with retry-previous
// naming last and the dead-letter-* headers of dl, trimmed to fit in one
// frame when it must be (see fitDeadLetter), and waits for the confirm.
func (s *session) deadLetter(ctx context.Context, d *amqp091.Delivery, last trace.SpanContext, dl carrier.DeadLetter) error {
	t := s.c.t
	msg := Republishing(d)
	h := Carrier(msg.Headers)
	h.Set(t.Carrier().Names().RetryPrevious, carrier.FormatTraceparent(last))
	t.Carrier().InjectDeadLetter(h, dl)
	if err := s.fitDeadLetter(ctx, &msg); err != nil {
		return err
	}
	return s.pub.PublishWithContext(ctx, "", t.DeadLetter, true, false, msg)
}

// unfitRetry is the error of a retry republish that does not fit in one
// frame: it never will, so requeueing the message would run its handler
// again and again, each time failing the same way. It carries the retry,
// for settleUnfit.
type unfitRetry struct {
	err   error
	retry carrier.Retry
}

func (e *unfitRetry) Error() string { return e.err.Error() }
func (e *unfitRetry) Unwrap() error { return e.err }

// asUnfit returns the unfitRetry in err's chain, or nil. It is a function
// of its own because errors.As needs the target's address, which moves the
// target to the heap: declared in handle, it cost an allocation for every
// delivery, not only for the rare one that needs it.
func asUnfit(err error) *unfitRetry {
	var ur *unfitRetry
	if errors.As(err, &ur) {
		return ur
	}
	return nil
}

// unfit wraps a retry republish's error in an unfitRetry when it is
// ErrFrameTooLarge or ErrShortStringTooLong.
func unfit(err error, r carrier.Retry) error {
	if errors.Is(err, ErrFrameTooLarge) || errors.Is(err, ErrShortStringTooLong) {
		return &unfitRetry{err: err, retry: r}
	}
	return err
}

// settleUnfit settles a message whose retry cannot fit in one frame as its
// last attempt would have been settled: dead-lettered (trimmed to fit, the
// frame error as its reason) and then acked, or, without a dead-letter
// queue, nacked without requeue, so that a dead-letter exchange on the
// queue still catches it. A dead letter that fails leaves it requeued.
func (s *session) settleUnfit(ctx context.Context, d *amqp091.Delivery, ur *unfitRetry) {
	c := s.c
	c.t.Logger.WarnContext(ctx, "tracebridge: a retry does not fit in one frame; the message is settled as failed finally",
		"queue", c.queue, "message_id", d.MessageId, "dead_letter", c.t.DeadLetter, "error", ur.err)
	if c.t.DeadLetter == "" {
		_ = d.Acknowledger.Nack(d.DeliveryTag, false, false)
		return
	}
	dl := carrier.DeadLetter{Reason: ur.err.Error(), Attempts: ur.retry.Attempt - 1, Source: c.queue}
	if err := s.deadLetter(ctx, d, ur.retry.Previous, dl); err != nil {
		c.t.Logger.WarnContext(ctx, "tracebridge: dead letter failed; message requeued", "queue", c.queue,
			"message_id", d.MessageId, "error", err)
		_ = d.Acknowledger.Nack(d.DeliveryTag, false, true)
		return
	}
	_ = d.Acknowledger.Ack(d.DeliveryTag, false)
}

// fitDeadLetter trims a dead letter whose headers (the delivery's plus
// retry-previous and dead-letter-*) do not fit in one frame, as
// amqpframe.FitDeadLetter does, and records what went on the process span
// and in the log: a dead letter with fewer headers beats a message that
// can never leave the queue. A message without a valid traceparent gets
// one from the publish, so room is kept for it. An error means the
// message cannot fit at all; it is then left unacked, not lost.
func (s *session) fitDeadLetter(ctx context.Context, msg *amqp091.Publishing) error {
	t := s.c.t
	reserve := 0
	if _, forwarding := t.HasTraceparent(Carrier(msg.Headers)); !forwarding {
		// A version-00 traceparent is 55 bytes.
		reserve = amqpframe.EntrySize(t.Carrier().Names().Traceparent, "") + 55
	}
	dropped, err := amqpframe.FitDeadLetter(msg, s.pub.fixed.frameMax, reserve, t.Carrier().Names())
	if err != nil {
		return fmt.Errorf("amqp: dead letter to %q: %w", t.DeadLetter, err)
	}
	if len(dropped) > 0 {
		trace.SpanFromContext(ctx).AddEvent("tracebridge.headers_dropped", trace.WithAttributes(
			droppedHeadersAttr.StringSlice(dropped), frameMaxAttr.Int(s.pub.fixed.frameMax)))
		t.Logger.WarnContext(ctx, "tracebridge: dead letter trimmed to fit the message in one frame",
			"queue", s.c.queue, "dead_letter", t.DeadLetter, "message_id", msg.MessageId,
			"dropped", dropped, "frame_max", s.pub.fixed.frameMax)
	}
	return nil
}

// Republishing copies a delivery into a persistent Publishing with its
// properties and headers (its journey), for sending it on elsewhere: a
// retry, a dead letter. The broker's per-queue delivery count is left out:
// it describes the old queue and would inflate the attempt number in the
// new one. So is an x-death that does not have the shape RabbitMQ writes:
// it can only be a publisher's, and dead-lettering a message that carries
// one can crash the queue on RabbitMQ before 3.13. The header table is a
// copy with room for the retry and dead-letter headers.
func Republishing(d *amqp091.Delivery) amqp091.Publishing {
	h := make(amqp091.Table, len(d.Headers)+5)
	for k, v := range d.Headers {
		if k != headerDeliveryCount && (k != headerDeath || brokerShapedDeaths(v)) {
			h[k] = v
		}
	}
	return amqp091.Publishing{
		Headers: h, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
		DeliveryMode: amqp091.Persistent, Priority: d.Priority, CorrelationId: d.CorrelationId,
		ReplyTo: d.ReplyTo, MessageId: d.MessageId, Timestamp: d.Timestamp, Type: d.Type,
		UserId: d.UserId, AppId: d.AppId, Body: d.Body,
	}
}
