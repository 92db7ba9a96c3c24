package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// sendSpansByID returns the ended send spans by their messaging.message.id,
// failing t if one id has more than one.
func sendSpansByID(t *testing.T, tel *testenv.Telemetry) map[string]trace.SpanContext {
	t.Helper()
	out := map[string]trace.SpanContext{}
	for _, s := range tel.Ended() {
		if s.SpanKind() != trace.SpanKindProducer {
			continue
		}
		v, ok := testenv.Attr(s, semconv.MessagingMessageIDKey)
		if !ok {
			continue
		}
		if _, dup := out[v.AsString()]; dup {
			t.Errorf("message %s has more than one send span", v.AsString())
		}
		out[v.AsString()] = s.SpanContext()
	}
	return out
}

// TestAttackConcurrentPublishersKeepEveryJourneyApart publishes from many
// goroutines through three Publishers at once (with confirms, without,
// and with OpenTelemetry's own propagators, which write other headers into
// the pooled tables), mixing PublishWithContext, deferred confirms waited
// in reverse order and mandatory messages the broker returns. Every
// goroutine has its own session and baggage of the same length, and a
// header table of its own that it changes between publishes. Every
// message that arrives, and every returned one, must carry exactly its own
// send span's traceparent, its own session and baggage and its own header
// values, and the caller's tables must be as the caller left them.
func TestAttackConcurrentPublishersKeepEveryJourneyApart(t *testing.T) {
	const workers, each = 6, 30
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "atkconc")
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	newPub := func(opts ...tracebridge.Option) *amqp.Publisher {
		_, pch := dial(t, url)
		p, err := amqp.NewPublisher(pch, append([]tracebridge.Option{tracebridge.WithTracerProvider(tel.TracerProvider)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	otelProp := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	pubs := []*amqp.Publisher{
		newPub(tracebridge.WithConfirms()),
		newPub(),
		newPub(tracebridge.WithConfirms(), tracebridge.WithPropagators(otelProp)),
	}
	confirms := []bool{true, false, true}
	unroutable := q + ".nobody"

	shared := amqp091.Publishing{Body: []byte("x"), Headers: amqp091.Table{"keep": "me"}}
	type returned struct {
		id, tp, snapshot string
		headers          amqp091.Table
	}
	var (
		mu       sync.Mutex
		returns  []returned
		routed   = map[string]int{} // message id -> worker
		failures []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, conf := pubs[w%len(pubs)], confirms[w%len(pubs)]
			m, _ := baggage.NewMember("k", fmt.Sprintf("v%d", w))
			bag, _ := baggage.New(m)
			ctx := baggage.ContextWithBaggage(carrier.ContextWithSession(context.Background(), fmt.Sprintf("sess-%d", w)), bag)
			own := amqp091.Table{"w": int32(w)}
			var deferred []*amqp.Confirmation
			for i := range each {
				id := fmt.Sprintf("%d/%d", w, i)
				own["i"] = int32(i) // the caller changes its table between publishes
				msg := shared
				if i%2 == 1 {
					msg.Headers = own
				}
				msg.MessageId = id
				switch {
				case conf && i%5 == 0:
					err := p.PublishWithContext(ctx, "", unroutable, true, false, msg)
					var re *amqp.ReturnedError
					if !errors.As(err, &re) {
						fail("%s: mandatory unroutable publish: %v, want *ReturnedError", id, err)
						continue
					}
					if re.Return.MessageId != id {
						fail("%s: returned message %q", id, re.Return.MessageId)
					}
					mu.Lock()
					returns = append(returns, returned{id: id, tp: amqp.Carrier(re.Return.Headers).Get("traceparent"),
						snapshot: fmt.Sprint(re.Return.Headers), headers: re.Return.Headers})
					mu.Unlock()
				case conf && i%3 == 0:
					c, err := p.PublishWithDeferredConfirm(ctx, "", q, true, false, msg)
					if err != nil {
						fail("%s: deferred publish: %v", id, err)
						continue
					}
					deferred = append(deferred, c)
					mu.Lock()
					routed[id] = w
					mu.Unlock()
				default:
					if err := p.PublishWithContext(ctx, "", q, i%4 == 0, false, msg); err != nil {
						fail("%s: publish: %v", id, err)
						continue
					}
					mu.Lock()
					routed[id] = w
					mu.Unlock()
				}
				if msg.Headers["i"] != nil && msg.Headers["i"] != int32(i) || len(own) != 2 || len(shared.Headers) != 1 {
					fail("%s: the publisher changed the caller's table: own %v shared %v", id, own, shared.Headers)
				}
			}
			for i := len(deferred) - 1; i >= 0; i-- {
				if err := deferred[i].Wait(context.Background()); err != nil {
					fail("worker %d: deferred confirm: %v", w, err)
				}
			}
		}()
	}
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}

	sends := sendSpansByID(t, tel)
	check := func(where, id string, h amqp091.Table, w int, i int, otelHeaders bool) {
		t.Helper()
		c := amqp.Carrier(h)
		sc, ok := sends[id]
		if !ok {
			t.Errorf("%s %s: no send span", where, id)
			return
		}
		if got, _ := carrier.ParseTraceparent(c.Get("traceparent")); got.SpanID() != sc.SpanID() || got.TraceID() != sc.TraceID() {
			t.Errorf("%s %s: traceparent %q is not its own send span %s", where, id, c.Get("traceparent"), sc.SpanID())
		}
		wantSess := fmt.Sprintf("sess-%d", w)
		if otelHeaders {
			// OpenTelemetry's propagators write no session-id header.
			if _, ok := h["session-id"]; ok {
				t.Errorf("%s %s: session-id header %v from another publisher's propagator", where, id, h["session-id"])
			}
		} else if got := c.Get("session-id"); got != wantSess {
			t.Errorf("%s %s: session-id %q, want %q", where, id, got, wantSess)
		}
		bag, err := baggage.Parse(c.Get("baggage"))
		if err != nil || bag.Member("k").Value() != fmt.Sprintf("v%d", w) {
			t.Errorf("%s %s: baggage %q, want k=v%d", where, id, c.Get("baggage"), w)
		}
		if i%2 == 1 {
			if h["w"] != int32(w) || h["i"] != int32(i) || h["keep"] != nil {
				t.Errorf("%s %s: user headers %v, want w=%d i=%d", where, id, h, w, i)
			}
		} else if h["keep"] != "me" || h["w"] != nil || h["i"] != nil {
			t.Errorf("%s %s: user headers %v, want keep=me alone", where, id, h)
		}
	}
	for _, r := range returns {
		var w, i int
		fmt.Sscanf(r.id, "%d/%d", &w, &i)
		check("returned", r.id, r.headers, w, i, w%len(pubs) == 2)
		if now := fmt.Sprint(r.headers); now != r.snapshot {
			t.Errorf("returned %s: headers changed after the publish returned: %s, then %s", r.id, r.snapshot, now)
		}
	}
	got := 0
	for {
		d, ok, err := ch.Get(q, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got++
		w, known := routed[d.MessageId]
		if !known {
			t.Errorf("message %q was not published routable", d.MessageId)
			continue
		}
		delete(routed, d.MessageId)
		var i int
		fmt.Sscanf(d.MessageId, "%d/%d", &w, &i)
		check("delivered", d.MessageId, d.Headers, w, i, w%len(pubs) == 2)
	}
	if len(routed) != 0 {
		t.Errorf("%d messages lost (got %d): %v", len(routed), got, routed)
	}
	for _, r := range returns {
		for _, s := range tel.Ended() {
			if s.SpanContext().Equal(sends[r.id]) && s.Status().Code != codes.Error {
				t.Errorf("returned %s: send span status %v, want Error", r.id, s.Status())
			}
		}
	}
}

// TestAttackFailedPublishesLeaveNothingInThePool runs, over and over on one
// goroutine (so the pooled table of one publish is the next one's), the
// publishes that fail or get trimmed: a header key over 255 bytes, caller
// headers over frame_max, the tracing headers dropped to fit, a stale
// tracestate overwritten with the empty one, and a closed channel. The
// normal publish after each must carry exactly its own headers, and each
// failure must reach the caller and the span.
func TestAttackFailedPublishesLeaveNothingInThePool(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "atkfail")
	conn, ch := dial(t, url)
	declare(t, ch, q, nil)
	pch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	p, err := amqp.NewPublisher(pch, tracebridge.WithTracerProvider(tel.TracerProvider),
		tracebridge.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := baggage.NewMember("big", strings.Repeat("b", 4000))
	bag, _ := baggage.New(m)
	ctx := baggage.ContextWithBaggage(carrier.ContextWithSession(context.Background(), "sess-fail"), bag)
	plain := carrier.ContextWithSession(context.Background(), "sess-ok")

	// The publisher's channel is not the one that reads: poll.
	get := func(what string) amqp091.Delivery {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			d, ok, err := ch.Get(q, true)
			if err != nil {
				t.Fatalf("%s: get: %v", what, err)
			}
			if ok {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no message", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	expectClean := func(round int, what string) {
		t.Helper()
		id := fmt.Sprintf("clean-%d-%s", round, what)
		if err := p.PublishWithContext(plain, "", q, false, false, amqp091.Publishing{MessageId: id, Headers: amqp091.Table{"n": int32(round)}}); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		d := get(id)
		if d.MessageId != id {
			t.Fatalf("%s: got message %q", id, d.MessageId)
		}
		want := map[string]bool{"n": true, "traceparent": true, "baggage": true, "session-id": true}
		for k := range d.Headers {
			if !want[k] {
				t.Errorf("%s: header %.40q left over from an earlier publish: %.60v", id, k, d.Headers[k])
			}
		}
		c := amqp.Carrier(d.Headers)
		if c.Get("session-id") != "sess-ok" || c.Get("baggage") != "session.id=sess-ok" || d.Headers["n"] != int32(round) {
			t.Errorf("%s: headers %.200v", id, d.Headers)
		}
	}
	for round := range 8 {
		// A header key amqp091 would truncate.
		err := p.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{
			Headers: amqp091.Table{strings.Repeat("k", 256): "v", "x-filler": "y"}})
		if !errors.Is(err, amqp.ErrShortStringTooLong) {
			t.Fatalf("round %d: overlong key: %v", round, err)
		}
		expectClean(round, "shortstr")

		// The caller's own headers over frame_max.
		err = p.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{
			Headers: amqp091.Table{"huge": strings.Repeat("h", 140000)}})
		if !errors.Is(err, amqp.ErrFrameTooLarge) {
			t.Fatalf("round %d: huge headers: %v", round, err)
		}
		expectClean(round, "toolarge")

		// The caller's headers fit, the baggage does not: it is dropped.
		msg := padTo(t, amqp091.Publishing{MessageId: fmt.Sprintf("trim-%d", round)}, 131072-300)
		if err := p.PublishWithContext(ctx, "", q, false, false, msg); err != nil {
			t.Fatalf("round %d: trimmed publish: %v", round, err)
		}
		d := get("trimmed")
		if _, ok := d.Headers["baggage"]; ok {
			t.Errorf("round %d: baggage not dropped from an over-long message", round)
		}
		if _, ok := carrier.ParseTraceparent(amqp.Carrier(d.Headers).Get("traceparent")); !ok {
			t.Errorf("round %d: trimmed message lost its traceparent", round)
		}
		expectClean(round, "trimmed")

		// A stale tracestate without a traceparent: overwritten with "".
		if err := p.PublishWithContext(plain, "", q, false, false, amqp091.Publishing{MessageId: "stale",
			Headers: amqp091.Table{"tracestate": "vendor=stale"}}); err != nil {
			t.Fatal(err)
		}
		d = get("stale")
		if v, ok := d.Headers["tracestate"]; !ok || v != "" {
			t.Errorf("round %d: stale tracestate became %#v, want \"\"", round, v)
		}
		expectClean(round, "stale")
	}

	// A closed channel: the publish fails, the span says so, and a
	// publisher on another channel is unaffected.
	if err := pch.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{MessageId: "closed", Headers: amqp091.Table{"x": "y"}}); !errors.Is(err, amqp.ErrDisconnected) {
		t.Fatalf("publish on a closed channel: %v, want ErrDisconnected", err)
	}
	p2ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	p2, err := amqp.NewPublisher(p2ch, tracebridge.WithTracerProvider(tel.TracerProvider))
	if err != nil {
		t.Fatal(err)
	}
	p = p2
	expectClean(99, "closed")
	sends := 0
	for _, s := range tel.Named("send " + q) {
		sends++
		if v, _ := testenv.Attr(s, semconv.MessagingMessageIDKey); v.AsString() == "closed" && s.Status().Code != codes.Error {
			t.Errorf("the closed channel's send span has status %v", s.Status())
		}
	}
	if sends != 8*8+2 {
		t.Errorf("%d send spans, want %d", sends, 8*8+2)
	}
}

