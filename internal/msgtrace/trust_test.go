package msgtrace_test

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

func trust(t carrier.Trust) msgtrace.Option {
	return func(c *msgtrace.Config) { c.Trust = t }
}

func maxAttempts(n int) msgtrace.Option {
	return func(c *msgtrace.Config) {
		c.MaxAttempts, c.Backoff = n, msgtrace.Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond}
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// TestClaimsNeverMakeAnAttemptFinal: whatever the headers claim, and
// whatever the trust, an attempt is final only when the consumer can
// vouch for MaxAttempts attempts. Through the low-level StartProcess,
// whose caller decides the retries, Trusted shows the whole claim (a
// retry-attempt only up to MaxAttempts, as the library writes it);
// Untrusted shows nothing of it. (Deliver caps what it shows at
// MaxAttempts-1: the broker tests check that.)
func TestClaimsNeverMakeAnAttemptFinal(t *testing.T) {
	fail := errors.New("transient")
	foreign, _ := carrier.ParseTraceparent("00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01")
	cases := []struct {
		name           string
		retry          carrier.Retry
		claimed        int
		shownTrusted   int
		shownUntrusted int
		inPlace        bool
	}{
		{name: "none", shownTrusted: 1, shownUntrusted: 1},
		{name: "retry-attempt 2", retry: carrier.Retry{Attempt: 2}, shownTrusted: 2, shownUntrusted: 1},
		{name: "retry-attempt last", retry: carrier.Retry{Attempt: 3, Previous: foreign}, shownTrusted: 3, shownUntrusted: 1, inPlace: true},
		{name: "retry-attempt past the limit", retry: carrier.Retry{Attempt: 1 << 29}, shownTrusted: 1, shownUntrusted: 1, inPlace: true},
		{name: "broker headers", claimed: 1 << 20, shownTrusted: 1<<20 + 1, shownUntrusted: 1, inPlace: true},
		{name: "broker headers past any bound", claimed: 1 << 40, shownTrusted: 1<<20 + 1, shownUntrusted: 1, inPlace: true},
		{name: "broker headers last", claimed: 2, shownTrusted: 3, shownUntrusted: 1, inPlace: true},
		{name: "negative broker claim", claimed: -7, shownTrusted: 1, shownUntrusted: 1},
	}
	for _, tc := range cases {
		for _, tr := range []carrier.Trust{carrier.Trusted, carrier.Untrusted} {
			t.Run(tc.name+"/"+tr.String(), func(t *testing.T) {
				tracer, _ := newTracer(t, maxAttempts(3), trust(tr))
				c := propagation.MapCarrier{}
				tracer.Carrier().InjectRetry(c, tc.retry)
				ctx, p := tracer.StartProcess(context.Background(), msgtrace.Delivery{
					Message: msgtrace.Message{Destination: "in"}, Carrier: c, Claimed: tc.claimed})
				defer p.End(ctx, fail, p.Final(fail))
				want := tc.shownTrusted
				if tr == carrier.Untrusted {
					want = tc.shownUntrusted
				}
				if p.Attempt != want || p.Vouched != 1 || p.Final(fail) || p.RetryInPlace() != tc.inPlace {
					t.Fatalf("attempt %d vouched %d final %v in place %v; want attempt %d, vouched 1, not final, in place %v",
						p.Attempt, p.Vouched, p.Final(fail), p.RetryInPlace(), want, tc.inPlace)
				}
				if next := p.NextRetry(); next < 2 || next > 3 {
					t.Fatalf("next retry-attempt %d outside [2, 3]", next)
				}
			})
		}
	}
}

// TestBrokerCountIsVouchedFor: JetStream's NumDelivered is the broker's,
// not a header, and makes the attempt final at the limit.
func TestBrokerCountIsVouchedFor(t *testing.T) {
	tracer, _ := newTracer(t, maxAttempts(3), trust(carrier.Untrusted))
	ctx, p := tracer.StartProcess(context.Background(), msgtrace.Delivery{
		Message: msgtrace.Message{Destination: "in"}, Carrier: propagation.MapCarrier{}, Deliveries: 3})
	fail := errors.New("x")
	defer p.End(ctx, fail, true)
	if p.Attempt != 3 || !p.Final(fail) {
		t.Fatalf("NumDelivered 3: attempt %d final %v, want 3 and final", p.Attempt, p.Final(fail))
	}
}

// deliverChain runs a message that always fails through Deliver with a
// republishing Settlement, handing each republished copy to the next
// tracer of tracers in turn (one tracer: one process; several: the
// retries land on other processes), and returns how often the handler ran
// before the message was given up.
func deliverChain(t *testing.T, headers propagation.MapCarrier, tracers ...*msgtrace.Tracer) int {
	t.Helper()
	calls := 0
	for i := 0; i < 100; i++ {
		tr := tracers[i%len(tracers)]
		var next propagation.MapCarrier
		out, err := tr.Deliver(context.Background(), context.Background(), msgtrace.Delivery{
			Message: msgtrace.Message{Destination: "work"}, Carrier: headers}, msgtrace.Settlement{
			Handle: func(context.Context) error { calls++; return errors.New("transient") },
			Ack:    func(context.Context) error { return nil }, AckOp: "ack",
			Republish: func(_ context.Context, r carrier.Retry) error {
				next = maps.Clone(headers)
				tr.Carrier().InjectRetry(next, r)
				return nil
			},
			GiveUp: func(context.Context, error) error { return nil }, GiveUpOp: "nack",
		})
		if err != nil {
			t.Fatal(err)
		}
		switch out {
		case msgtrace.GaveUp:
			return calls
		case msgtrace.Republished:
			headers = next
		default:
			t.Fatalf("outcome %v", out)
		}
	}
	t.Fatalf("not given up after %d attempts", calls)
	return 0
}

// TestRepublishedRetriesGetEveryAttempt: a republished retry counts on
// from the attempt this consumer recorded for the retry-previous it
// names; in one process a message is given up after exactly MaxAttempts
// attempts, whatever its headers claimed; when its retries land on other
// processes, which cannot vouch for each other's attempts, it still gets
// at least MaxAttempts and at most 2*MaxAttempts-1.
func TestRepublishedRetriesGetEveryAttempt(t *testing.T) {
	const max = 4
	forged := map[string]propagation.MapCarrier{
		"clean":          {},
		"claims last":    {"retry-attempt": "4"},
		"claims 3":       {"retry-attempt": "3"},
		"claims 2":       {"retry-attempt": "2", "retry-previous": "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01"},
		"claims too far": {"retry-attempt": "999"},
	}
	for name, h := range forged {
		for _, tr := range []carrier.Trust{carrier.Trusted, carrier.Untrusted} {
			t.Run(name+"/"+tr.String(), func(t *testing.T) {
				one, _ := newTracer(t, maxAttempts(max), trust(tr))
				if n := deliverChain(t, maps.Clone(h), one); n != max {
					t.Errorf("one process: %d attempts, want %d", n, max)
				}
				a, _ := newTracer(t, maxAttempts(max), trust(tr))
				b, _ := newTracer(t, maxAttempts(max), trust(tr))
				n := deliverChain(t, maps.Clone(h), a, b)
				if n < max || n > 2*max-1 {
					t.Errorf("two processes: %d attempts, want %d to %d", n, max, 2*max-1)
				}
				t.Logf("two processes taking turns: %d attempts", n)
			})
		}
	}
}

// TestRepublishedRetryWaitIgnoresAFuturePublishTime: the backoff a
// republished retry waits out is measured from its publish time, which the
// publisher sets; a time in the future must not hold the consumer up
// longer than the backoff itself.
func TestRepublishedRetryWaitIgnoresAFuturePublishTime(t *testing.T) {
	tracer, _ := newTracer(t, maxAttempts(3))
	c := propagation.MapCarrier{"retry-attempt": "2"}
	stop, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	out, err := tracer.Deliver(context.Background(), stop, msgtrace.Delivery{
		Message: msgtrace.Message{Destination: "retry"}, Carrier: c, PublishedAt: time.Now().Add(time.Hour)},
		msgtrace.Settlement{
			Handle: func(context.Context) error { return nil }, Ack: func(context.Context) error { return nil }, AckOp: "ack",
			Republish: func(context.Context, carrier.Retry) error { return nil },
		})
	if out != msgtrace.Succeeded || err != nil {
		t.Fatalf("outcome %v, %v after %v: the consumer waited for the publish time", out, err, time.Since(start))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("handled after %v, want within the 2ms backoff (bounded generously)", d)
	}
}

// TestUntrustedRetryStillLinksPrevious: an untrusted consumer takes no
// count from a retry, but still links the attempt retry-previous names.
func TestUntrustedRetryStillLinksPrevious(t *testing.T) {
	tracer, tel := newTracer(t, maxAttempts(3), trust(carrier.Untrusted))
	prev, _ := carrier.ParseTraceparent("00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01")
	c := propagation.MapCarrier{}
	tracer.Carrier().InjectRetry(c, carrier.Retry{Attempt: 2, Previous: prev})
	ctx, p := tracer.StartProcess(context.Background(), msgtrace.Delivery{Message: msgtrace.Message{Destination: "in"}, Carrier: c})
	p.End(ctx, nil, false)
	if p.Attempt != 1 {
		t.Fatalf("untrusted attempt %d from retry-attempt, want 1", p.Attempt)
	}
	s := spanByName(tel, "process in")[0]
	if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != prev.SpanID() {
		t.Fatalf("links %v, want one to retry-previous", s.Links())
	}
}
