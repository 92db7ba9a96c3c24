package msgtrace

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// ScopeName is the instrumentation scope of tracebridge's spans and metrics.
const ScopeName = "github.com/tracebridge/tracebridge"

// Version is reported as the instrumentation scope version.
const Version = "0.1.0"

// Attribute keys of tracebridge's own.
const (
	AttemptKey     = attribute.Key("tracebridge.attempt")
	RetryFinalKey  = attribute.Key("tracebridge.retry.final")
	LinkTypeKey    = attribute.Key("tracebridge.link.type")
	SessionIDKey   = semconv.SessionIDKey
	PrevSessionKey = attribute.Key("session.previous_id")
)

// Link types, set on every link tracebridge adds.
const (
	LinkCreation        = "creation"
	LinkPreviousAttempt = "previous_attempt"
	LinkAmbient         = "ambient"
	LinkBatchMessage    = "batch_message"
	LinkReply           = "reply"
)

// Tracer is one front end's handle on the machinery: a system name, a
// resolved Config, the OpenTelemetry tracer and instruments, and the record
// of failed attempts.
type Tracer struct {
	Config
	System   string
	tracer   trace.Tracer
	metrics  *Metrics
	carrier  *carrier.Propagator // retry and dead-letter headers
	attempts *Attempts
	sysAttr  attribute.KeyValue
}

// New resolves opts for a front end of the given messaging.system.
func New(system string, opts []Option) *Tracer {
	c := NewConfig(opts)
	cp, ok := c.Propagator.(*carrier.Propagator)
	if !ok {
		cp = carrier.NewPropagator(carrier.WithMeterProvider(c.MeterProvider))
	}
	return &Tracer{
		Config:   c,
		System:   system,
		tracer:   c.TracerProvider.Tracer(ScopeName, trace.WithInstrumentationVersion(Version)),
		metrics:  NewMetrics(c.MeterProvider.Meter(ScopeName, metric.WithInstrumentationVersion(Version))),
		carrier:  cp,
		attempts: NewAttempts(10000),
		sysAttr:  semconv.MessagingSystemKey.String(system),
	}
}

// Carrier returns the propagator that reads and writes the retry and
// dead-letter headers.
func (t *Tracer) Carrier() *carrier.Propagator { return t.carrier }

// Metrics returns the instruments.
func (t *Tracer) Metrics() *Metrics { return t.metrics }

// Attempts returns the in-process record of failed attempts.
func (t *Tracer) Attempts() *Attempts { return t.attempts }

// Message describes one message for span attributes.
type Message struct {
	Destination         string // topic, exchange, subject or queue
	DestinationTemplate string // for wildcard subscriptions
	Partition           string // messaging.destination.partition.id; "" if none
	ID                  string // messaging.message.id; "" if none
	BodySize            int    // messaging.message.body.size; -1 if unknown
	ConsumerGroup       string
	ServerAddress       string
	ServerPort          int
	// Attrs are broker-specific attributes (Kafka key and offset, RabbitMQ
	// routing key and delivery tag) added as they are.
	Attrs []attribute.KeyValue
}

func (t *Tracer) attrs(op string, opType attribute.KeyValue, m *Message, extra int) []attribute.KeyValue {
	a := make([]attribute.KeyValue, 0, 10+len(m.Attrs)+extra)
	a = append(a, t.sysAttr, opType, semconv.MessagingOperationName(op))
	if m.Destination != "" {
		a = append(a, semconv.MessagingDestinationName(m.Destination))
	}
	if m.DestinationTemplate != "" {
		a = append(a, semconv.MessagingDestinationTemplate(m.DestinationTemplate))
	}
	if m.Partition != "" {
		a = append(a, semconv.MessagingDestinationPartitionID(m.Partition))
	}
	if m.ID != "" {
		a = append(a, semconv.MessagingMessageID(m.ID))
	}
	if m.BodySize >= 0 {
		a = append(a, semconv.MessagingMessageBodySize(m.BodySize))
	}
	if m.ConsumerGroup != "" {
		a = append(a, semconv.MessagingConsumerGroupName(m.ConsumerGroup))
	}
	if m.ServerAddress != "" {
		a = append(a, semconv.ServerAddress(m.ServerAddress))
		if m.ServerPort > 0 {
			a = append(a, semconv.ServerPort(m.ServerPort))
		}
	}
	return append(a, m.Attrs...)
}

// spanName follows semconv: "{operation} {destination}", or the operation
// alone when there is no destination (a template is preferred, because it
// keeps span names low-cardinality for wildcard subscriptions).
func spanName(op string, m *Message) string {
	switch {
	case m.DestinationTemplate != "":
		return op + " " + m.DestinationTemplate
	case m.Destination != "":
		return op + " " + m.Destination
	}
	return op
}

// Op is a started producer-side operation. End it exactly once.
type Op struct {
	Span  trace.Span
	t     *Tracer
	start time.Time
	op    string
	dest  string
	count int
}

// End records err (if any) on the span and ends it, and records the
// operation metrics.
func (o Op) End(ctx context.Context, err error) {
	if o.Span == nil {
		return
	}
	if err != nil {
		RecordError(o.Span, err, true)
	}
	o.Span.End()
	if o.t.metrics.enabled(ctx) || o.t.metrics.Sent.Enabled(ctx) {
		attrs := []attribute.KeyValue{o.t.sysAttr, semconv.MessagingOperationName(o.op), semconv.MessagingDestinationName(o.dest)}
		if err != nil {
			attrs = append(attrs, semconv.ErrorTypeKey.String(ErrorType(err)))
		}
		opt := attrOpt(attrs)
		o.t.metrics.OperationDuration.Record(ctx, time.Since(o.start).Seconds(), opt)
		if o.op == "send" || o.op == "publish" {
			o.t.metrics.Sent.Add(ctx, int64(o.count), opt)
		}
	}
}