// TestAttackWaitTwiceKeepsOtherReturns waits twice on one Confirmation, as
// its documentation allows ("exactly once or more"), of a forwarded
// mandatory message the broker returns; the same forwarded message (same
// traceparent, same message id: a relay that sends it twice) is published
// again and returned too. The second Wait must not take the other
// publish's return: that publish must still report the return, or a
// message the broker dropped is reported delivered.
func TestAttackWaitTwiceKeepsOtherReturns(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "atkwait")
	_, ch := dial(t, url)
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	msg := amqp091.Publishing{MessageId: "relayed", Headers: amqp091.Table{"traceparent": validTP}}
	unroutable := q + ".nobody"
	first, err := p.PublishWithDeferredConfirm(ctx, "", unroutable, true, false, msg)
	if err != nil {
		t.Fatal(err)
	}
	second, err := p.PublishWithDeferredConfirm(ctx, "", unroutable, true, false, msg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-second.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("no confirm")
	}
	var re *amqp.ReturnedError
	for i := range 2 {
		if err := first.Wait(ctx); !errors.As(err, &re) {
			t.Fatalf("first publish, Wait %d: %v, want *ReturnedError", i+1, err)
		}
	}
	if err := second.Wait(ctx); !errors.As(err, &re) {
		t.Fatalf("second publish: Wait = %v, want *ReturnedError: the broker returned it", err)
	}
}

// TestAttackConcurrentWaitsAgree waits on one returned Confirmation from
// several goroutines at once: they must all see the return, and the send
// span must end once.
func TestAttackConcurrentWaitsAgree(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "atkwaits")
	_, ch := dial(t, url)
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		c, err := p.PublishWithDeferredConfirm(context.Background(), "", q+".nobody", true, false,
			amqp091.Publishing{MessageId: fmt.Sprint(round)})
		if err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 4)
		for range 4 {
			go func() { errs <- c.Wait(context.Background()) }()
		}
		for range 4 {
			var re *amqp.ReturnedError
			if err := <-errs; !errors.As(err, &re) {
				t.Fatalf("round %d: a concurrent Wait got %v, want *ReturnedError", round, err)
			}
		}
	}
	if n := len(tel.Named("send " + q + ".nobody")); n != 20 {
		t.Errorf("%d send spans ended, want 20", n)
	}
}
