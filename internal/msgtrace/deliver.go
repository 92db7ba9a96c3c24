package msgtrace

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// Settlement is what a front end's consumer loop tells Deliver about one
// message: how to run the handler and how the broker settles, republishes
// and dead-letters it. Deliver owns the order of those steps, which is the
// part every broker must get the same: the settle comes only after a
// republish or dead-letter publish succeeded.
type Settlement struct {
	// Handle runs the user's handler for one attempt under ctx, which
	// carries the process span and the message's journey.
	Handle func(ctx context.Context) error
	// Ack settles the message as done (Kafka commit, AMQP ack).
	Ack func(ctx context.Context) error
	// AckOp names Ack on the span: "commit", "ack".
	AckOp string
	// Republish sends the message to the retry destination with r in its
	// headers. nil means failed attempts are retried in place.
	Republish func(ctx context.Context, r carrier.Retry) error
	// DeadLetter sends the message to the dead-letter destination with its
	// original headers, retry-previous naming last and the dead-letter-*
	// headers of dl. nil means there is no dead-letter destination.
	DeadLetter func(ctx context.Context, last trace.SpanContext, dl carrier.DeadLetter) error
	// GiveUp settles a message that failed finally and has no dead-letter
	// destination (nack without requeue, term). nil means Ack: the failure
	// is logged and the message is settled, so it cannot block the ones
	// behind it forever.
	GiveUp func(ctx context.Context, err error) error
	// GiveUpOp names GiveUp on the span; default AckOp.
	GiveUpOp string
	// PublishAttempts bounds how often a failed republish or dead-letter
	// publish is tried before Deliver returns ErrUnsettled; 0 means until
	// stop is done. Kafka wants 0, because committing any later message of
	// the partition would commit this one too.
	PublishAttempts int
}

// Outcome is what became of a delivered message.
type Outcome uint8

// Outcomes of Deliver.
const (
	// Succeeded: the handler succeeded and the message was settled.
	Succeeded Outcome = iota
	// Republished: moved to the retry destination and settled.
	Republished
	// DeadLettered: moved to the dead-letter destination and settled.
	DeadLettered
	// GaveUp: failed finally without a dead-letter destination, settled.
	GaveUp
	// Unsettled: stopped or a settle step failed; the broker still holds
	// the message and will deliver it again.
	Unsettled
)

// ErrStopped is returned by Deliver when stop ended a backoff wait or a
// publish retry; the message is left unsettled for redelivery.
var ErrStopped = errors.New("msgtrace: consumer stopping, message left unsettled")

