package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// seen is what a handler observed for one message.
type seen struct {
	session, tenant string
	span            trace.SpanContext
}

func TestContinuity10kMessages100Sessions(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "continuity")
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	const total, sessions = 10000, 100

	var mu sync.Mutex
	got := make(map[string]seen, total)
	c := amqp.NewConsumer(url, q, nil, func(ctx context.Context, d amqp091.Delivery) error {
		s := seen{session: carrier.SessionFromContext(ctx), tenant: baggage.FromContext(ctx).Member("tenant").Value(),
			span: trace.SpanContextFromContext(ctx)}
		mu.Lock()
		got[d.MessageId] = s
		mu.Unlock()
		return nil
	}, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConcurrency(16))
	stop := runConsumer(t, c.Run)

	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for s := range sessions {
		wg.Go(func() {
			sess := fmt.Sprintf("session-%03d", s)
			m, _ := baggage.NewMember("tenant", "t"+strconv.Itoa(s))
			b, _ := baggage.New(m)
			ctx := baggage.ContextWithBaggage(carrier.ContextWithSession(context.Background(), sess), b)
			confs := make([]*amqp.Confirmation, 0, total/sessions)
			for i := range total / sessions {
				c, err := p.PublishWithDeferredConfirm(ctx, "", q, false, false, amqp091.Publishing{
					MessageId: fmt.Sprintf("%d/%d", s, i), DeliveryMode: amqp091.Persistent, Body: []byte("x")})
				if err != nil {
					t.Error(err)
					return
				}
				confs = append(confs, c)
			}
			for _, c := range confs {
				if err := c.Wait(context.Background()); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	testenv.WaitFor(t, "all messages handled", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == total
	})
	if err := stop(); err != nil {
		t.Fatalf("consumer: %v", err)
	}

	sends := map[string]sdktrace.ReadOnlySpan{} // message id -> send span
	for _, s := range tel.Named("send " + q) {
		id, _ := attr(s, "messaging.message.id")
		sends[id] = s
	}
	procs := tel.Named("process " + q)
	if len(sends) != total || len(procs) != total {
		t.Fatalf("%d send and %d process spans, want %d each", len(sends), len(procs), total)
	}
	bad := 0
	for _, pr := range procs {
		id, _ := attr(pr, "messaging.message.id")
		snd, ok := sends[id]
		var sIdx int
		fmt.Sscanf(id, "%d/", &sIdx)
		wantSess, wantTenant := fmt.Sprintf("session-%03d", sIdx), "t"+strconv.Itoa(sIdx)
		sess, _ := attr(pr, "session.id")
		h := got[id]
		switch {
		case !ok:
			t.Errorf("process span for %s has no send span", id)
		case pr.Parent().SpanID() != snd.SpanContext().SpanID() || pr.SpanContext().TraceID() != snd.SpanContext().TraceID():
			bad++
		case sess != wantSess || h.session != wantSess || h.tenant != wantTenant:
			t.Errorf("%s: span session %q, handler session %q tenant %q; want %q %q", id, sess, h.session, h.tenant, wantSess, wantTenant)
		case !h.span.Equal(pr.SpanContext()):
			t.Errorf("%s: handler context is not the process span", id)
		}
	}
	if bad != 0 {
		t.Errorf("%d of %d process spans not parented on their send span", bad, total)
	}
}

// failing returns a handler that fails the first n attempts of every
// message and records the attempts.
func TestRetriesLinkedThroughDelayQueue(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "retry")
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	const msgs = 4
	var mu sync.Mutex
	calls := map[string]int{}
	done := atomic.Int32{}
	c := amqp.NewConsumer(url, q, nil, func(ctx context.Context, d amqp091.Delivery) error {
		mu.Lock()
		calls[d.MessageId]++
		n := calls[d.MessageId]
		mu.Unlock()
		if n <= 2 {
			return fmt.Errorf("attempt %d of %s fails", n, d.MessageId)
		}
		done.Add(1)
		return nil
	}, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithRetry(3, 300*time.Millisecond, 300*time.Millisecond),
		tracebridge.WithConcurrency(4))
	runConsumer(t, c.Run)
	p, _ := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	for i := range msgs {
		if err := p.PublishWithContext(context.Background(), "", q, false, false,
			amqp091.Publishing{MessageId: "r" + strconv.Itoa(i), Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, "retried messages to succeed", 30*time.Second, func() bool { return done.Load() == msgs })
	testenv.WaitFor(t, "spans to end", 5*time.Second, func() bool { return len(tel.Named("process "+q)) == 3*msgs })

	byMsg := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range tel.Named("process " + q) {
		id, _ := attr(s, "messaging.message.id")
		byMsg[id] = append(byMsg[id], s)
	}
	var totalDelay time.Duration
	for id, spans := range byMsg {
		if len(spans) != 3 {
			t.Fatalf("%s: %d attempt spans, want 3", id, len(spans))
		}
		byAttempt := map[int]sdktrace.ReadOnlySpan{}
		for _, s := range spans {
			a, _ := attr(s, "tracebridge.attempt")
			n, _ := strconv.Atoi(a)
			byAttempt[n] = s
		}
		for n := 1; n <= 3; n++ {
			s := byAttempt[n]
			if s == nil {
				t.Fatalf("%s: no attempt %d", id, n)
			}
			if s.SpanContext().TraceID() != byAttempt[1].SpanContext().TraceID() {
				t.Errorf("%s attempt %d is on another trace", id, n)
			}
			wantStatus := codes.Unset // retried failures are not errors; success is not
			if s.Status().Code != wantStatus {
				t.Errorf("%s attempt %d status %v, want Unset", id, n, s.Status().Code)
			}
			if n == 1 {
				continue
			}
			prev := byAttempt[n-1]
			linked := false
			for _, l := range s.Links() {
				if l.SpanContext.SpanID() == prev.SpanContext().SpanID() {
					linked = true
				}
			}
			if !linked {
				t.Errorf("%s: attempt %d does not link to attempt %d", id, n, n-1)
			}
			// The delay queue held the message at least the recorded delay.
			ms, ok := attr(prev, "tracebridge.retry.delay_ms")
			if !ok {
				t.Fatalf("%s attempt %d records no retry delay", id, n-1)
			}
			delay, _ := strconv.Atoi(ms)
			gap := s.StartTime().Sub(prev.StartTime())
			if gap < time.Duration(delay)*time.Millisecond {
				t.Errorf("%s: attempt %d started %s after attempt %d, less than its delay %dms", id, n, gap, n-1, delay)
			}
			totalDelay += time.Duration(delay) * time.Millisecond
		}
	}
	// Full jitter draws each delay from [0, 300ms]; eight draws summing to
	// nothing would mean the TTL is not applied at all.
	if totalDelay < 100*time.Millisecond {
		t.Errorf("total retry delay %s: the delay queue does not delay", totalDelay)
	}
}

func TestFinalFailureDeadLettered(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "dl")
	dlq := q + ".dlq"
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	declare(t, ch, dlq, nil) // the consumer declares it too, but asynchronously
	var attempts, permanentCalls, panics atomic.Int32
	c := amqp.NewConsumer(url, q, nil, func(ctx context.Context, d amqp091.Delivery) error {
		switch d.MessageId {
		case "permanent":
			permanentCalls.Add(1)
			return tracebridge.Permanent(errors.New("cannot decode"))
		case "panics":
			panics.Add(1)
			panic("boom")
		}
		attempts.Add(1)
		return errors.New("always\nfails")
	}, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithRetry(2, 10*time.Millisecond, 20*time.Millisecond),
		tracebridge.WithDeadLetter(dlq), tracebridge.WithConcurrency(2))
	runConsumer(t, c.Run)
	p, _ := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	ctx := carrier.ContextWithSession(context.Background(), "sess-dl")
	for _, id := range []string{"fails", "permanent", "panics"} {
		if err := p.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{MessageId: id, Body: []byte(id),
			Headers: amqp091.Table{"custom": "kept"}}); err != nil {
			t.Fatal(err)
		}
	}
	dead := map[string]amqp091.Delivery{}
	testenv.WaitFor(t, "three dead letters", 20*time.Second, func() bool {
		d, ok, err := ch.Get(dlq, true)
		if err != nil {
			t.Fatalf("get dlq: %v", err)
		}
		if ok {
			dead[d.MessageId] = d
		}
		return len(dead) == 3
	})
	if attempts.Load() != 2 || permanentCalls.Load() != 1 || panics.Load() != 2 {
		t.Errorf("attempts: failing %d (want 2), permanent %d (want 1), panicking %d (want 2)",
			attempts.Load(), permanentCalls.Load(), panics.Load())
	}
	sends := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range tel.Named("send " + q) {
		id, _ := attr(s, "messaging.message.id")
		sends[id] = s
	}
	testenv.WaitFor(t, "final spans", 5*time.Second, func() bool { return len(tel.Named("process "+q)) == 5 })
	finals := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range tel.Named("process " + q) {
		if v, _ := attr(s, "tracebridge.retry.final"); v == "true" {
			id, _ := attr(s, "messaging.message.id")
			finals[id] = s
		}
	}
	for id, want := range map[string]string{"fails": "2", "permanent": "1", "panics": "2"} {
		d := dead[id]
		h := amqp.Carrier(d.Headers)
		if h.Get("dead-letter-attempts") != want {
			t.Errorf("%s: dead-letter-attempts %q, want %s", id, h.Get("dead-letter-attempts"), want)
		}
		if h.Get("dead-letter-source") != q {
			t.Errorf("%s: dead-letter-source %q, want %q", id, h.Get("dead-letter-source"), q)
		}
		reason := h.Get("dead-letter-reason")
		if reason == "" || strings.ContainsAny(reason, "\n\r") {
			t.Errorf("%s: dead-letter-reason %q, want one non-empty line", id, reason)
		}
		if h.Get("custom") != "kept" || h.Get("session-id") != "sess-dl" || string(d.Body) != id {
			t.Errorf("%s: original headers or body lost: %v %q", id, d.Headers, d.Body)
		}
		if got, want := h.Get("traceparent"), carrier.FormatTraceparent(sends[id].SpanContext()); got != want {
			t.Errorf("%s: dead letter's traceparent %q, want the original creation context %q", id, got, want)
		}
		f := finals[id]
		if f == nil {
			t.Fatalf("%s: no final process span", id)
		}
		if got := h.Get("retry-previous"); got != carrier.FormatTraceparent(f.SpanContext()) {
			t.Errorf("%s: retry-previous %q does not name the last attempt", id, got)
		}
		if f.Status().Code != codes.Error {
			t.Errorf("%s: final attempt status %v, want Error", id, f.Status().Code)
		}
	}
	if !strings.Contains(amqp.Carrier(dead["panics"].Headers).Get("dead-letter-reason"), "boom") {
		t.Errorf("panic reason lost: %q", amqp.Carrier(dead["panics"].Headers).Get("dead-letter-reason"))
	}
}

func TestBadHeadersReachHandler(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "bad")
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	bigBaggage := strings.Repeat("k=v,", 5000) + "tenant=x"
	inputs := []amqp091.Table{
		{"traceparent": int64(42), "tracestate": amqp091.Table{"a": "b"}, "baggage": nil, "session-id": []any{"x"}},
		{"traceparent": []byte{0xff, 0xfe, 0x00, 0x01}, "baggage": []byte("\x00\xff=%%%")},
		{"traceparent": "00-zzzz-not-a-trace-01", "tracestate": "===,,,"},
		{"traceparent": "00-00000000000000000000000000000000-0000000000000000-01"},
		{"baggage": bigBaggage, "session-id": strings.Repeat("s", 4096)},
		{"retry-attempt": "-7", "retry-previous": "garbage", "x-death": "not a list", "x-delivery-count": amqp091.Table{}},
		{"retry-attempt": int64(3), "x-death": []any{amqp091.Table{"count": "many"}, "junk", nil}},
		{"x-death": []any{amqp091.Table{"count": int64(2), "queue": "q", "reason": "rejected"}}},
	}
	var handled sync.Map
	c := amqp.NewConsumer(url, q, nil, func(ctx context.Context, d amqp091.Delivery) error {
		if baggage.FromContext(ctx).Len() > 64 {
			return tracebridge.Permanent(errors.New("oversized baggage reached the handler"))
		}
		handled.Store(d.MessageId, trace.SpanContextFromContext(ctx))
		return nil
	}, tracebridge.WithTracerProvider(tel.TracerProvider))
	runConsumer(t, c.Run)
	for i, h := range inputs {
		if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{
			MessageId: strconv.Itoa(i), Headers: h, Body: []byte("x")}); err != nil {
			t.Fatalf("raw publish %d: %v", i, err)
		}
	}
	testenv.WaitFor(t, "every bad message handled", 20*time.Second, func() bool {
		n := 0
		handled.Range(func(any, any) bool { n++; return true })
		return n == len(inputs)
	})
	testenv.WaitFor(t, "process spans", 5*time.Second, func() bool { return len(tel.Named("process "+q)) == len(inputs) })
	for _, s := range tel.Named("process " + q) {
		if s.Parent().IsValid() {
			id, _ := attr(s, "messaging.message.id")
			t.Errorf("message %s with invalid trace headers got a parent %v", id, s.Parent())
		}
		id, _ := attr(s, "messaging.message.id")
		a, _ := attr(s, "tracebridge.attempt")
		// x-death count 2 claims attempt 3, but a header alone shows at
		// most MaxAttempts-1 (here 2): it never makes an attempt the last.
		if id == "7" && a != "2" {
			t.Errorf("x-death count 2 should show attempt 2 (capped below the last), got %s", a)
		}
		if id != "7" && id != "6" && a != "1" {
			t.Errorf("message %s: attempt %s from malformed counters, want 1", id, a)
		}
	}
}

