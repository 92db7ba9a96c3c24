package msgtrace

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// Delivery describes one delivery attempt of a message to a consumer.
type Delivery struct {
	Message
	// Carrier holds the message's headers.
	Carrier propagation.TextMapCarrier
	// Deliveries is how often the broker has delivered this message,
	// counting this time, as the broker itself attests it in metadata no
	// publisher can set (JetStream NumDelivered); 0 when it does not say.
	Deliveries int
	// Claimed is how many earlier attempts the message's broker headers
	// claim (RabbitMQ x-delivery-count on a redelivery, x-death counts).
	// A publisher can set those headers too, so the claim is shown only
	// under Trusted and never makes an attempt the last (see StartProcess).
	Claimed int
	// Identity names the message across redeliveries within this process
	// (topic/partition/offset, stream sequence, message ID). nil turns off
	// the in-process link to the previous attempt.
	Identity Identity
	// PublishedAt is when the message was produced, for ParentWhileYoung;
	// zero if unknown.
	PublishedAt time.Time
	// Attempt, when not 0, is the attempt number, known for certain (an
	// in-place retry counts its attempts itself).
	Attempt int
	// Previous, when valid, is the previous attempt's span (in-place
	// retries know it without the record).
	Previous trace.SpanContext
	// decides is set by Deliver and DeliverAttempt, which decide the
	// retries themselves; see Tracer.number.
	decides bool
}

// Identity names a message across redeliveries. Its String is asked for
// only when an attempt fails or a message comes again, so a front end can
// pass a pointer it already holds and build no string for the messages that
// succeed the first time, which is nearly all of them.
type Identity interface{ String() string }

// IdentityString is id's String, or "" for none.
func IdentityString(id Identity) string {
	if id == nil {
		return ""
	}
	return id.String()
}

// Process is a started CONSUMER "process" span. It covers the handler up to
// the settle; End it exactly once.
type Process struct {
	Span trace.Span
	// Attempt is the attempt number recorded as tracebridge.attempt.
	Attempt int
	// Vouched is how many attempts, this one included, the consumer can
	// vouch for; a failure is final only once it reaches the limit.
	Vouched  int
	claim    int               // the attempt number the headers claim, within [1, MaxAttempts]
	voucher  trace.SpanContext // the retry-previous this attempt continued from
	dest     string
	Creation trace.SpanContext // the message's creation context, if any
	t        *Tracer
	start    time.Time // zero when the metrics do not record
	identity Identity
	e        *spanEntry
	ended    bool
	// parentOnly marks an attempt that started no span: Span is the
	// creation context's, which End leaves alone.
	parentOnly bool
}

// StartProcess extracts the journey from d.Carrier, works out the attempt
// number and the previous attempt, and starts the process span by the parent
// policy. The returned context carries the span, the message's baggage and
// session, and nothing of any other message.
func (t *Tracer) StartProcess(ctx context.Context, d Delivery) (context.Context, *Process) {
	ambient := trace.SpanContextFromContext(ctx)
	ctx = t.extract(ctx, d.Carrier)

	var creation trace.SpanContext
	trusted := true
	if sc, ok := carrier.RemoteLink(ctx); ok {
		creation, trusted = sc, false
	} else if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && sc.IsRemote() && !sc.Equal(ambient) {
		creation = sc
	}

	retry := t.carrier.ExtractRetry(d.Carrier)
	n := t.number(&d, retry)
	prev := d.Previous
	if !prev.IsValid() && max(n.shown, n.claim) > 1 {
		// Under Untrusted the claim shows no number, but a link to the
		// attempt retry-previous names is still fair: it is a link, not
		// a count.
		// retry-previous names exactly the attempt a republished retry
		// follows. The in-process record can lag it (the republish may be
		// consumed before the failed attempt's span has ended), so it wins
		// only for a broker redelivery, which the header knows nothing of.
		recorded, ok := t.attempts.Get(IdentityString(d.Identity))
		switch {
		case retry.Previous.IsValid() && (d.Deliveries <= 1 || !ok):
			prev = retry.Previous
		case ok:
			prev = recorded
		}
	}
	attempt := n.shown

	parentOnCreation := creation.IsValid() && trusted && t.parentOnCreation(d.PublishedAt)
	if parentOnCreation && !creation.IsSampled() && t.skipUnder(ctx) {
		// The consumer side of the unsampled path (unsampled.go): the
		// process span's parent, the unsampled creation context, makes
		// the sampler drop it. The handler runs on the creation context Extract put
		// into ctx, which keeps its logs on the journey.
		return ctx, t.passThroughProcess(ctx, &d, n)
	}
	var links []trace.Link
	if n := b2i(creation.IsValid() && !parentOnCreation) + b2i(ambient.IsValid()) + b2i(prev.IsValid()); n > 0 {
		links = make([]trace.Link, 0, n)
		if creation.IsValid() && !parentOnCreation {
			links = append(links, link(creation, LinkCreation))
		}
		if ambient.IsValid() {
			links = append(links, link(ambient, LinkAmbient))
		}
		if prev.IsValid() {
			links = append(links, link(prev, LinkPreviousAttempt))
		}
	}

	e := t.entry("process", semconv.MessagingOperationTypeProcess, trace.SpanKindConsumer, &d.Message)
	var opts []trace.SpanStartOption
	switch {
	case attempt == 1 && links == nil && parentOnCreation:
		opts = e.first
	case attempt == 1 && links == nil:
		opts = e.firstRoot
	default:
		opts = make([]trace.SpanStartOption, 0, len(e.opts)+3)
		opts = append(opts, e.opts...)
		opts = append(opts, attemptOpt(attempt))
		if links != nil {
			opts = append(opts, trace.WithLinks(links...))
		}
		if !parentOnCreation {
			opts = append(opts, newRootOpt)
		}
	}
	ctx, span := t.tracer.Start(ctx, e.name, opts...)
	sessionAttr(ctx, span, &d.Message)
	var start time.Time
	if t.metrics.processEnabled(ctx) {
		start = time.Now()
		t.metrics.Consumed.Add(ctx, 1, e.ok)
	}
	return ctx, &Process{Span: span, Attempt: attempt, Vouched: n.vouched, claim: n.claim, voucher: n.voucher,
		dest: d.Destination, Creation: creation, t: t, start: start, identity: d.Identity, e: e}
}

