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

// Redelivery is how a front end whose broker redelivers failed messages
// itself (JetStream) settles one delivery for DeliverAttempt. Unlike
// Deliver, nothing is retried in process: a failed attempt is handed back
// to the broker with a delay, so a slow retry never holds a consumer slot.
// It is an interface, not a struct of funcs, so that a front end passes one
// value per message instead of a closure per step.
type Redelivery interface {
	// Handle runs the handler for this attempt under ctx.
	Handle(ctx context.Context) error
	// Ack settles a success.
	Ack(ctx context.Context) error
	// Redeliver hands the message back for another attempt after delay
	// (JetStream NakWithDelay).
	Redeliver(ctx context.Context, delay time.Duration) error
	// DeadLetter publishes the message to the dead-letter destination with
	// its original headers, retry-previous naming last and dl. It is
	// called only when RedeliveryOps.DeadLetter is set, and the message is
	// given up only after it returned nil.
	DeadLetter(ctx context.Context, last trace.SpanContext, dl carrier.DeadLetter) error
	// GiveUp settles a message that failed finally (JetStream Term).
	GiveUp(ctx context.Context, err error) error
}

// RedeliveryOps names a Redelivery's settle steps on the spans and says
// what it can do; it is the same for every message of a consumer.
type RedeliveryOps struct {
	Ack, Redeliver, GiveUp string
	// DeadLetter is set when there is a dead-letter destination.
	DeadLetter bool
	// Limit is the broker's attempt limit; see RetryDecision.
	Limit int
}

// DeliverAttempt runs one delivery attempt of d in its process span and
// settles it: Ack on success; Redeliver with backoff on a failure that
// will be retried; DeadLetter then GiveUp on a final one. When the
// dead-letter publish fails, the message is redelivered rather than given
// up, so the broker keeps it. The returned error is the handler's, or the
// settle step's when that failed.
func (t *Tracer) DeliverAttempt(ctx context.Context, d Delivery, r Redelivery, ops *RedeliveryOps) error {
	d.decides = true
	pctx, p := t.StartProcess(ctx, d)
	herr := Call(func() error { return r.Handle(pctx) })
	if herr == nil {
		aerr := r.Ack(pctx)
		p.Settle(pctx, ops.Ack, aerr)
		if aerr != nil {
			aerr = fmt.Errorf("%s after success: %w", ops.Ack, aerr)
		}
		p.End(pctx, aerr, false)
		return aerr
	}
	final, delay := t.RetryDecision(p.Vouched, herr, ops.Limit)
	if !final {
		p.Remember()
		p.Span.SetAttributes(RetryDelayKey.Float64(delay.Seconds()))
		serr := r.Redeliver(pctx, delay)
		p.Settle(pctx, ops.Redeliver, serr)
		p.End(pctx, herr, false)
		return herr
	}
	if ops.DeadLetter {
		dl := carrier.DeadLetter{Reason: herr.Error(), Attempts: p.Attempt, Source: d.Destination}
		if derr := r.DeadLetter(pctx, p.SpanContext(), dl); derr != nil {
			// Not given up: the broker keeps the message, and the next
			// attempt (if the broker allows one) tries the publish again.
			p.Span.AddEvent("dead-letter publish failed", trace.WithAttributes(
				attribute.String("exception.message", derr.Error())))
			serr := r.Redeliver(pctx, t.Backoff.Delay(p.Attempt))
			p.Settle(pctx, ops.Redeliver, serr)
			p.End(pctx, herr, true)
			return fmt.Errorf("dead-letter %s: %w", d.Destination, derr)
		}
	} else {
		t.Logger.WarnContext(pctx, "tracebridge: message failed finally and has no dead-letter destination",
			"system", t.System, "destination", d.Destination, "message", IdentityString(d.Identity), "attempts", p.Attempt, "error", herr)
	}
	serr := r.GiveUp(pctx, herr)
	p.Settle(pctx, ops.GiveUp, serr)
	p.End(pctx, herr, true)
	return herr
}
