package nats_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	"go.uber.org/goleak"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// closeBound is how long a Close, Stop or connection close may take with
// work in flight on a loaded 2-core machine under -race. The operations
// under test return in milliseconds; the bound only catches a hang.
const closeBound = 10 * time.Second

// blackHole subscribes to subj on a connection of its own and never
// replies, so a JetStream publish to subj gets neither a PubAck nor a
// no-responders status: its ack never comes. It returns the connection.
func blackHole(t *testing.T, url, subj string) *natsgo.Conn {
	t.Helper()
	nc := connect(t, url)
	if _, err := nc.Subscribe(subj, func(*natsgo.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return nc
}

// TestWrapJetStreamUnackedAsyncPublishEndsAtClose publishes async through
// WrapJetStream to a subject whose ack never comes, with nats.go's default
// (no async ack timeout), and closes the connection: the send span ends
// with an error naming the closed connection, the future reports it, and
// no goroutine of the publish outlives the close.
func TestWrapJetStreamUnackedAsyncPublishEndsAtClose(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	subj := unique(t, "noack")
	hole := blackHole(t, url, subj)

	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	tjs := tnats.WrapJetStream(js, tel.Options()...)
	const n = 5
	futures := make([]jetstream.PubAckFuture, n)
	for i := range futures {
		if futures[i], err = tjs.PublishAsync(context.Background(), subj, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := len(tel.Named("send " + subj)); got != 0 {
		t.Fatalf("%d send spans ended before any ack or close", got)
	}
	testenv.Within(t, "connection close", closeBound, nc.Close)
	hole.Close()
	goleak.VerifyNone(t, leaks)

	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			t.Fatalf("future %d acked %+v by a black hole", i, ack)
		case err := <-f.Err():
			if !errors.Is(err, natsgo.ErrConnectionClosed) {
				t.Fatalf("future %d: %v, want ErrConnectionClosed", i, err)
			}
		case <-time.After(closeBound):
			t.Fatalf("future %d has no outcome %v after the connection closed", i, closeBound)
		}
	}
	testenv.WaitFor(t, "send spans to end", closeBound, func() bool { return len(tel.Named("send "+subj)) == n })
	for _, s := range tel.Named("send " + subj) {
		if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "closed") {
			t.Fatalf("send span status %v %q, want an error saying the connection closed", s.Status().Code, s.Status().Description)
		}
	}
}

// natsConnGoroutines ignores the goroutines nats.go runs for an open
// connection and its JetStream context, whose lifetime is the user's
// connection, never the library's.
func natsConnGoroutines() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/nats-io/nats%2ego.(*Conn).readLoop"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats%2ego.(*Conn).flusher"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats%2ego.(*Conn).waitForMsgs"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats%2ego.(*asyncCallbacksHandler).asyncCBDispatcher"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
	}
}