// HasTraceparent reports whether c already carries a valid creation context,
// in which case a producer forwards the message without rewriting it.
func (t *Tracer) HasTraceparent(c propagation.TextMapCarrier) (trace.SpanContext, bool) {
	sc, ok := carrier.ParseTraceparent(c.Get(t.carrier.Names().Traceparent))
	return sc, ok
}

// StartSend starts a PRODUCER "send" span for one message and injects it as
// the message's creation context. A message that already carries a valid
// traceparent keeps it (forwarding): the send span links to it instead.
func (t *Tracer) StartSend(ctx context.Context, c propagation.TextMapCarrier, m Message) (context.Context, Op) {
	return t.startProducer(ctx, c, m, "send", semconv.MessagingOperationTypeSend)
}

// StartCreate starts a PRODUCER "create" span for one message of a batch and
// injects it. End it once the batch's send has finished.
func (t *Tracer) StartCreate(ctx context.Context, c propagation.TextMapCarrier, m Message) (context.Context, Op) {
	return t.startProducer(ctx, c, m, "create", semconv.MessagingOperationTypeCreate)
}

func (t *Tracer) startProducer(ctx context.Context, c propagation.TextMapCarrier, m Message, op string, opType attribute.KeyValue) (context.Context, Op) {
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(t.attrs(op, opType, &m, 1)...),
	}
	fwd, forwarding := t.HasTraceparent(c)
	if forwarding {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: fwd,
			Attributes: []attribute.KeyValue{LinkTypeKey.String(LinkCreation)}}))
	}
	if s := carrier.SessionFromContext(ctx); s != "" {
		opts = append(opts, trace.WithAttributes(SessionIDKey.String(s)))
	}
	ctx, span := t.tracer.Start(ctx, spanName(op, &m), opts...)
	if !forwarding {
		t.Propagator.Inject(ctx, c)
	}
	return ctx, Op{Span: span, t: t, start: time.Now(), op: op, dest: m.Destination, count: 1}
}

// StartBatchSend starts the CLIENT "send" span of a batch, linking to each
// message's creation context.
func (t *Tracer) StartBatchSend(ctx context.Context, m Message, creations []trace.SpanContext) (context.Context, Op) {
	links := make([]trace.Link, 0, len(creations))
	for _, sc := range creations {
		if sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc,
				Attributes: []attribute.KeyValue{LinkTypeKey.String(LinkBatchMessage)}})
		}
	}
	attrs := append(t.attrs("send", semconv.MessagingOperationTypeSend, &m, 1),
		semconv.MessagingBatchMessageCount(len(creations)))
	ctx, span := t.tracer.Start(ctx, spanName("send", &m),
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...), trace.WithLinks(links...))
	return ctx, Op{Span: span, t: t, start: time.Now(), op: "send", dest: m.Destination, count: len(creations)}
}

// StartClient starts a CLIENT span for an operation such as a request-reply
// round trip, injecting its context into c.
func (t *Tracer) StartClient(ctx context.Context, c propagation.TextMapCarrier, op string, m Message) (context.Context, Op) {
	ctx, span := t.tracer.Start(ctx, spanName(op, &m), trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(t.attrs(op, semconv.MessagingOperationTypeSend, &m, 0)...))
	t.Propagator.Inject(ctx, c)
	return ctx, Op{Span: span, t: t, start: time.Now(), op: op, dest: m.Destination, count: 1}
}

// Inject writes the journey in ctx into c, for headers the front end builds
// itself (a reply, a dead letter of its own).
func (t *Tracer) Inject(ctx context.Context, c propagation.TextMapCarrier) {
	t.Propagator.Inject(ctx, c)
}

// Extract reads the journey from c into ctx.
func (t *Tracer) Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	return t.Propagator.Extract(ctx, c)
}

// ErrorType is the error.type attribute value for err: the dynamic type's
// name, which is low-cardinality, unlike the message.
func ErrorType(err error) string {
	if err == nil {
		return ""
	}
	if IsPermanent(err) {
		if u, ok := err.(interface{ Unwrap() error }); ok && u.Unwrap() != nil {
			err = u.Unwrap()
		}
	}
	if _, ok := err.(*PanicError); ok {
		return "panic"
	}
	name := typeName(err)
	if name == "" {
		return "_OTHER"
	}
	return name
}

// RecordError records err as an exception event with error.type, and sets
// status Error when final. A panic's stack goes into exception.stacktrace.
func RecordError(span trace.Span, err error, final bool) {
	opts := []trace.EventOption{trace.WithAttributes(semconv.ErrorTypeKey.String(ErrorType(err)))}
	if p, ok := err.(*PanicError); ok {
		opts = append(opts, trace.WithAttributes(semconv.ExceptionStacktrace(string(p.Stack))))
	}
	span.RecordError(err, opts...)
	span.SetAttributes(semconv.ErrorTypeKey.String(ErrorType(err)))
	if final {
		span.SetStatus(codes.Error, err.Error())
	}
}