func TestLowLevelStartProcessEndsOnAck(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "lowlevel")
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	p, _ := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	for _, id := range []string{"ack", "nack"} {
		if err := p.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{MessageId: id}); err != nil {
			t.Fatal(err)
		}
	}
	tr := amqp.NewTracer(tracebridge.WithTracerProvider(tel.TracerProvider))
	for range 2 {
		raw, ok, err := ch.Get(q, false)
		if err != nil || !ok {
			t.Fatalf("get: %v %v", ok, err)
		}
		ctx, d := tr.StartProcess(context.Background(), raw)
		if !trace.SpanContextFromContext(ctx).IsValid() {
			t.Fatal("no span in the handler context")
		}
		if n := len(tel.Named("process " + q)); n != 0 && raw.MessageId == "ack" {
			t.Fatalf("process span ended before the settle")
		}
		if raw.MessageId == "ack" {
			// Settling through the embedded amqp091.Delivery ends the span.
			if err := d.Delivery.Ack(false); err != nil {
				t.Fatal(err)
			}
		} else {
			d.Fail(errors.New("handler failed"))
			if err := d.Nack(false, false); err != nil {
				t.Fatal(err)
			}
		}
		d.End(nil, false) // after a settle: no second end
	}
	spans := tel.Named("process " + q)
	if len(spans) != 2 {
		t.Fatalf("%d process spans, want 2", len(spans))
	}
	for _, s := range spans {
		id, _ := attr(s, "messaging.message.id")
		var settled bool
		for _, e := range s.Events() {
			if e.Name == "settle" {
				settled = true
			}
		}
		if !settled {
			t.Errorf("%s: no settle event", id)
		}
		if wantErr := id == "nack"; (s.Status().Code == codes.Error) != wantErr {
			t.Errorf("%s: status %v", id, s.Status())
		}
		if !s.Parent().IsValid() {
			t.Errorf("%s: not parented on its send span", id)
		}
	}
	if _, ok, _ := ch.Get(q, false); ok {
		t.Error("queue not empty: a settle did not reach the broker")
	}
}
