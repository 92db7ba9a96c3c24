package msgtrace

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// RetryDelayKey records, on a failed attempt that will be retried, the
// backoff delay after which the broker was asked to redeliver (seconds).
const RetryDelayKey = attribute.Key("tracebridge.retry.delay")

// RetryDecision is Decide for a broker with an attempt limit of its own
// (JetStream MaxDeliver): limit <= 0 means the configured MaxAttempts. A
// broker limit wins over MaxAttempts because the broker stops redelivering
// there whatever the client wants, and a message naked at its last
// delivery would vanish instead of reaching its dead-letter destination.
func (t *Tracer) RetryDecision(attempt int, err error, limit int) (final bool, delay time.Duration) {
	if limit <= 0 {
		limit = t.MaxAttempts
	}
	return Decide(err, attempt, limit, t.Backoff)
}

// Redelivery is what a front end whose broker redelivers failed messages
// itself tells DeliverAttempt about one delivery. Unlike Deliver, nothing
// is retried in process: a failed attempt is handed back to the broker with
// a delay, so a slow retry never holds a consumer slot.
type Redelivery struct {
	// Handle runs the handler for this attempt under ctx.
	Handle func(ctx context.Context) error
	// Ack settles a success; AckOp names it on the span.
	Ack   func(ctx context.Context) error
	AckOp string
	// Redeliver hands the message back for another attempt after delay
	// (JetStream NakWithDelay); RedeliverOp names it.
	Redeliver   func(ctx context.Context, delay time.Duration) error
	RedeliverOp string
	// DeadLetter publishes the message to the dead-letter destination with
	// its original headers, retry-previous naming last and dl; nil when
	// there is none. The message is settled with GiveUp only after it
	// returned nil.
	DeadLetter func(ctx context.Context, last trace.SpanContext, dl carrier.DeadLetter) error
	// GiveUp settles a message that failed finally (JetStream Term);
	// GiveUpOp names it.
	GiveUp   func(ctx context.Context, err error) error
	GiveUpOp string
	// Limit is the broker's attempt limit; see RetryDecision.
	Limit int
}

// DeliverAttempt runs one delivery attempt of d in its process span and
// settles it: Ack on success; Redeliver with backoff on a failure that
// will be retried; DeadLetter then GiveUp on a final one. When the
// dead-letter publish fails, the message is redelivered rather than given
// up, so the broker keeps it. The returned error is the handler's, or the
// settle step's when that failed.
func (t *Tracer) DeliverAttempt(ctx context.Context, d Delivery, r Redelivery) error {
	pctx, p := t.StartProcess(ctx, d)
	herr := Call(func() error { return r.Handle(pctx) })
	if herr == nil {
		aerr := r.Ack(pctx)
		p.Settle(pctx, r.AckOp, aerr)
		if aerr != nil {
			aerr = fmt.Errorf("%s after success: %w", r.AckOp, aerr)
		}
		p.End(pctx, aerr, false)
		return aerr
	}
	final, delay := t.RetryDecision(p.Attempt, herr, r.Limit)
	if !final {
		p.Remember()
		p.Span.SetAttributes(RetryDelayKey.Float64(delay.Seconds()))
		serr := r.Redeliver(pctx, delay)
		p.Settle(pctx, r.RedeliverOp, serr)
		p.End(pctx, herr, false)
		return herr
	}
	if r.DeadLetter != nil {
		dl := carrier.DeadLetter{Reason: herr.Error(), Attempts: p.Attempt, Source: d.Destination}
		if derr := r.DeadLetter(pctx, p.SpanContext(), dl); derr != nil {
			// Not given up: the broker keeps the message, and the next
			// attempt (if the broker allows one) tries the publish again.
			p.Span.AddEvent("dead-letter publish failed", trace.WithAttributes(
				attribute.String("exception.message", derr.Error())))
			serr := r.Redeliver(pctx, t.Backoff.Delay(p.Attempt))
			p.Settle(pctx, r.RedeliverOp, serr)
			p.End(pctx, herr, true)
			return fmt.Errorf("dead-letter %s: %w", d.Destination, derr)
		}
	} else {
		t.Logger.WarnContext(pctx, "tracebridge: message failed finally and has no dead-letter destination",
			"system", t.System, "destination", d.Destination, "message", IdentityString(d.Identity), "attempts", p.Attempt, "error", herr)
	}
	serr := r.GiveUp(pctx, herr)
	p.Settle(pctx, r.GiveUpOp, serr)
	p.End(pctx, herr, true)
	return herr
}
