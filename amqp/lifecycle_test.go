package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// closeBound is how long Close, or Run after its context ends, may take
// with work in flight on a loaded 2-core machine under -race. The
// operations under test take milliseconds; the bound catches a hang, and
// is well under amqp091's 30s handshake timeout.
const closeBound = 10 * time.Second

// amqpConnGoroutines ignores the goroutines amqp091 runs for a connection
// the test opened itself (declaring queues, reading results), whose
// lifetime is that connection, never the library's.
func amqpConnGoroutines() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/rabbitmq/amqp091-go.(*Connection).reader"),
		goleak.IgnoreAnyFunction("github.com/rabbitmq/amqp091-go.(*Connection).heartbeater"),
	}
}

// proxy forwards TCP connections to RabbitMQ until it is cut, after which
// it either refuses connections or accepts them and never answers, so a
// reconnect loop can be caught redialing or mid-handshake.
type proxy struct {
	target string
	ln     net.Listener
	url    string

	mu     sync.Mutex
	conns  []net.Conn
	silent bool // accept, then say nothing
	wg     sync.WaitGroup
	// held counts the connections accepted and never answered.
	held atomic.Int32
}

func newProxy(t *testing.T, brokerURL string) *proxy {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{target: u.Host, ln: ln}
	u.Host = ln.Addr().String()
	p.url = u.String()
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		silent := p.silent
		p.mu.Unlock()
		if silent {
			p.held.Add(1)
			continue // held open, never answered, closed by close
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, b)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(b, c); _ = b.Close() }()
		go func() { defer p.wg.Done(); _, _ = io.Copy(c, b); _ = c.Close() }()
	}
}

// cut drops every connection; with refuse the port then refuses new ones,
// otherwise it accepts them and never answers.
func (p *proxy) cut(refuse bool) {
	p.mu.Lock()
	p.silent = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	if refuse {
		_ = p.ln.Close()
	}
	for _, c := range conns {
		_ = c.Close()
	}
}

// close cuts everything and waits for the proxy's goroutines.
func (p *proxy) close() {
	p.cut(true)
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestDialPublisherCloseWhileRedialing loses the publisher's connection and
// closes it while it redials, once against a port that refuses and once
// against one that accepts and never answers (the AMQP handshake hangs):
// Close returns within the bound and nothing of the publisher is left.
func TestDialPublisherCloseWhileRedialing(t *testing.T) {
	for _, refuse := range []bool{true, false} {
		t.Run(map[bool]string{true: "refused", false: "silent"}[refuse], func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			px := newProxy(t, testenv.AMQP(t))
			var logs lockedBuffer
			p, err := amqp.DialPublisher(px.url, tracebridge.WithConfirms(), tracebridge.WithLogger(logs.logger()))
			if err != nil {
				t.Fatal(err)
			}
			px.cut(refuse)
			testenv.WaitFor(t, "the publisher to notice", closeBound, func() bool {
				err := p.PublishWithContext(context.Background(), "", "x", false, false, amqp091.Publishing{})
				return errors.Is(err, amqp.ErrDisconnected)
			})
			// Into the redial loop: a refused dial logged, or a dial whose
			// handshake hangs.
			testenv.WaitFor(t, "a redial", closeBound, func() bool { return logs.contains("reconnecting") || px.held.Load() > 0 })
			took := testenv.Within(t, "Close", closeBound, func() { _ = p.Close() })
			px.close()
			goleak.VerifyNone(t, leaks)
			t.Logf("Close took %v while redialing", took)
		})
	}
}

