// Package benchwrap is the yardstick of the benchmarks: the tracing wrapper
// a user writes by hand in place of tracebridge (the stock W3C propagators,
// a minimal carrier for the client's header type, one span per message),
// and the CPU-time meter the benchmarks report with. Only benchmarks import
// it; it is shared so that every broker package measures against the same
// hand-written code.
package benchwrap

import (
	"context"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"
	amqp091 "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// Wrapper is a hand-written messaging wrapper. Minimal records what the
// issue's yardstick asks (messaging.system, the destination and the
// operation); Full also records the attributes tracebridge records, passed
// by the caller, as a user copying tracebridge's span shape would: built
// and handed to Start whether or not the span samples.
type Wrapper struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	system attribute.KeyValue
	full   bool
}

// New is a wrapper for a client of system (semconv's messaging.system
// value) on tp; full selects the tracebridge attribute set.
func New(tp trace.TracerProvider, system string, full bool) *Wrapper {
	return &Wrapper{
		tracer: tp.Tracer("handwritten"),
		prop:   propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		system: semconv.MessagingSystemKey.String(system),
		full:   full,
	}
}

// Extra appends a path's attributes beyond the minimal set; it is called
// only by a Full wrapper.
type Extra func(dst []attribute.KeyValue) []attribute.KeyValue

// Send starts the PRODUCER span of one message to dest and injects its
// context into c.
func (w *Wrapper) Send(ctx context.Context, dest string, c propagation.TextMapCarrier, extra Extra) (context.Context, trace.Span) {
	ctx, span := w.start(ctx, "send", semconv.MessagingOperationTypeSend, trace.SpanKindProducer, dest, extra, "")
	w.prop.Inject(ctx, c)
	return ctx, span
}

// Request starts the CLIENT span of a request-reply round trip to dest
// and injects its context into c; end it when the reply (or the error)
// is in.
func (w *Wrapper) Request(ctx context.Context, dest string, c propagation.TextMapCarrier, extra Extra) (context.Context, trace.Span) {
	ctx, span := w.start(ctx, "request", semconv.MessagingOperationTypeSend, trace.SpanKindClient, dest, extra, "")
	w.prop.Inject(ctx, c)
	return ctx, span
}

// Receive extracts the journey from c and starts the CONSUMER span that a
// handler runs in, up to and including its ack or commit. A Full wrapper
// records the session the message's baggage carries as session.id, as
// tracebridge records the session it reads.
func (w *Wrapper) Receive(ctx context.Context, dest string, c propagation.TextMapCarrier, extra Extra) (context.Context, trace.Span) {
	ctx = w.prop.Extract(ctx, c)
	session := ""
	if w.full {
		session = baggage.FromContext(ctx).Member(string(semconv.SessionIDKey)).Value()
	}
	return w.start(ctx, "process", semconv.MessagingOperationTypeProcess, trace.SpanKindConsumer, dest, extra, session)
}

func (w *Wrapper) start(ctx context.Context, op string, opType attribute.KeyValue, kind trace.SpanKind, dest string, extra Extra, session string) (context.Context, trace.Span) {
	var attrs []attribute.KeyValue
	if w.full {
		attrs = make([]attribute.KeyValue, 0, 12)
		attrs = append(attrs, w.system, opType, semconv.MessagingOperationName(op), semconv.MessagingDestinationName(dest))
		if extra != nil {
			attrs = extra(attrs)
		}
		if session != "" {
			attrs = append(attrs, semconv.SessionID(session))
		}
	} else {
		attrs = []attribute.KeyValue{w.system, semconv.MessagingOperationName(op), semconv.MessagingDestinationName(dest)}
	}
	return w.tracer.Start(ctx, op+" "+dest, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
}

// SessionInBaggage returns ctx with its tracebridge session, if any, also
// as the W3C baggage member session.id: how a hand-written wrapper on the
// stock propagators carries a session, built once at the edge. The
// hand-written rows produce under it, so that they propagate the journey
// tracebridge propagates (its traceparent and its session), not less.
func SessionInBaggage(ctx context.Context) context.Context {
	s := carrier.SessionFromContext(ctx)
	if s == "" {
		return ctx
	}
	m, err := baggage.NewMemberRaw(string(semconv.SessionIDKey), s)
	if err != nil {
		return ctx
	}
	bag, err := baggage.FromContext(ctx).SetMember(m)
	if err != nil {
		return ctx
	}
	return baggage.ContextWithBaggage(ctx, bag)
}

// End ends span, recording err as its status.
func End(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// KafkaCarrier is the carrier a kafka-go user writes: Set appends, Get
// returns the first match.
type KafkaCarrier struct{ H *[]kafkago.Header }

// Get returns the first header named key.
func (c KafkaCarrier) Get(key string) string {
	for _, h := range *c.H {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// Set appends a header.
func (c KafkaCarrier) Set(key, value string) {
	*c.H = append(*c.H, kafkago.Header{Key: key, Value: []byte(value)})
}

// Keys lists the header names.
func (c KafkaCarrier) Keys() []string {
	out := make([]string, len(*c.H))
	for i, h := range *c.H {
		out[i] = h.Key
	}
	return out
}

// AMQPCarrier is the carrier an amqp091-go user writes over a header table.
type AMQPCarrier amqp091.Table

// Get returns key's value when it is a string.
func (c AMQPCarrier) Get(key string) string {
	s, _ := c[key].(string)
	return s
}

// Set sets key.
func (c AMQPCarrier) Set(key, value string) { c[key] = value }

// Keys lists the table's keys.
func (c AMQPCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// NATSCarrier is the carrier a nats.go user writes over nats.Header.
type NATSCarrier nats.Header

// Get returns key's first value.
func (c NATSCarrier) Get(key string) string { return nats.Header(c).Get(key) }

// Set sets key.
func (c NATSCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }

// Keys lists the header names.
func (c NATSCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// CPU starts measuring the process's CPU time (user and system, every
// thread: the client's, the wrapper's, the SDK's and the garbage
// collector's) and returns the function that stops it and reports the
// time per message as cpu-µs/msg over n messages. CPU time is steadier
// than wall time on a shared machine.
func CPU(b *testing.B) func(n int) {
	start := cpuNow()
	return func(n int) {
		if n > 0 {
			b.ReportMetric(float64(cpuNow()-start)/1e3/float64(n), "cpu-µs/msg")
		}
	}
}

func cpuNow() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// Variant is a hand-written wrapper's benchmark row: minimal ("hand") or
// with tracebridge's attributes ("handfull"), under an unsampled or a
// sampled parent.
type Variant struct {
	Name          string
	Full, Sampled bool
}

// Variants are the four hand-written rows every path runs.
func Variants() []Variant {
	return []Variant{
		{"hand-unsampled", false, false}, {"hand-sampled", false, true},
		{"handfull-unsampled", true, false}, {"handfull-sampled", true, true},
	}
}
