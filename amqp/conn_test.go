package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// A consumer over the caller's connection keeps the journey and retries
// like one that dials its own, and leaves the caller's connection and
// channel as they were when it stops.
func TestConsumerOnKeepsJourneyAndLeavesConnectionOpen(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "on")
	conn, ch := dial(t, url)
	declare(t, ch, q, nil)

	type got struct {
		attempt int
		session string
		trace   trace.TraceID
	}
	var mu sync.Mutex
	var seen []got
	c := amqp.NewConsumerOn(conn, nil, q, nil, func(ctx context.Context, d amqp091.Delivery) error {
		mu.Lock()
		seen = append(seen, got{len(seen) + 1, carrier.SessionFromContext(ctx), trace.SpanContextFromContext(ctx).TraceID()})
		n := len(seen)
		mu.Unlock()
		if n == 1 {
			return errors.New("first attempt fails") // through the delay queue
		}
		return nil
	}, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithRetry(3, 50*time.Millisecond, 100*time.Millisecond))
	stop := runConsumer(t, c.Run)

	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	ctx, span := tel.TracerProvider.Tracer("test").Start(carrier.ContextWithSession(context.Background(), "s-on"), "request")
	if err := p.PublishWithContext(ctx, "", q, true, false, amqp091.Publishing{MessageId: "m1", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	span.End()
	testenv.WaitFor(t, "the retry to succeed", 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 2
	})
	if err := stop(); err != nil {
		t.Fatalf("Run after stop: %v, want nil", err)
	}
	for _, g := range seen {
		if g.session != "s-on" || g.trace != span.SpanContext().TraceID() {
			t.Errorf("attempt %d: session %q trace %s, want s-on on %s", g.attempt, g.session, g.trace, span.SpanContext().TraceID())
		}
	}
	spans := tel.Named("process " + q)
	if len(spans) != 2 {
		t.Fatalf("%d process spans, want 2", len(spans))
	}
	linked := false
	for _, l := range spans[1].Links() {
		linked = linked || l.SpanContext.SpanID() == spans[0].SpanContext().SpanID()
	}
	if !linked {
		t.Error("attempt 2 does not link to attempt 1")
	}
	if conn.IsClosed() || ch.IsClosed() {
		t.Fatalf("after Run: connection closed %v, channel closed %v; want both open (they are the caller's)", conn.IsClosed(), ch.IsClosed())
	}
	// The caller's channel still publishes, unconfirmed mode untouched by
	// the consumer (it confirms on a channel of its own).
	if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("after")}); err != nil {
		t.Errorf("publish on the caller's channel after Run: %v", err)
	}
}

// Without a redial func, a lost connection ends Run with ErrDisconnected
// instead of redialing forever or returning nil as if stopped on purpose.
func TestConsumerOnWithoutRedialReturnsWhenConnectionCloses(t *testing.T) {
	url := testenv.AMQP(t)
	q := uniqueQueue(t, url, "on-lost")
	conn, ch := dial(t, url)
	declare(t, ch, q, nil)
	started := make(chan struct{}, 1)
	c := amqp.NewConsumerOn(conn, nil, q, nil, func(context.Context, amqp091.Delivery) error {
		select {
		case started <- struct{}{}:
		default:
		}
		return nil
	})
	errc := make(chan error, 1)
	go func() { errc <- c.Run(context.Background()) }()
	if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery within 20s")
	}
	_ = conn.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, amqp.ErrDisconnected) {
			t.Fatalf("Run after the connection closed: %v, want an error wrapping ErrDisconnected", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20s of its connection closing")
	}
}

// With a redial func, the consumer survives the loss of the caller's
// connection and consumes everything published before, during and after
// it; messages in flight at the loss are redelivered, not lost.
func TestConsumerOnRedialsAfterConnectionLoss(t *testing.T) {
	url := testenv.AMQP(t)
	q := uniqueQueue(t, url, "on-redial")
	_, pubCh := dial(t, url)
	declare(t, pubCh, q, nil)
	first, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	conns := []*amqp091.Connection{first}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	var redials atomic.Int32
	redial := func(context.Context) (*amqp091.Connection, error) {
		redials.Add(1)
		c, err := amqp091.Dial(url)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
	var hmu sync.Mutex
	handled := map[string]int{}
	var reconnected atomic.Int32
	c := amqp.NewConsumerOn(first, redial, q, nil, func(_ context.Context, d amqp091.Delivery) error {
		time.Sleep(2 * time.Millisecond) // keep some deliveries in flight at the loss
		hmu.Lock()
		handled[d.MessageId]++
		hmu.Unlock()
		return nil
	}, tracebridge.WithConcurrency(4))
	c.OnReconnect = func() { reconnected.Add(1) }
	stop := runConsumer(t, c.Run)

	const total = 300
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			if err := pubCh.PublishWithContext(context.Background(), "", q, false, false,
				amqp091.Publishing{MessageId: strconv.Itoa(i), DeliveryMode: amqp091.Persistent, Body: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func() int {
		hmu.Lock()
		defer hmu.Unlock()
		return len(handled)
	}
	publish(0, total/2)
	testenv.WaitFor(t, "some messages handled", 20*time.Second, func() bool { return count() >= 20 })
	_ = first.Close() // the caller's connection goes away mid-stream
	publish(total/2, total)
	testenv.WaitFor(t, fmt.Sprintf("all %d messages handled after the reconnect", total), 30*time.Second,
		func() bool { return count() == total })
	if err := stop(); err != nil {
		t.Fatalf("Run after stop: %v, want nil", err)
	}
	if redials.Load() < 1 || reconnected.Load() < 1 {
		t.Errorf("redial called %d times, OnReconnect %d times; want at least 1 each", redials.Load(), reconnected.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	for _, c := range conns[1:] {
		if c.IsClosed() {
			t.Error("the consumer closed a connection redial returned; it is the caller's")
		}
	}
}

// Stopping a consumer on the caller's connection hands the deliveries it
// had prefetched but not started back to the queue at once (its own channel
// closes), though the connection stays open.
func TestConsumerOnStopReturnsPrefetched(t *testing.T) {
	url := testenv.AMQP(t)
	q := uniqueQueue(t, url, "on-stop")
	conn, ch := dial(t, url)
	declare(t, ch, q, nil)
	const total = 10
	for i := range total {
		if err := ch.PublishWithContext(context.Background(), "", q, false, false,
			amqp091.Publishing{MessageId: strconv.Itoa(i), Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	var handled atomic.Int32
	inHandler := make(chan struct{})
	release := make(chan struct{})
	c := amqp.NewConsumerOn(conn, nil, q, nil, func(context.Context, amqp091.Delivery) error {
		if handled.Add(1) == 1 {
			close(inHandler)
			<-release
		}
		return nil
	}) // concurrency 1, prefetch 2: one in the handler, one waiting
	stop := runConsumer(t, c.Run)
	<-inHandler
	done := make(chan error, 1)
	go func() { done <- stop() }()
	time.Sleep(100 * time.Millisecond) // let stop cancel the run before the handler returns
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Run after stop: %v", err)
	}
	if conn.IsClosed() {
		t.Fatal("the consumer closed the caller's connection")
	}
	info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := total - int(handled.Load()); info.Messages != want {
		t.Errorf("%d messages ready after stop, want %d (total %d, handled %d): prefetched deliveries were not returned",
			info.Messages, want, total, handled.Load())
	}
}