// TestDialPublisherCloseWithConfirmsPending closes a confirming publisher
// right after a burst of deferred-confirm publishes: every Wait returns,
// each with the broker's ack or ErrConfirmLost, every send span ends, and
// nothing of the publisher is left.
func TestDialPublisherCloseWithConfirmsPending(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	u := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, u, "confclose")
	{
		conn, ch := dial(t, u)
		declare(t, ch, q, nil)
		_ = conn.Close()
	}
	p, err := amqp.DialPublisher(u, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	confs := make([]*amqp.Confirmation, 0, n)
	for range n {
		c, err := p.PublishWithDeferredConfirm(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		confs = append(confs, c)
	}
	pending := 0
	for _, c := range confs {
		select {
		case <-c.Done():
		default:
			pending++
		}
	}
	testenv.Within(t, "Close", closeBound, func() { _ = p.Close() })
	lost := 0
	testenv.Within(t, "every Wait", closeBound, func() {
		for _, c := range confs {
			switch err := c.Wait(context.Background()); {
			case err == nil:
			case errors.Is(err, amqp.ErrConfirmLost):
				lost++
			default:
				t.Errorf("Wait after Close: %v", err)
			}
		}
	})
	if got := len(tel.Named("send " + q)); got != n {
		t.Fatalf("%d of %d send spans ended", got, n)
	}
	goleak.VerifyNone(t, leaks)
	t.Logf("%d of %d confirms pending at Close, %d lost", pending, n, lost)
}

// consumerSetup declares q on every connect.
func consumerSetup(q string) amqp.Setup {
	return func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare(q, true, false, false, false, nil)
		return err
	}
}

