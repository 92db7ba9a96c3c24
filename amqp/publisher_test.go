package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

func TestPublisherSendSpanConfirmedAndHeaders(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "pub")
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	orig := amqp091.Table{"keep": "me"}
	ctx := carrier.ContextWithSession(context.Background(), "sess-pub-1")
	if err := p.PublishWithContext(ctx, "", q, true, false, amqp091.Publishing{MessageId: "m1", Body: []byte("hi"), Headers: orig}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if len(orig) != 1 {
		t.Errorf("publisher modified the caller's headers: %v", orig)
	}
	spans := tel.Named("send " + q)
	if len(spans) != 1 {
		t.Fatalf("got %d send spans, want 1", len(spans))
	}
	s := spans[0]
	if s.SpanKind() != trace.SpanKindProducer {
		t.Errorf("kind %v, want producer", s.SpanKind())
	}
	for k, want := range map[string]string{
		"messaging.system": "rabbitmq", "messaging.destination.name": q, "messaging.message.id": "m1",
		"messaging.rabbitmq.destination.routing_key": q, "messaging.operation.type": "send", "session.id": "sess-pub-1",
	} {
		if got, _ := attr(s, k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	d, ok, err := ch.Get(q, true)
	if err != nil || !ok {
		t.Fatalf("get: ok=%v err=%v", ok, err)
	}
	tp := amqp.Carrier(d.Headers).Get("traceparent")
	if want := carrier.FormatTraceparent(s.SpanContext()); tp != want {
		t.Errorf("traceparent %q, want the send span %q", tp, want)
	}
	if got := amqp.Carrier(d.Headers).Get("session-id"); got != "sess-pub-1" {
		t.Errorf("session-id header %q", got)
	}
	if got := amqp.Carrier(d.Headers).Get("keep"); got != "me" {
		t.Errorf("original header lost: %q", got)
	}
}

func TestPublisherReturnedAndNackedAreErrors(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	full := uniqueQueue(t, url, "full")
	_, ch := dial(t, url)
	// A queue that holds nothing and rejects overflow makes the broker nack.
	declare(t, ch, full, amqp091.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"})
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	unroutable := full + ".nobody"
	err = p.PublishWithContext(ctx, "", unroutable, true, false, amqp091.Publishing{Body: []byte("x")})
	var re *amqp.ReturnedError
	if !errors.As(err, &re) || re.Return.ReplyCode != amqp091.NoRoute || re.Return.RoutingKey != unroutable {
		t.Fatalf("unroutable mandatory publish: err = %v, want *ReturnedError NO_ROUTE for %q", err, unroutable)
	}
	// The same publish without mandatory is silently dropped by the broker,
	// and confirmed: no error.
	if err := p.PublishWithContext(ctx, "", unroutable, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatalf("non-mandatory unroutable publish: %v", err)
	}
	err = p.PublishWithContext(ctx, "", full, true, false, amqp091.Publishing{Body: []byte("x")})
	if !errors.Is(err, amqp.ErrNacked) {
		t.Fatalf("publish to full queue: err = %v, want ErrNacked", err)
	}
	if err == nil || !contains(err.Error(), full) {
		t.Errorf("error %q does not name the routing key", err)
	}
	// A routable mandatory publish to a normal queue right after: its ack
	// must not pick up an earlier return.
	ok := uniqueQueue(t, url, "ok")
	declare(t, ch, ok, nil)
	if err := p.PublishWithContext(ctx, "", ok, true, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatalf("routable publish: %v", err)
	}

	spans := append(tel.Named("send "+unroutable), tel.Named("send "+full)...)
	if len(spans) != 3 {
		t.Fatalf("got %d send spans, want 3", len(spans))
	}
	errSpans := 0
	for _, s := range spans {
		if s.Status().Code == codes.Error {
			errSpans++
		}
	}
	if errSpans != 2 {
		t.Errorf("%d send spans with status Error, want 2 (returned, nacked)", errSpans)
	}
}

func TestPublisherDeferredConfirm(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "deferred")
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	confs := make([]*amqp.Confirmation, 0, n)
	for range n {
		c, err := p.PublishWithDeferredConfirm(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		confs = append(confs, c)
	}
	for _, c := range confs {
		if err := c.Wait(context.Background()); err != nil {
			t.Fatalf("wait: %v", err)
		}
		if err := c.Wait(context.Background()); err != nil {
			t.Fatalf("second wait: %v", err)
		}
	}
	if got := len(tel.Named("send " + q)); got != n {
		t.Errorf("%d send spans ended, want %d (each exactly once)", got, n)
	}
}

func TestPublisherDisconnected(t *testing.T) {
	url := testenv.AMQP(t)
	_, ch := dial(t, url)
	p, err := amqp.NewPublisher(ch, tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	_ = ch.Close()
	err = p.PublishWithContext(context.Background(), "", "anything", false, false, amqp091.Publishing{})
	if !errors.Is(err, amqp.ErrDisconnected) {
		t.Fatalf("publish on closed channel: %v, want ErrDisconnected", err)
	}

	// A dialed publisher comes back after its channel is killed by a
	// channel error (publishing to a missing exchange closes the channel).
	dp, err := amqp.DialPublisher(url, tracebridge.WithConfirms(), tracebridge.WithReconnectWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	err = dp.PublishWithContext(context.Background(), "tb.no-such-exchange", "k", false, false, amqp091.Publishing{})
	if err == nil {
		t.Fatal("publish to a missing exchange succeeded")
	}
	q := uniqueQueue(t, url, "redial")
	_, ch2 := dial(t, url)
	declare(t, ch2, q, nil)
	if err := dp.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatalf("publish after the channel was replaced: %v", err)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestPublisherWithoutConfirmsSpanAndAllocs covers the publish that waits
// for no confirmation: its send span keeps every attribute (the routing
// key among them), the caller's headers stay untouched, and tracing it
// with this recording SDK costs at most 25 allocations above the raw
// channel's publish of the same message (31 under the race detector); a
// Confirmation per publish made it 30 (35), and a new copy of the header
// table with a new interface value for every header 29. Issue 14 holds
// tracebridge to the allocations of a hand-written wrapper.
func TestPublisherWithoutConfirmsSpanAndAllocs(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "pubnc")
	_, ch := dial(t, url)
	declare(t, ch, q, amqp091.Table{"x-max-length": int32(100)})
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider))
	if err != nil {
		t.Fatal(err)
	}
	orig := amqp091.Table{"keep": "me"}
	ctx := carrier.ContextWithSession(context.Background(), "sess-pub-nc")
	msg := amqp091.Publishing{MessageId: "m1", Body: []byte("hi"), Headers: orig}
	if err := p.PublishWithContext(ctx, "", q, false, false, msg); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if len(orig) != 1 {
		t.Errorf("publisher modified the caller's headers: %v", orig)
	}
	spans := tel.Named("send " + q)
	if len(spans) != 1 {
		t.Fatalf("got %d send spans, want 1", len(spans))
	}
	for k, want := range map[string]string{
		"messaging.system": "rabbitmq", "messaging.destination.name": q, "messaging.message.id": "m1",
		"messaging.rabbitmq.destination.routing_key": q, "messaging.operation.type": "send", "session.id": "sess-pub-nc",
		"messaging.message.body.size": "2",
	} {
		if got, _ := attr(spans[0], k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}

	_, rawCh := dial(t, url)
	raw := testing.AllocsPerRun(200, func() {
		if err := rawCh.PublishWithContext(ctx, "", q, false, false, msg); err != nil {
			t.Fatal(err)
		}
	})
	traced := testing.AllocsPerRun(200, func() {
		if err := p.PublishWithContext(ctx, "", q, false, false, msg); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("allocations per publish: raw %.1f, traced %.1f", raw, traced)
	limit := 25.0
	if testenv.RaceEnabled {
		limit = 31
	}
	if traced-raw > limit+0.5 {
		t.Errorf("tracing a publish without confirms costs %.1f allocations, want at most %.0f", traced-raw, limit)
	}
}

// TestPublisherReusedHeaderTables covers the pooled header table every
// publish sends in place of the caller's: a header of one message never
// reaches the next, the journey headers follow each message's own
// context when sessions alternate, and a forwarded traceparent is kept.
func TestPublisherReusedHeaderTables(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "pubreuse")
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider))
	if err != nil {
		t.Fatal(err)
	}
	const forwarded = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	type pub struct {
		session string
		headers amqp091.Table
	}
	pubs := []pub{
		{"sess-a", amqp091.Table{"only-first": "x", "n": int32(1)}},
		{"sess-b", nil},
		{"sess-a", amqp091.Table{"n": int32(3)}},
		{"", amqp091.Table{"traceparent": forwarded}},
		{"sess-b", nil},
	}
	for i, m := range pubs {
		ctx := context.Background()
		if m.session != "" {
			ctx = carrier.ContextWithSession(ctx, m.session)
		}
		if err := p.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{MessageId: fmt.Sprint(i), Headers: m.headers}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if got := pubs[0].headers; len(got) != 2 {
		t.Errorf("publisher modified the caller's headers: %v", got)
	}
	for i, m := range pubs {
		d, ok, err := ch.Get(q, true)
		if err != nil || !ok {
			t.Fatalf("get %d: ok=%v err=%v", i, ok, err)
		}
		h := amqp.Carrier(d.Headers)
		if _, ok := d.Headers["only-first"]; ok != (i == 0) {
			t.Errorf("message %d: only-first present=%v", i, ok)
		}
		if got := h.Get("session-id"); got != m.session {
			t.Errorf("message %d: session-id %q, want %q", i, got, m.session)
		}
		if got, want := h.Get("baggage"), "session.id="+m.session; (m.session == "" && got != "") || (m.session != "" && got != want) {
			t.Errorf("message %d: baggage %q, want %q", i, got, want)
		}
		tp := h.Get("traceparent")
		switch {
		case i == 3 && tp != forwarded:
			t.Errorf("message %d: forwarded traceparent became %q", i, tp)
		case i != 3 && (tp == "" || tp == forwarded):
			t.Errorf("message %d: traceparent %q", i, tp)
		}
		if n, ok := d.Headers["n"]; ok != (m.headers["n"] != nil) || (ok && n != m.headers["n"]) {
			t.Errorf("message %d: n = %v, want %v", i, n, m.headers["n"])
		}
	}
}

// TestPublisherWithConfirmsAllocs bounds what tracing costs a publish that
// waits for the broker's confirmation, above the raw channel's deferred
// confirm and wait: PublishWithContext's Confirmation lives on its stack,
// so it costs what a publish without confirms costs (see
// TestPublisherWithoutConfirmsSpanAndAllocs).
func TestPublisherWithConfirmsAllocs(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "pubcallocs")
	_, ch := dial(t, url)
	declare(t, ch, q, amqp091.Table{"x-max-length": int32(100)})
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	_, rawCh := dial(t, url)
	if err := rawCh.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx := carrier.ContextWithSession(context.Background(), "sess-pub-c")
	msg := amqp091.Publishing{MessageId: "m1", Body: []byte("hi"), Headers: amqp091.Table{"keep": "me"}}
	raw := testing.AllocsPerRun(200, func() {
		dc, err := rawCh.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false, msg)
		if err != nil || !dc.Wait() {
			t.Fatalf("raw publish: %v", err)
		}
	})
	traced := testing.AllocsPerRun(200, func() {
		if err := p.PublishWithContext(ctx, "", q, false, false, msg); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("allocations per confirmed publish: raw %.1f, traced %.1f", raw, traced)
	limit := 25.0
	if testenv.RaceEnabled {
		limit = 31
	}
	if traced-raw > limit+0.5 {
		t.Errorf("tracing a confirmed publish costs %.1f allocations, want at most %.0f", traced-raw, limit)
	}
}

// TestPublisherConcurrentPublishesKeepTheirOwnHeaders publishes one shared
// Publishing from several goroutines, each under its own session: the
// pooled header tables never mix one publish's journey into another's.
func TestPublisherConcurrentPublishesKeepTheirOwnHeaders(t *testing.T) {
	const workers, each = 6, 40
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "pubconc")
	_, ch := dial(t, url)
	declare(t, ch, q, nil)
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	shared := amqp091.Publishing{Body: []byte("x"), Headers: amqp091.Table{"keep": "me"}}
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			ctx := carrier.ContextWithSession(context.Background(), fmt.Sprintf("sess-%d", w))
			for i := range each {
				msg := shared
				msg.MessageId = fmt.Sprintf("%d/%d", w, i)
				if err := p.PublishWithContext(ctx, "", q, false, false, msg); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if len(shared.Headers) != 1 {
		t.Errorf("publisher modified the shared headers: %v", shared.Headers)
	}
	for range workers * each {
		d, ok, err := ch.Get(q, true)
		if err != nil || !ok {
			t.Fatalf("get: ok=%v err=%v", ok, err)
		}
		var w, i int
		if _, err := fmt.Sscanf(d.MessageId, "%d/%d", &w, &i); err != nil {
			t.Fatalf("message id %q: %v", d.MessageId, err)
		}
		h := amqp.Carrier(d.Headers)
		want := fmt.Sprintf("sess-%d", w)
		if h.Get("session-id") != want || h.Get("baggage") != "session.id="+want || h.Get("keep") != "me" {
			t.Errorf("message %s: headers %v, want session %s", d.MessageId, d.Headers, want)
		}
		if _, ok := carrier.ParseTraceparent(h.Get("traceparent")); !ok {
			t.Errorf("message %s: traceparent %q", d.MessageId, h.Get("traceparent"))
		}
	}
}
