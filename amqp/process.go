package amqp

import (
	"context"
	"errors"
	"strconv"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Tracer starts process spans for deliveries that come from a delivery
// loop of your own. Most users want Consumer instead, which also acks,
// retries and dead-letters. A Tracer is safe for concurrent use.
type Tracer struct {
	t *msgtrace.Tracer
}

// NewTracer returns a Tracer. It reads WithTracerProvider,
// WithMeterProvider, WithPropagators, WithTrust, WithParentPolicy,
// WithSettleSpans and WithErrorOnEveryAttempt.
func NewTracer(opts ...tracebridge.Option) *Tracer {
	return &Tracer{t: msgtrace.New("rabbitmq", opts)}
}

// Delivery is a delivery with its process span open. It embeds the
// amqp091.Delivery, whose Ack, Nack and Reject settle the message and then
// end the span, so code that settles d.Delivery (or the embedded methods)
// keeps the span honest: it covers the handler up to the settle.
//
// An Ack with multiple=true acks earlier deliveries at the broker too, but
// ends only this delivery's span; settle each Delivery to end each span.
type Delivery struct {
	amqp091.Delivery

	p    *msgtrace.Process
	ctx  context.Context
	real amqp091.Acknowledger

	mu    sync.Mutex
	err   error
	ended bool
}

// StartProcess starts the CONSUMER "process" span for d and returns the
// context to run the handler under (the span, the message's baggage and
// session, nothing of other messages) and d with its span attached. The
// span ends when the delivery is acked, nacked or rejected, or at End for
// deliveries consumed with auto-ack. Headers of the wrong type or malformed
// trace headers never fail: the message simply starts a new trace.
func (t *Tracer) StartProcess(ctx context.Context, d amqp091.Delivery) (context.Context, *Delivery) {
	// Described from pd's copy, which is on the heap anyway: &d would move
	// the parameter there too, one more allocation per message.
	pd := &Delivery{Delivery: d, real: d.Acknowledger}
	ctx, pd.p = t.t.StartProcess(ctx, describe(t.t, &pd.Delivery, ""))
	pd.ctx = ctx
	pd.Delivery.Acknowledger = settler{pd}
	return ctx, pd
}

// Attempt returns the number of this delivery attempt, counted from 1.
func (d *Delivery) Attempt() int { return d.p.Attempt }

// Fail records err as the handler's failure; it is reported on the span
// when the delivery is settled. A nil err clears it.
func (d *Delivery) Fail(err error) {
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
}

// End ends the span without settling, for deliveries consumed with
// auto-ack. final says whether a failure is the message's last attempt.
// End after a settle, or twice, does nothing.
func (d *Delivery) End(err error, final bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended {
		return
	}
	d.ended = true
	if err == nil {
		err = d.err
	}
	d.p.End(d.ctx, err, final)
}

// settle performs a settle at the broker and ends the span with its outcome.
func (d *Delivery) settle(op string, final bool, do func(amqp091.Acknowledger) error) error {
	if d.real == nil {
		return errors.New("amqp: delivery has no channel to settle on")
	}
	err := do(d.real)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended {
		return err
	}
	d.ended = true
	d.p.Settle(d.ctx, op, err)
	herr := d.err
	if herr == nil && err != nil {
		herr = err
	}
	d.p.End(d.ctx, herr, final && herr != nil)
	return err
}

// settler is the Acknowledger of a traced Delivery.
type settler struct{ d *Delivery }

func (s settler) Ack(tag uint64, multiple bool) error {
	return s.d.settle("ack", false, func(a amqp091.Acknowledger) error { return a.Ack(tag, multiple) })
}

func (s settler) Nack(tag uint64, multiple, requeue bool) error {
	return s.d.settle("nack", !requeue, func(a amqp091.Acknowledger) error { return a.Nack(tag, multiple, requeue) })
}

func (s settler) Reject(tag uint64, requeue bool) error {
	return s.d.settle("reject", !requeue, func(a amqp091.Acknowledger) error { return a.Reject(tag, requeue) })
}

// Broker headers that count deliveries.
const (
	headerDeliveryCount = "x-delivery-count" // quorum queues: earlier deliveries
	headerDeath         = "x-death"          // dead-lettering history
)

// describe turns a delivery into what msgtrace needs. queue names the
// destination when known (a Consumer); otherwise the exchange, or the
// routing key for the default exchange, as on the producer side.
func describe(t *msgtrace.Tracer, d *amqp091.Delivery, queue string) msgtrace.Delivery {
	dest := queue
	if dest == "" {
		dest = d.Exchange
		if dest == "" {
			dest = d.RoutingKey
		}
	}
	md := msgtrace.Delivery{
		Message: msgtrace.Message{Destination: dest, ID: d.MessageId, BodySize: len(d.Body),
			Lazy: (*deliveryAttrs)(d)},
		Carrier:     deliveryCarrier(d.Headers),
		PublishedAt: d.Timestamp,
	}
	if d.MessageId != "" {
		md.Identity = messageID{dest, d.MessageId}
	}
	// Both headers are the broker's on the way out of some queues, but a
	// publisher can set them too, and classic queues pass its values
	// through (so does a quorum queue on a first delivery, in RabbitMQ 4).
	// They are a claim, which msgtrace never lets make an attempt final
	// (see the README on retries and trust). x-delivery-count counts
	// earlier deliveries, so it means something only on a delivery the
	// broker marks as redelivered, which no publisher can.
	if n, ok := toInt(d.Headers[headerDeliveryCount]); ok && n > 0 && d.Redelivered {
		md.Claimed = int(min(n, maxClaim))
	}
	// retry-attempt, written by tracebridge when it republishes, already
	// counts the trips through the delay queue that x-death also records;
	// x-death alone counts dead-letter cycles set up without tracebridge.
	if Carrier(d.Headers).Get(t.Carrier().Names().RetryAttempt) == "" {
		md.Claimed += deathCount(d.Headers[headerDeath])
	}
	return md
}

// maxClaim bounds what one header may claim, so sums cannot overflow.
const maxClaim = 1 << 20

// deathCount sums the counts of an x-death header, ignoring anything that
// does not have the shape RabbitMQ writes.
func deathCount(v any) int {
	list, ok := v.([]any)
	if !ok {
		return 0
	}
	total := 0
	for _, e := range list {
		t, ok := e.(amqp091.Table)
		if !ok {
			continue
		}
		if n, ok := toInt(t["count"]); ok && n > 0 && n < maxClaim {
			total += int(n)
		}
	}
	return min(total, maxClaim)
}

// brokerShapedDeaths reports whether v has the shape RabbitMQ writes into
// x-death: a list of tables, each with an integer count and string queue
// and reason. A publisher can write anything there, and a RabbitMQ before
// 3.13 that dead-letters a message updates the header in place: some
// other shapes crash the queue process doing it, and the queue with every
// message in it is lost.
func brokerShapedDeaths(v any) bool {
	list, ok := v.([]any)
	if !ok {
		return false
	}
	for _, e := range list {
		t, ok := e.(amqp091.Table)
		if !ok {
			return false
		}
		switch t["count"].(type) {
		case int64, int32, int16, int8:
		default:
			return false
		}
		if _, ok := t["queue"].(string); !ok {
			return false
		}
		if _, ok := t["reason"].(string); !ok {
			return false
		}
	}
	return true
}

func toInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int32:
		return int64(n), true
	case int16:
		return int64(n), true
	case int8:
		return int64(n), true
	case int:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case string:
		i, err := strconv.ParseInt(n, 10, 64)
		return i, err == nil
	}
	return 0, false
}

// messageID identifies a message by destination and message ID; the
// string is built only when a failure or a redelivery asks for it.
type messageID struct{ dest, id string }

func (m messageID) String() string { return m.dest + "\x00" + m.id }

// deliveryAttrs adds a delivery's tag and routing key to a recording span.
type deliveryAttrs amqp091.Delivery

func (d *deliveryAttrs) AppendAttrs(dst []attribute.KeyValue) []attribute.KeyValue {
	dst = append(dst, semconv.MessagingRabbitMQMessageDeliveryTag(int(d.DeliveryTag)))
	if d.RoutingKey != "" {
		dst = append(dst, semconv.MessagingRabbitMQDestinationRoutingKey(d.RoutingKey))
	}
	return dst
}