func publishN(t *testing.T, u, q string, n int) {
	t.Helper()
	conn, ch := dial(t, u)
	defer conn.Close()
	declare(t, ch, q, nil)
	for i := range n {
		if err := ch.PublishWithContext(context.Background(), "", q, false, false,
			amqp091.Publishing{MessageId: strconv.Itoa(i), DeliveryMode: amqp091.Persistent, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
}

// queueDepth reports how many ready messages q holds.
func queueDepth(t *testing.T, u, q string) int {
	t.Helper()
	conn, ch := dial(t, u)
	defer conn.Close()
	st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st.Messages
}

// TestConsumerRunStopsWhileRedialing loses the consumer's connection and
// ends Run's context while it redials, against a refusing port and a
// silent one: Run returns within the bound and nothing is left.
func TestConsumerRunStopsWhileRedialing(t *testing.T) {
	for _, refuse := range []bool{true, false} {
		t.Run(map[bool]string{true: "refused", false: "silent"}[refuse], func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			u := testenv.AMQP(t)
			px := newProxy(t, u)
			q := uniqueQueue(t, u, "redial")
			var handled atomic.Int32
			var logs lockedBuffer
			c := amqp.NewConsumer(px.url, q, consumerSetup(q), func(context.Context, amqp091.Delivery) error {
				handled.Add(1)
				return nil
			}, tracebridge.WithConcurrency(4), tracebridge.WithLogger(logs.logger()))
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- c.Run(ctx) }()
			publishN(t, u, q, 1)
			testenv.WaitFor(t, "the consumer to run", closeBound, func() bool { return handled.Load() == 1 })
			px.cut(refuse)
			testenv.WaitFor(t, "the consumer to redial", closeBound, func() bool { return logs.contains("reconnecting") || px.held.Load() > 0 })
			cancel()
			took := testenv.Within(t, "Run to return", closeBound, func() {
				if err := <-errc; err != nil {
					t.Errorf("Run: %v", err)
				}
			})
			px.close()
			goleak.VerifyNone(t, append(amqpConnGoroutines(), leaks)...)
			t.Logf("Run returned %v after its context ended while redialing", took)
		})
	}
}

// TestConsumerStopWaitsForHandlersThenLeavesNothing ends Run's context
// while four handlers (WithConcurrency(4)) are blocked mid-message: Run
// waits for them, they settle, and once they have returned Run returns
// and nothing is left. The unstarted prefetched deliveries go back to the
// queue.
func TestConsumerStopWaitsForHandlersThenLeavesNothing(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	u := testenv.AMQP(t)
	q := uniqueQueue(t, u, "stopwait")
	const n = 12
	publishN(t, u, q, n)
	g := testenv.NewGate()
	c := amqp.NewConsumer(u, q, consumerSetup(q), func(context.Context, amqp091.Delivery) error {
		g.Hold()
		return nil
	}, tracebridge.WithConcurrency(4))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	testenv.WaitFor(t, "4 handlers in flight", closeBound, func() bool { return g.Held() == 4 })
	cancel()
	select {
	case err := <-errc:
		t.Fatalf("Run returned %v with handlers running", err)
	case <-time.After(200 * time.Millisecond):
	}
	g.Open()
	testenv.Within(t, "Run to return", closeBound, func() {
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	if got := g.Held(); got != 4 {
		t.Fatalf("%d handlers started after the context ended, want the 4 in flight", got)
	}
	testenv.WaitFor(t, "the rest back in the queue", closeBound, func() bool { return queueDepth(t, u, q) == n-4 })
	goleak.VerifyNone(t, append(amqpConnGoroutines(), leaks)...)
}

// TestConsumerConnectionLostMidMessageLosesNothing cuts the connection
// while handlers are blocked mid-message, ends Run, and only then lets the
// handlers return success: their acks cannot reach the broker, so the
// broker requeues those messages, and the next consumer handles all of
// them, the in-flight ones and the never-started ones.
func TestConsumerConnectionLostMidMessageLosesNothing(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	u := testenv.AMQP(t)
	px := newProxy(t, u)
	q := uniqueQueue(t, u, "lostmid")
	const n = 12
	publishN(t, u, q, n)
	g := testenv.NewGate()
	var logs lockedBuffer
	c := amqp.NewConsumer(px.url, q, consumerSetup(q), func(context.Context, amqp091.Delivery) error {
		g.Hold()
		return nil
	}, tracebridge.WithConcurrency(4), tracebridge.WithLogger(logs.logger()))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	testenv.WaitFor(t, "4 handlers in flight", closeBound, func() bool { return g.Held() == 4 })
	px.cut(true)
	cancel()
	g.Open()
	testenv.Within(t, "Run to return", closeBound, func() {
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	px.close()

	var mu sync.Mutex
	done := map[string]bool{}
	c2 := amqp.NewConsumer(u, q, consumerSetup(q), func(_ context.Context, d amqp091.Delivery) error {
		mu.Lock()
		done[d.MessageId] = true
		mu.Unlock()
		return nil
	}, tracebridge.WithConcurrency(4))
	stop := runConsumer(t, c2.Run)
	testenv.WaitFor(t, "every message handled by the next consumer", 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(done) == n
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, append(amqpConnGoroutines(), leaks)...)
}

// TestConsumerStopDuringRetryBackoff ends Run while a republished retry
// waits out its backoff in the consumer (WithRetryDestination): Run
// returns within the bound, not after the backoff, and the message is back
// in the queue.
func TestConsumerStopDuringRetryBackoff(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	u := testenv.AMQP(t)
	q := uniqueQueue(t, u, "backoff")
	{
		conn, ch := dial(t, u)
		declare(t, ch, q, nil)
		// A retry republished just now, second attempt: its backoff (a
		// minute at most, drawn with full jitter) starts at its timestamp.
		if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{
			MessageId: "r", Timestamp: time.Now(), Body: []byte("x"),
			Headers: amqp091.Table{"retry-attempt": "2"},
		}); err != nil {
			t.Fatal(err)
		}
		_ = conn.Close()
	}
	var handled atomic.Int32
	c := amqp.NewConsumer(u, q, consumerSetup(q), func(context.Context, amqp091.Delivery) error {
		handled.Add(1)
		return nil
	}, tracebridge.WithRetryDestination(q), tracebridge.WithRetry(5, time.Hour, time.Hour), tracebridge.WithConcurrency(2))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	testenv.WaitFor(t, "the retry to be taken", closeBound, func() bool { return queueDepth(t, u, q) == 0 })
	time.Sleep(100 * time.Millisecond)
	cancel()
	testenv.Within(t, "Run to return", closeBound, func() {
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	if handled.Load() != 0 {
		t.Fatal("the retry ran before its backoff")
	}
	testenv.WaitFor(t, "the retry back in the queue", closeBound, func() bool { return queueDepth(t, u, q) == 1 })
	goleak.VerifyNone(t, append(amqpConnGoroutines(), leaks)...)
}

// lockedBuffer collects log output for assertions.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *lockedBuffer) contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return contains(string(b.buf), s)
}

func (b *lockedBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// TestDialPublisherCloseReleasesWaitingPublish closes a publisher while a
// publish waits (WithReconnectWait) for the lost connection to return:
// the publish fails with ErrDisconnected at the Close, not at the end of
// its wait.
func TestDialPublisherCloseReleasesWaitingPublish(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	px := newProxy(t, testenv.AMQP(t))
	var logs lockedBuffer
	p, err := amqp.DialPublisher(px.url, tracebridge.WithConfirms(), tracebridge.WithReconnectWait(time.Minute),
		tracebridge.WithLogger(logs.logger()))
	if err != nil {
		t.Fatal(err)
	}
	px.cut(true)
	testenv.WaitFor(t, "a redial", closeBound, func() bool { return logs.contains("reconnecting") })
	errc := make(chan error, 1)
	go func() {
		errc <- p.PublishWithContext(context.Background(), "", "x", false, false, amqp091.Publishing{})
	}()
	select {
	case err := <-errc:
		t.Fatalf("publish returned %v instead of waiting for the reconnect", err)
	case <-time.After(200 * time.Millisecond):
	}
	testenv.Within(t, "Close", closeBound, func() { _ = p.Close() })
	testenv.Within(t, "the waiting publish", closeBound, func() {
		if err := <-errc; !errors.Is(err, amqp.ErrDisconnected) {
			t.Errorf("publish after Close: %v, want ErrDisconnected", err)
		}
	})
	px.close()
	goleak.VerifyNone(t, leaks)
}

// TestNewPublisherLeavesNothingAfterItsChannelCloses: a publisher on the
// user's channel keeps nothing running once the user closes that channel's
// connection, pending confirmations included.
func TestNewPublisherLeavesNothingAfterItsChannelCloses(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	u := testenv.AMQP(t)
	q := uniqueQueue(t, u, "userch")
	conn, err := amqp091.Dial(u)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	declare(t, ch, q, nil)
	p, err := amqp.NewPublisher(ch, tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	confs := make([]*amqp.Confirmation, 0, n)
	for range n {
		c, err := p.PublishWithDeferredConfirm(context.Background(), "", q, true, false, amqp091.Publishing{Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		confs = append(confs, c)
	}
	testenv.Within(t, "connection close", closeBound, func() { _ = conn.Close() })
	testenv.Within(t, "every Wait", closeBound, func() {
		for _, c := range confs {
			if err := c.Wait(context.Background()); err != nil && !errors.Is(err, amqp.ErrConfirmLost) {
				t.Errorf("Wait after the close: %v", err)
			}
		}
	})
	goleak.VerifyNone(t, leaks)
}

// TestDialPublisherCloseWithAbandonedMandatoryConfirms gives up on a burst
// of mandatory, confirmed publishes the broker returns (their contexts end
// before any answer, so each leaves a goroutine waiting to forget its
// return) and closes the publisher at once: Close returns within the
// bound, and none of those goroutines outlives it.
func TestDialPublisherCloseWithAbandonedMandatoryConfirms(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	p, err := amqp.DialPublisher(testenv.AMQP(t), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	nowhere := fmt.Sprintf("tb.abandoned.%d", time.Now().UnixNano())
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	var confs []*amqp.Confirmation
	for i := range 200 {
		msg := amqp091.Publishing{MessageId: strconv.Itoa(i), Body: make([]byte, 1024)}
		if i%2 == 0 {
			if err := p.PublishWithContext(gone, "", nowhere, true, false, msg); !abandonedOrReturned(err) {
				t.Fatalf("publish %d under an ended context: %v, want context.Canceled or the broker's return", i, err)
			}
			continue
		}
		c, err := p.PublishWithDeferredConfirm(context.Background(), "", nowhere, true, false, msg)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Wait(gone); !abandonedOrReturned(err) {
			t.Fatalf("Wait %d under an ended context: %v, want context.Canceled or the broker's return", i, err)
		}
		confs = append(confs, c)
	}
	first := make([]error, len(confs))
	for i, c := range confs {
		first[i] = c.Wait(gone)
	}
	testenv.Within(t, "Close", closeBound, func() { _ = p.Close() })
	for i, c := range confs {
		if err := c.Wait(context.Background()); err != first[i] {
			t.Fatalf("a Wait after Close gave %v, the Waits before it %v", err, first[i])
		}
	}
	goleak.VerifyNone(t, leaks)
}

// abandonedOrReturned is what a mandatory publish to nowhere may report
// when its waiter gives up: the waiter's context error, or the broker's
// return if that arrived first; never success.
func abandonedOrReturned(err error) bool {
	var ret *amqp.ReturnedError
	return errors.Is(err, context.Canceled) || errors.As(err, &ret)
}
