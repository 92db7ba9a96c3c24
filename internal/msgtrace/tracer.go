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
	System  string
	tracer  trace.Tracer
	metrics *Metrics
	carrier *carrier.Propagator // retry and dead-letter headers
	// extractor reads a message's journey under the consumer's trust
	// policy; admit, when set, applies that policy after a propagator
	// that is not a *carrier.Propagator extracted it.
	extractor propagation.TextMapPropagator
	admit     *carrier.Propagator
	attempts  *Attempts
	vouchers  *Attempts // failed attempts handed on for a retry, by span
	sysAttr   attribute.KeyValue
	spans     spanCache
	// unsampled says when a message under an unsampled parent starts no
	// span (see unsampled.go).
	unsampled unsampledPolicy
}

// New resolves opts for a front end of the given messaging.system.
func New(system string, opts []Option) *Tracer {
	c := NewConfig(opts)
	t := &Tracer{
		System:    system,
		tracer:    c.TracerProvider.Tracer(ScopeName, trace.WithInstrumentationVersion(Version)),
		metrics:   NewMetrics(c.MeterProvider.Meter(ScopeName, metric.WithInstrumentationVersion(Version))),
		extractor: c.Propagator,
		attempts:  NewAttempts(10000),
		vouchers:  NewAttempts(10000),
		sysAttr:   semconv.MessagingSystemKey.String(system),
	}
	cp, ok := c.Propagator.(*carrier.Propagator)
	switch {
	case ok && c.Trust == carrier.Untrusted:
		// The consumer's policy over the propagator's header names,
		// filters, session format and meter provider.
		t.extractor = cp.WithTrust(carrier.Untrusted, c.AllowBaggage...)
	case ok && cp.Trust() == carrier.Untrusted:
		c.Trust = carrier.Untrusted // an untrusted propagator stays so
	case !ok && c.Trust == carrier.Untrusted:
		t.admit = carrier.NewPropagator(carrier.WithTrust(carrier.Untrusted),
			carrier.WithUntrustedBaggage(c.AllowBaggage...), carrier.WithMeterProvider(c.MeterProvider),
			carrier.WithLogger(c.Logger))
	}
	if !ok {
		cp = carrier.NewPropagator(carrier.WithMeterProvider(c.MeterProvider), carrier.WithLogger(c.Logger))
	}
	t.unsampled = resolveUnsampled(&c)
	t.Config, t.carrier = c, cp
	return t
}

// extract reads c's journey into ctx under the consumer's trust policy.
func (t *Tracer) extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	if t.admit == nil {
		return t.extractor.Extract(ctx, c)
	}
	// Extracted apart from ctx, so that the foreign propagator can put
	// nothing into the handler's context that the policy did not admit.
	return t.admit.Admit(ctx, t.extractor.Extract(context.Background(), c))
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
	// Attr is one more broker-specific attribute (the RabbitMQ routing
	// key), held by value: unlike Attrs or Lazy it costs no allocation,
	// and it is added only when the span records. Unset (no key) adds
	// nothing.
	Attr attribute.KeyValue
	// Lazy adds broker-specific attributes too, but is asked only when the
	// span records: building them (a key converted to a string, a slice to
	// hold them) is what an unsampled message should not pay for. A front
	// end passes a pointer it already holds, which fits in the interface
	// without an allocation of its own.
	Lazy AttrAppender
}

// AttrAppender appends attributes to dst and returns the extended slice.
// It is called synchronously while the span starts, never later.
type AttrAppender interface {
	AppendAttrs(dst []attribute.KeyValue) []attribute.KeyValue
}

// setRecorded adds what the span does not get at start (see spancache.go)
// when, and only when, the span records.
func setRecorded(span trace.Span, m *Message, more ...attribute.KeyValue) {
	if !span.IsRecording() {
		return
	}
	n := 4 + len(m.Attrs) + len(more)
	if m.Lazy != nil {
		n += 3 // every front end's appender adds at most three
	}
	a := make([]attribute.KeyValue, 0, n)
	if m.Partition != "" {
		a = append(a, semconv.MessagingDestinationPartitionID(m.Partition))
	}
	if m.ID != "" {
		a = append(a, semconv.MessagingMessageID(m.ID))
	}
	if m.BodySize >= 0 {
		a = append(a, semconv.MessagingMessageBodySize(m.BodySize))
	}
	a = append(a, m.Attrs...)
	if m.Attr.Key != "" {
		a = append(a, m.Attr)
	}
	if m.Lazy != nil {
		a = m.Lazy.AppendAttrs(a)
	}
	span.SetAttributes(append(a, more...)...)
}

// sessionAttr is session.id for a recording span whose context carries one.
func sessionAttr(ctx context.Context, span trace.Span, m *Message) {
	if !span.IsRecording() {
		return
	}
	if s := carrier.SessionFromContext(ctx); s != "" {
		setRecorded(span, m, SessionIDKey.String(s))
		return
	}
	setRecorded(span, m)
}

// spanName follows semconv: "{operation} {destination}", or the operation
// alone when there is no destination (a template is preferred, because it
// keeps span names low-cardinality for wildcard subscriptions).
func spanName(op, dest, tmpl string) string {
	switch {
	case tmpl != "":
		return op + " " + tmpl
	case dest != "":
		return op + " " + dest
	}
	return op
}