// TestNewJetStreamUnackedAsyncPublishEndsAtClose is the NewJetStream side
// of the close: its spans are ended by the JetStream's handlers, which
// nats.go does not call when the connection closes, so the spans of
// publishes still awaiting their ack end at the close, with an error
// naming it, and the close watch leaves no goroutine.
func TestNewJetStreamUnackedAsyncPublishEndsAtClose(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	subj := unique(t, "noack")
	hole := blackHole(t, url, subj)

	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	tjs, err := tnats.NewJetStream(nc, nil, tel.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	for range n {
		if _, err := tjs.PublishAsync(context.Background(), subj, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := len(tel.Named("send " + subj)); got != 0 {
		t.Fatalf("%d send spans ended before any ack or close", got)
	}
	testenv.Within(t, "connection close", closeBound, nc.Close)
	hole.Close()
	testenv.WaitFor(t, "send spans to end", closeBound, func() bool { return len(tel.Named("send "+subj)) == n })
	for _, s := range tel.Named("send " + subj) {
		if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "closed") {
			t.Fatalf("send span status %v %q, want an error saying the connection closed", s.Status().Code, s.Status().Description)
		}
	}
	goleak.VerifyNone(t, leaks)
}

// TestWrapJetStreamUnackedAsyncPublishTimesOut leaves the connection open:
// the relay of a publish whose ack never comes gives up at the ack timeout,
// ending the span and the future with jetstream.ErrAsyncPublishTimeout, and
// its goroutine is gone while the connection lives on.
func TestWrapJetStreamUnackedAsyncPublishTimesOut(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	subj := unique(t, "noack")
	blackHole(t, url, subj)
	js, err := jetstream.New(connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	tjs := tnats.WrapJetStream(js, tel.Options()...)
	const timeout = 300 * time.Millisecond
	tnats.SetAckTimeout(tjs, timeout)

	start := time.Now()
	f, err := tjs.PublishAsync(context.Background(), subj, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ack := <-f.Ok():
		t.Fatalf("acked %+v by a black hole", ack)
	case err := <-f.Err():
		if !errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
			t.Fatalf("future error %v, want ErrAsyncPublishTimeout", err)
		}
		if waited := time.Since(start); waited < timeout {
			t.Fatalf("gave up after %v, before the %v timeout", waited, timeout)
		}
	case <-time.After(closeBound):
		t.Fatalf("no outcome %v after publishing with a %v ack timeout", closeBound, timeout)
	}
	testenv.WaitFor(t, "send span to end", closeBound, func() bool { return len(tel.Named("send "+subj)) == 1 })
	if s := tel.Named("send " + subj)[0]; s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "timeout") {
		t.Fatalf("send span status %v %q, want an ack timeout", s.Status().Code, s.Status().Description)
	}
	goleak.VerifyNone(t, append(natsConnGoroutines(), leaks)...)
}

// TestChanSubscribeWorkersEndAtConnClose closes the connection under a
// ChanSubscribe with WithConcurrency(4) whose context never ends, while
// four handlers are blocked mid-message and more messages wait in the
// channel: the close returns at once, and once the handlers return the
// workers handle what the channel held and stop.
func TestChanSubscribeWorkersEndAtConnClose(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	url := testenv.NATS(t)
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	c := tnats.Wrap(nc, tracebridge.WithConcurrency(4))
	subj := unique(t, "chan")
	g := testenv.NewGate()
	var handled atomic.Int32
	ch := make(chan *natsgo.Msg, 64)
	if _, err := c.ChanSubscribe(context.Background(), subj, ch, func(context.Context, *natsgo.Msg) {
		g.Hold()
		handled.Add(1)
	}); err != nil {
		t.Fatal(err)
	}
	const n = 10
	for range n {
		if err := nc.Publish(subj, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, "4 handlers in flight and the rest buffered", closeBound, func() bool {
		return g.Held() == 4 && len(ch) == n-4
	})
	testenv.Within(t, "connection close", closeBound, nc.Close)
	g.Open()
	goleak.VerifyNone(t, leaks)
	if got := handled.Load(); got != n {
		t.Fatalf("%d of %d delivered messages handled", got, n)
	}
}

// TestChanSubscribeWorkersEndAtUnsubscribe unsubscribes with the connection
// still open: the workers stop though their context never ends.
func TestChanSubscribeWorkersEndAtUnsubscribe(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	url := testenv.NATS(t)
	nc := connect(t, url)
	c := tnats.Wrap(nc, tracebridge.WithConcurrency(3))
	subj := unique(t, "chan")
	var handled atomic.Int32
	sub, err := c.ChanSubscribe(context.Background(), subj, make(chan *natsgo.Msg, 8),
		func(context.Context, *natsgo.Msg) { handled.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subj, []byte("x")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "a message handled", closeBound, func() bool { return handled.Load() == 1 })
	testenv.Within(t, "unsubscribe", closeBound, func() {
		if err := sub.Unsubscribe(); err != nil {
			t.Error(err)
		}
	})
	goleak.VerifyNone(t, append(natsConnGoroutines(), leaks)...)
}

// TestSubscribeHandlerBlockedAtConnClose closes the connection while a
// core Subscribe handler is blocked: the close does not wait for it, and
// nothing is left once it returns.
func TestSubscribeHandlerBlockedAtConnClose(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	url := testenv.NATS(t)
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	c := tnats.Wrap(nc)
	subj := unique(t, "core")
	g := testenv.NewGate()
	if _, err := c.Subscribe(subj, func(context.Context, *natsgo.Msg) { g.Hold() }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subj, []byte("x")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "handler in flight", closeBound, func() bool { return g.Held() == 1 })
	testenv.Within(t, "connection close", closeBound, nc.Close)
	g.Open()
	goleak.VerifyNone(t, leaks)
}

// jsLifecycle is a stream with a durable consumer, managed on a connection
// of the test's, and a second connection for the code under test, which
// the test closes itself.
type jsLifecycle struct {
	url  string
	subj string
	st   jetstream.Stream
	cfg  jetstream.ConsumerConfig
	nc   *natsgo.Conn
	js   jetstream.JetStream
}

func newJSLifecycle(t *testing.T, n int, cfg jetstream.ConsumerConfig) *jsLifecycle {
	t.Helper()
	e := &jsLifecycle{url: testenv.NATS(t), subj: unique(t, "life"), cfg: cfg}
	admin, err := jetstream.New(connect(t, e.url))
	if err != nil {
		t.Fatal(err)
	}
	e.st = stream(t, admin, jetstream.StreamConfig{Name: e.subj, Subjects: []string{e.subj}})
	consumer(t, e.st, cfg)
	for i := range n {
		if _, err := admin.Publish(context.Background(), e.subj, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	e.dial(t)
	return e
}

// dial opens the connection of the code under test.
func (e *jsLifecycle) dial(t *testing.T) {
	t.Helper()
	var err error
	if e.nc, err = natsgo.Connect(e.url); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.nc.Close) // in case the test fails before closing it
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
}

func (e *jsLifecycle) consumer(t *testing.T, opts ...tracebridge.Option) *tnats.Consumer {
	t.Helper()
	cons, err := e.js.Consumer(context.Background(), e.subj, e.cfg.Durable)
	if err != nil {
		t.Fatal(err)
	}
	return tnats.NewConsumer(e.js, cons, opts...)
}

// TestConsumeStopWaitsForHandlersThenLeavesNothing stops a Consume with
// WithConcurrency(4) while four handlers are blocked mid-message, with
// Stop and with Drain: Stop returns at once, Closed waits for the
// handlers (they are not interrupted) and closes once they have returned,
// and after the connection's close nothing is left.
func TestConsumeStopWaitsForHandlersThenLeavesNothing(t *testing.T) {
	for _, how := range []string{"Stop", "Drain"} {
		t.Run(how, func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			e := newJSLifecycle(t, 10, jetstream.ConsumerConfig{Durable: "c", AckWait: 30 * time.Second})
			g := testenv.NewGate()
			cc, err := e.consumer(t, tracebridge.WithConcurrency(4)).Consume(func(context.Context, jetstream.Msg) error {
				g.Hold()
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, "4 handlers in flight", closeBound, func() bool { return g.Held() == 4 })
			if how == "Stop" {
				testenv.Within(t, "Stop", closeBound, cc.Stop)
			} else {
				testenv.Within(t, "Drain", closeBound, cc.Drain)
			}
			select {
			case <-cc.Closed():
				t.Fatal("Closed while handlers were still running")
			case <-time.After(200 * time.Millisecond):
			}
			g.Open()
			testenv.Within(t, "Closed after the handlers returned", closeBound, func() { <-cc.Closed() })
			testenv.Within(t, "connection close", closeBound, e.nc.Close)
			goleak.VerifyNone(t, append(natsConnGoroutines(), leaks)...)
		})
	}
}

// TestMessagesReturnsAfterHandlersThenLeavesNothing ends the context of
// Messages while handlers are blocked: Messages returns once they have
// returned, and nothing of it is left.
func TestMessagesReturnsAfterHandlersThenLeavesNothing(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	e := newJSLifecycle(t, 10, jetstream.ConsumerConfig{Durable: "c", AckWait: 30 * time.Second})
	g := testenv.NewGate()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- e.consumer(t, tracebridge.WithConcurrency(4)).Messages(ctx, func(context.Context, jetstream.Msg) error {
			g.Hold()
			return nil
		})
	}()
	testenv.WaitFor(t, "4 handlers in flight", closeBound, func() bool { return g.Held() == 4 })
	cancel()
	select {
	case err := <-errc:
		t.Fatalf("Messages returned %v with handlers running", err)
	case <-time.After(200 * time.Millisecond):
	}
	g.Open()
	testenv.Within(t, "Messages to return", closeBound, func() {
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("Messages returned %v, want context.Canceled", err)
		}
	})
	testenv.Within(t, "connection close", closeBound, e.nc.Close)
	goleak.VerifyNone(t, append(natsConnGoroutines(), leaks)...)
}

// TestConsumeCloseLosesNothing stops a Consume and closes its connection
// while handlers are blocked mid-message; they then return nil, too late
// to ack. Every message, those in flight and those never started, is
// delivered again to the next consumer and handled to the end: no message
// whose handler did not finish on a live connection counts as done.
func TestConsumeCloseLosesNothing(t *testing.T) {
	const n = 12
	e := newJSLifecycle(t, n, jetstream.ConsumerConfig{Durable: "c", AckWait: time.Second})
	g := testenv.NewGate()
	cc, err := e.consumer(t, tracebridge.WithConcurrency(4)).Consume(func(context.Context, jetstream.Msg) error {
		g.Hold()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "4 handlers in flight", closeBound, func() bool { return g.Held() == 4 })
	cc.Stop()
	testenv.Within(t, "connection close", closeBound, e.nc.Close)
	g.Open()
	testenv.Within(t, "Closed", closeBound, func() { <-cc.Closed() })

	e.dial(t)
	var mu sync.Mutex
	done := map[string]bool{}
	cc, err = e.consumer(t, tracebridge.WithConcurrency(4)).Consume(func(_ context.Context, m jetstream.Msg) error {
		mu.Lock()
		done[string(m.Data())] = true
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	testenv.WaitFor(t, "every message handled after the restart", 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(done) == n
	})
}

// TestJetStreamAsyncPublishLeavesNoGoroutineOnOpenConnection: with the
// connection open, nothing of an async publish stays once its ack came
// (WrapJetStream's relays, the close watch of both constructors), nor once
// CleanupPublisher failed the publishes whose ack never came.
func TestJetStreamAsyncPublishLeavesNoGoroutineOnOpenConnection(t *testing.T) {
	for _, wrap := range []bool{true, false} {
		t.Run(map[bool]string{true: "WrapJetStream", false: "NewJetStream"}[wrap], func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			url := testenv.NATS(t)
			tel := testenv.NewTelemetry(t)
			nc := connect(t, url)
			var tjs *tnats.JetStream
			if wrap {
				js, err := jetstream.New(nc)
				if err != nil {
					t.Fatal(err)
				}
				tjs = tnats.WrapJetStream(js, tel.Options()...)
			} else {
				var err error
				if tjs, err = tnats.NewJetStream(nc, nil, tel.Options()...); err != nil {
					t.Fatal(err)
				}
			}
			subj := unique(t, "acked")
			stream(t, tjs.JetStream, jetstream.StreamConfig{Name: subj, Subjects: []string{subj}})
			const n = 50
			for range n {
				if _, err := tjs.PublishAsync(context.Background(), subj, []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			testenv.Within(t, "acks", closeBound, func() { <-tjs.PublishAsyncComplete() })
			testenv.WaitFor(t, "send spans", closeBound, func() bool { return len(tel.Named("send "+subj)) == n })
			goleak.VerifyNone(t, append(natsConnGoroutines(), leaks)...)

			hole := unique(t, "hole")
			blackHole(t, url, hole)
			f, err := tjs.PublishAsync(context.Background(), hole, []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			testenv.Within(t, "CleanupPublisher", closeBound, tjs.CleanupPublisher)
			select {
			case err := <-f.Err():
				if !errors.Is(err, jetstream.ErrJetStreamPublisherClosed) {
					t.Fatalf("future error %v, want ErrJetStreamPublisherClosed", err)
				}
			case <-time.After(closeBound):
				t.Fatal("future has no outcome after CleanupPublisher")
			}
			testenv.WaitFor(t, "send span of the cleaned-up publish", closeBound, func() bool { return len(tel.Named("send "+hole)) == 1 })
			goleak.VerifyNone(t, append(natsConnGoroutines(), leaks)...)
		})
	}
}