// Deliver runs one message through its attempts: process span per attempt
// (attempt N linking to N-1), the handler with panic recovery, in-place
// retries with backoff or a republish to the retry destination, and the
// dead letter after the last attempt. ctx is the handler's base context
// (values only: shutdown should let a running handler finish); stop ends
// backoff waits and publish retries. A returned error means the message
// is not settled.
func (t *Tracer) Deliver(ctx, stop context.Context, d Delivery, s Settlement) (Outcome, error) {
	if s.Republish != nil && d.Attempt == 0 && !d.PublishedAt.IsZero() {
		// A republished retry waits out its backoff here, measured from
		// when it was republished, so the failing consumer never blocks
		// its own partition for it.
		if r := t.carrier.ExtractRetry(d.Carrier); r.Attempt > 1 {
			// Both the header and the publish time are the publisher's to
			// set: the attempt is capped as StartProcess caps it, and the
			// wait at the delay itself, so that a publish time in the
			// future cannot hold the consumer up.
			delay := t.Backoff.Delay(min(r.Attempt, t.MaxAttempts) - 1)
			if wait := min(time.Until(d.PublishedAt.Add(delay)), delay); wait > 0 {
				if !Sleep(stop, wait) {
					return Unsettled, ErrStopped
				}
			}
		}
	}
	d.decides = true
	for {
		pctx, p := t.StartProcess(ctx, d)
		err := Call(func() error { return s.Handle(pctx) })
		if err == nil {
			if aerr := s.Ack(pctx); aerr != nil {
				p.Settle(pctx, s.AckOp, aerr)
				p.End(pctx, fmt.Errorf("%s after success: %w", s.AckOp, aerr), false)
				return Unsettled, aerr
			}
			p.Settle(pctx, s.AckOp, nil)
			p.End(pctx, nil, false)
			return Succeeded, nil
		}
		final := p.Final(err)
		switch {
		case !final && (s.Republish == nil || p.RetryInPlace()):
			p.End(pctx, err, false)
			if !Sleep(stop, t.Backoff.Delay(p.Attempt)) {
				return Unsettled, ErrStopped
			}
			d.Attempt, d.Previous = p.Vouched+1, p.SpanContext()
			continue
		case !final:
			p.Remember()
			r := carrier.Retry{Attempt: p.NextRetry(), Previous: p.SpanContext()}
			return t.settleAfter(pctx, stop, p, err, false, Republished, s, s.AckOp,
				func(ctx context.Context) error { return s.Republish(ctx, r) })
		case s.DeadLetter != nil:
			dl := carrier.DeadLetter{Reason: err.Error(), Attempts: p.Attempt, Source: d.Destination}
			return t.settleAfter(pctx, stop, p, err, true, DeadLettered, s, s.AckOp,
				func(ctx context.Context) error { return s.DeadLetter(ctx, p.SpanContext(), dl) })
		default:
			t.Logger.WarnContext(pctx, "tracebridge: message failed finally and has no dead-letter destination",
				"system", t.System, "destination", d.Destination, "message", IdentityString(d.Identity), "attempts", p.Attempt, "error", err)
			op, settle := s.AckOp, s.Ack
			if s.GiveUp != nil {
				op, settle = s.GiveUpOp, func(ctx context.Context) error { return s.GiveUp(ctx, err) }
				if op == "" {
					op = s.AckOp
				}
			}
			return settleAndEnd(pctx, p, op, settle, err, true, GaveUp)
		}
	}
}

// settleAfter publishes (retrying with backoff) and settles only once the
// publish succeeded; the process span stays open across both, because the
// attempt is not over until the broker has let go of the message.
func (t *Tracer) settleAfter(ctx, stop context.Context, p *Process, herr error, final bool, done Outcome,
	s Settlement, op string, publish func(context.Context) error) (Outcome, error) {
	for n := 1; ; n++ {
		perr := publish(ctx)
		if perr == nil {
			break
		}
		p.Span.AddEvent("publish failed", trace.WithAttributes(
			semconv.ErrorTypeKey.String(ErrorType(perr)), attribute.String("exception.message", perr.Error()),
			AttemptKey.Int(n)))
		if s.PublishAttempts > 0 && n >= s.PublishAttempts || !Sleep(stop, t.Backoff.Delay(n)) {
			p.Settle(ctx, op, perr)
			p.End(ctx, herr, final)
			if stop.Err() != nil {
				return Unsettled, fmt.Errorf("%w: %w", ErrStopped, perr)
			}
			return Unsettled, perr
		}
	}
	return settleAndEnd(ctx, p, op, s.Ack, herr, final, done)
}

// settleAndEnd settles with settle, records it, and ends the attempt with
// the handler's error herr. The outcome is done, or Unsettled when the
// settle failed: the broker then still holds the message.
func settleAndEnd(ctx context.Context, p *Process, op string, settle func(context.Context) error,
	herr error, final bool, done Outcome) (Outcome, error) {
	serr := settle(ctx)
	p.Settle(ctx, op, serr)
	p.End(ctx, herr, final)
	if serr != nil {
		return Unsettled, serr
	}
	return done, nil
}

// Sleep waits d or until stop is done, reporting whether the wait ran out
// normally. Every front end's backoff and delay waits go through it.
func Sleep(stop context.Context, d time.Duration) bool {
	if stop.Err() != nil {
		return false
	}
	if d <= 0 {
		return true
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-stop.Done():
		return false
	}
}

// detachedKey marks the value layer Detach adds.
type detachedKey struct{}

// Detach is context.WithoutCancel for a consumer's base context: handlers
// keep ctx's values but not its cancellation, so a shutdown does not abort
// them halfway. The standard result is a struct that is boxed, one
// allocation, on every Value call made on it directly, as StartProcess does
// for each message; behind a value layer, lookups walk past it without one.
func Detach(ctx context.Context) context.Context {
	return context.WithValue(context.WithoutCancel(ctx), detachedKey{}, true)
}