func (t *Tracer) passThroughProcess(ctx context.Context, d *Delivery, n number) *Process {
	p := &Process{Span: trace.SpanFromContext(ctx), Attempt: n.shown, Vouched: n.vouched, claim: n.claim,
		voucher: n.voucher, dest: d.Destination, t: t, identity: d.Identity, parentOnly: true}
	if t.metrics.processEnabled(ctx) {
		p.e = t.entry("process", semconv.MessagingOperationTypeProcess, trace.SpanKindConsumer, &d.Message)
		p.start = time.Now()
		t.metrics.Consumed.Add(ctx, 1, p.e.ok)
	}
	return p
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (t *Tracer) parentOnCreation(published time.Time) bool {
	switch t.Parent {
	case LinkToCreation:
		return false
	case ParentWhileYoung:
		return published.IsZero() || time.Since(published) < t.YoungFor
	}
	return true
}

func link(sc trace.SpanContext, kind string) trace.Link {
	return trace.Link{SpanContext: sc, Attributes: linkAttrs[kind]}
}

// Final reports whether a failure on this attempt is the last one: the
// error is permanent or the attempts the consumer can vouch for are used
// up.
func (p *Process) Final(err error) bool {
	return err != nil && (IsPermanent(err) || p.Vouched >= p.t.MaxAttempts)
}

// RetryInPlace reports whether a failed attempt that is not final should be
// retried in place rather than republished: the message's headers claim
// that this was the last attempt, but the consumer cannot vouch for the
// attempts before it (they were made by another process, or the headers
// are forged). Republishing it would only carry the same claim on, around
// the same loop; retrying in place lets the consumer count the rest itself.
func (p *Process) RetryInPlace() bool { return p.claim >= p.t.MaxAttempts }

// NextRetry is the retry-attempt to write on this attempt's republished
// retry: one past the larger of the attempt number and the headers' claim
// (which carries a count on across processes that cannot vouch for each
// other), never past MaxAttempts.
func (p *Process) NextRetry() int {
	return min(max(p.Attempt, p.claim)+1, max(p.t.MaxAttempts, 2))
}

// settledOK are the event options of the successful settle operations the
// front ends use, built once: every message settles, and building the
// attribute slice and its option costs two allocations each time. The SDK
// copies event attributes, so sharing them is safe. Read-only after init.
var settledOK = map[string]trace.EventOption{}

func init() {
	for _, op := range []string{"ack", "nack", "nak", "term", "commit"} {
		settledOK[op] = trace.WithAttributes(semconv.MessagingOperationName(op), semconv.MessagingOperationTypeSettle)
	}
}

// Settle records a settle operation (ack, nack, commit, term) with its
// outcome: an event on the process span, or a span of its own with
// WithSettleSpans.
func (p *Process) Settle(ctx context.Context, op string, err error) {
	if p.parentOnly || !p.t.SettleSpans && !p.Span.IsRecording() {
		// A settle span's parent would be the unsampled creation context.
		return
	}
	if err == nil && !p.t.SettleSpans {
		if opt, ok := settledOK[op]; ok {
			p.Span.AddEvent("settle", opt)
			return
		}
	}
	attrs := []attribute.KeyValue{semconv.MessagingOperationName(op), semconv.MessagingOperationTypeSettle}
	if err != nil {
		attrs = append(attrs, semconv.ErrorTypeKey.String(ErrorType(err)))
	}
	if p.t.SettleSpans {
		_, s := p.t.tracer.Start(trace.ContextWithSpan(ctx, p.Span), op+" "+p.e.dest,
			trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(append(attrs, p.t.sysAttr)...))
		if err != nil {
			RecordError(s, err, true)
		}
		s.End()
		return
	}
	p.Span.AddEvent("settle", trace.WithAttributes(attrs...))
}

// End ends the attempt. A failure is recorded as an exception with
// error.type; its status is Error only when final is true (or with
// WithErrorOnEveryAttempt). A failed attempt that will be retried is
// remembered, so the next attempt in this process links to it.
func (p *Process) End(ctx context.Context, err error, final bool) {
	if p == nil || p.ended {
		return
	}
	p.ended = true
	if err != nil {
		RecordError(p.Span, err, final || p.t.ErrorOnEveryAttempt)
		if p.Span.IsRecording() {
			p.Span.SetAttributes(RetryFinalKey.Bool(final))
		}
		if final {
			p.t.attempts.Forget(IdentityString(p.identity))
			p.t.vouchers.ForgetVoucher(p.voucher)
			p.t.metrics.DeadLetters.Add(ctx, 1)
		} else {
			p.Remember()
			p.t.metrics.Retries.Add(ctx, 1)
		}
	} else if p.Attempt > 1 || p.voucher.IsValid() {
		p.t.attempts.Forget(IdentityString(p.identity))
		p.t.vouchers.ForgetVoucher(p.voucher)
	}
	if !p.parentOnly {
		p.Span.End()
	}
	if !p.start.IsZero() {
		p.t.metrics.ProcessDuration.Record(ctx, time.Since(p.start).Seconds(), p.e.metricOpt(err))
	}
}

// Remember records this attempt as the latest failed one of its message
// before the front end hands the message back to the broker. A redelivery
// can arrive before End runs (a zero backoff, a fast delay queue), and it
// must link to this attempt, not the one before.
func (p *Process) Remember() {
	sc := p.SpanContext()
	p.t.attempts.Put(IdentityString(p.identity), sc)
	// A republished retry arrives at the retry destination, or back here
	// through a delay queue.
	dest := p.t.RetryDestination
	if dest == "" {
		dest = p.dest
	}
	p.t.vouchers.Vouch(sc, p.Vouched, dest)
}

// SpanContext returns the process span's context: what a retry republished
// by the front end names in retry-previous.
// An attempt that started no span (WithParentBasedSampling) has none: the
// creation context it ran under is not an attempt to link to.
func (p *Process) SpanContext() trace.SpanContext {
	if p.parentOnly {
		return trace.SpanContext{}
	}
	return p.Span.SpanContext()
}

// StartBatchProcess starts one CONSUMER "process" span for a batch, with a
// link to each message's creation context and
// messaging.batch.message_count. The batch's messages keep their own
// journeys: a handler that needs one message's context extracts it with
// Extract. attempt counts the tries of this batch from 1; prev, when valid,
// is the previous try's span, which the new one links to.
func (t *Tracer) StartBatchProcess(ctx context.Context, m Message, carriers []propagation.TextMapCarrier, attempt int, prev trace.SpanContext) (context.Context, *Process) {
	links := make([]trace.Link, 0, len(carriers)+2)
	if ambient := trace.SpanContextFromContext(ctx); ambient.IsValid() {
		links = append(links, link(ambient, LinkAmbient))
	}
	if prev.IsValid() {
		links = append(links, link(prev, LinkPreviousAttempt))
	}
	attempt = max(attempt, 1)
	for _, c := range carriers {
		mctx := t.extract(context.Background(), c)
		sc, ok := carrier.RemoteLink(mctx)
		if !ok {
			sc = trace.SpanContextFromContext(mctx)
		}
		if sc.IsValid() {
			links = append(links, link(sc, LinkBatchMessage))
		}
	}
	e := t.entry("process", semconv.MessagingOperationTypeProcess, trace.SpanKindConsumer, &m)
	opts := append(e.opts[:len(e.opts):len(e.opts)], newRootOpt,
		trace.WithAttributes(semconv.MessagingBatchMessageCount(len(carriers)), AttemptKey.Int(attempt)), trace.WithLinks(links...))
	ctx, span := t.tracer.Start(ctx, e.name, opts...)
	setRecorded(span, &m)
	var start time.Time
	if t.metrics.processEnabled(ctx) {
		start = time.Now()
		t.metrics.Consumed.Add(ctx, int64(len(carriers)), e.ok)
	}
	return ctx, &Process{Span: span, Attempt: attempt, Vouched: attempt, t: t, start: start, e: e}
}