// Op is a started producer-side operation. End it exactly once.
type Op struct {
	Span  trace.Span
	t     *Tracer
	e     *spanEntry
	start time.Time // zero when the metrics do not record
	count int
	// parentOnly marks an operation that started no span (see
	// passThrough): Span is the caller's, which End must leave alone.
	parentOnly bool
}

// passThrough is the producer side of the unsampled path (unsampled.go):
// under a parent that is neither sampled nor recording, a parent-based
// sampler would drop the span anyway, so none is started and the parent's
// context is what travels. The SDK's non-recording span costs three allocations
// and a span ID per message; this costs none. Metrics still count the
// operation: sampling decides about traces, not measurements.
func (t *Tracer) passThrough(ctx context.Context, op string, opType attribute.KeyValue, kind trace.SpanKind, m *Message, count int) (Op, bool) {
	parent := trace.SpanFromContext(ctx)
	if sc := parent.SpanContext(); !sc.IsValid() || sc.IsSampled() || parent.IsRecording() || !t.skipUnder(ctx) {
		return Op{}, false
	}
	o := Op{Span: parent, t: t, count: count, parentOnly: true}
	if o.start = t.opStart(ctx); !o.start.IsZero() {
		o.e = t.entry(op, opType, kind, m)
	}
	return o, true
}

// End records err (if any) on the span and ends it, and records the
// operation metrics.
func (o Op) End(ctx context.Context, err error) {
	if o.Span == nil {
		return
	}
	if !o.parentOnly {
		if err != nil {
			RecordError(o.Span, err, true)
		}
		o.Span.End()
	}
	if o.start.IsZero() {
		return
	}
	opt := o.e.metricOpt(err)
	o.t.metrics.OperationDuration.Record(ctx, time.Since(o.start).Seconds(), opt)
	if o.e.op == "send" || o.e.op == "publish" {
		o.t.metrics.Sent.Add(ctx, int64(o.count), opt)
	}
}

// opStart is the start time an Op measures from, or zero when none of the
// producer instruments records: asking once per operation spares the clock
// read and every attribute of an uninstrumented process.
func (t *Tracer) opStart(ctx context.Context) time.Time {
	if t.metrics.producerEnabled(ctx) {
		return time.Now()
	}
	return time.Time{}
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
	if o, ok := t.passThrough(ctx, op, opType, trace.SpanKindProducer, &m, 1); ok {
		if _, forwarding := t.HasTraceparent(c); !forwarding {
			t.Propagator.Inject(ctx, c)
		}
		return ctx, o
	}
	e := t.entry(op, opType, trace.SpanKindProducer, &m)
	opts := e.opts
	fwd, forwarding := t.HasTraceparent(c)
	if forwarding {
		opts = append(opts[:len(opts):len(opts)], trace.WithLinks(trace.Link{SpanContext: fwd,
			Attributes: linkAttrs[LinkCreation]}))
	}
	ctx, span := t.tracer.Start(ctx, e.name, opts...)
	sessionAttr(ctx, span, &m)
	if !forwarding {
		t.Propagator.Inject(ctx, c)
	}
	return ctx, Op{Span: span, t: t, e: e, start: t.opStart(ctx), count: 1}
}

// StartBatchSend starts the CLIENT "send" span of a batch of count
// messages, linking to each message's creation context (none without
// create spans).
func (t *Tracer) StartBatchSend(ctx context.Context, m Message, count int, creations []trace.SpanContext) (context.Context, Op) {
	if o, ok := t.passThrough(ctx, "send", semconv.MessagingOperationTypeSend, trace.SpanKindClient, &m, count); ok {
		return ctx, o
	}
	links := make([]trace.Link, 0, len(creations))
	for _, sc := range creations {
		if sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc, Attributes: linkAttrs[LinkBatchMessage]})
		}
	}
	e := t.entry("send", semconv.MessagingOperationTypeSend, trace.SpanKindClient, &m)
	opts := append(e.opts[:len(e.opts):len(e.opts)],
		trace.WithAttributes(semconv.MessagingBatchMessageCount(count)), trace.WithLinks(links...))
	ctx, span := t.tracer.Start(ctx, e.name, opts...)
	setRecorded(span, &m)
	return ctx, Op{Span: span, t: t, e: e, start: t.opStart(ctx), count: count}
}

// StartClient starts a CLIENT span for an operation such as a request-reply
// round trip, injecting its context into c.
func (t *Tracer) StartClient(ctx context.Context, c propagation.TextMapCarrier, op string, m Message) (context.Context, Op) {
	if o, ok := t.passThrough(ctx, op, semconv.MessagingOperationTypeSend, trace.SpanKindClient, &m, 1); ok {
		t.Propagator.Inject(ctx, c)
		return ctx, o
	}
	e := t.entry(op, semconv.MessagingOperationTypeSend, trace.SpanKindClient, &m)
	ctx, span := t.tracer.Start(ctx, e.name, e.opts...)
	setRecorded(span, &m)
	t.Propagator.Inject(ctx, c)
	return ctx, Op{Span: span, t: t, e: e, start: t.opStart(ctx), count: 1}
}

// Inject writes the journey in ctx into c, for headers the front end builds
// itself (a reply, a dead letter of its own).
func (t *Tracer) Inject(ctx context.Context, c propagation.TextMapCarrier) {
	t.Propagator.Inject(ctx, c)
}

// Extract reads the journey from c into ctx, under the consumer's trust
// policy.
func (t *Tracer) Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	return t.extract(ctx, c)
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
	if !span.IsRecording() {
		// A span that does not record ignores all of this; building the
		// options would cost allocations for nothing.
		return
	}
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
