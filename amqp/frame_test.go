package amqp_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/baggage"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/amqpframe"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

const validTP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

// frameSize is amqpframe.Size of a message that has no over-long short
// string.
func frameSize(t testing.TB, msg *amqp091.Publishing) int {
	t.Helper()
	n, err := amqpframe.Size(msg)
	if err != nil {
		t.Fatalf("Size: %v", err)
	}
	return n
}

// padTo returns msg with a header "big" sized so that msg's content-header
// frame is exactly size bytes.
func padTo(t testing.TB, msg amqp091.Publishing, size int) amqp091.Publishing {
	t.Helper()
	h := amqp091.Table{"big": ""}
	for k, v := range msg.Headers {
		h[k] = v
	}
	msg.Headers = h
	pad := size - frameSize(t, &msg)
	if pad < 0 {
		t.Fatalf("cannot pad to %d bytes: already %d", size, frameSize(t, &msg))
	}
	h["big"] = strings.Repeat("x", pad)
	if got := frameSize(t, &msg); got != size {
		t.Fatalf("padded to %d bytes, want %d", got, size)
	}
	return msg
}

// alive fails t unless a synchronous round trip on ch still works: the
// broker closes the whole connection over a frame larger than frame_max.
func alive(t testing.TB, conn *amqp091.Connection, ch *amqp091.Channel, q string) {
	t.Helper()
	if _, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil || conn.IsClosed() {
		t.Fatalf("connection gone after the refused publish: %v (closed: %v)", err, conn.IsClosed())
	}
}

// TestPublishOverFrameMaxIsRefusedBeforeSending publishes the header table
// reviewers saw close the connection (133,120 bytes against RabbitMQ's
// frame_max of 131,072), through NewPublisher without confirms (where the
// message used to vanish with a nil error) and through DialPublisher with
// confirms. Each must fail with ErrFrameTooLarge naming the size and the
// limit, send nothing, and leave the connection open.
func TestPublishOverFrameMaxIsRefusedBeforeSending(t *testing.T) {
	url := testenv.AMQP(t)
	conn, ch := dial(t, url)
	frameMax := conn.Config.FrameSize
	q := uniqueQueue(t, url, "frame")
	declare(t, ch, q, nil)
	big := amqp091.Table{"big": strings.Repeat("x", 133120-4-(1+3)-5)} // a 133,120-byte table
	if n := frameSize(t, &amqp091.Publishing{Headers: big}) - 8 - 14; n != 133120 {
		t.Fatalf("table of %d bytes", n)
	}

	check := func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, amqp.ErrFrameTooLarge) {
			t.Fatalf("publish of a 133,120-byte header table: %v, want ErrFrameTooLarge", err)
		}
		for _, want := range []string{strconv.Itoa(frameMax), "133120", q} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %s", err, want)
			}
		}
	}
	get := func(t *testing.T, want string) {
		t.Helper()
		d, ok, err := ch.Get(q, true)
		if err != nil || !ok || string(d.Body) != want {
			t.Fatalf("get: %q ok=%v err=%v, want %q", d.Body, ok, err, want)
		}
		if _, ok, _ := ch.Get(q, true); ok {
			t.Fatal("more than one message in the queue: the refused one was sent")
		}
	}

	t.Run("NewPublisher without confirms", func(t *testing.T) {
		pconn, pch := dial(t, url)
		p, err := amqp.NewPublisher(pch)
		if err != nil {
			t.Fatal(err)
		}
		check(t, p.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Headers: big, Body: []byte("lost")}))
		alive(t, pconn, pch, q)
		if err := p.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("after")}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, "the message after", 10*time.Second, func() bool {
			n, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			return err == nil && n.Messages > 0
		})
		get(t, "after")
		alive(t, pconn, pch, q)
	})

	t.Run("DialPublisher with confirms", func(t *testing.T) {
		var reconnects atomic.Int32
		p, err := amqp.DialPublisher(url, tracebridge.WithConfirms(), tracebridge.WithLogger(slog.New(counter{&reconnects})))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		check(t, p.PublishWithContext(context.Background(), "", q, true, false, amqp091.Publishing{Headers: big, Body: []byte("lost")}))
		if err := p.PublishWithContext(context.Background(), "", q, true, false, amqp091.Publishing{Body: []byte("after")}); err != nil {
			t.Fatalf("publish after the refused one: %v", err)
		}
		get(t, "after")
		if n := reconnects.Load(); n != 0 {
			t.Errorf("the publisher logged %d warnings (reconnecting): its connection was lost", n)
		}
	})
}

// counter is a slog.Handler that counts warnings.
type counter struct{ n *atomic.Int32 }

func (c counter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (c counter) Handle(context.Context, slog.Record) error    { c.n.Add(1); return nil }
func (c counter) WithAttrs([]slog.Attr) slog.Handler           { return c }
func (c counter) WithGroup(string) slog.Handler                { return c }

// TestPublishAtExactlyFrameMax sends a message whose content-header frame
// is exactly frame_max (RabbitMQ takes it, whole) and one byte more
// (refused): the measure is exact, so the Publisher neither sends what
// closes the connection nor refuses what fits.
func TestPublishAtExactlyFrameMax(t *testing.T) {
	url := testenv.AMQP(t)
	conn, ch := dial(t, url)
	frameMax := conn.Config.FrameSize
	q := uniqueQueue(t, url, "exact")
	declare(t, ch, q, nil)
	p, err := amqp.NewPublisher(ch, tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	// A valid traceparent: the message is forwarded, so the Publisher adds
	// no header and the size is the caller's.
	base := amqp091.Publishing{Headers: amqp091.Table{"traceparent": validTP}, MessageId: "exact",
		DeliveryMode: amqp091.Persistent, Timestamp: time.Now(), Body: []byte("body")}
	exact := padTo(t, base, frameMax)
	if err := p.PublishWithContext(context.Background(), "", q, true, false, exact); err != nil {
		t.Fatalf("a frame of exactly frame_max (%d): %v", frameMax, err)
	}
	d, ok, err := ch.Get(q, true)
	if err != nil || !ok {
		t.Fatalf("get: ok=%v err=%v", ok, err)
	}
	if got := amqp.Carrier(d.Headers).Get("big"); len(got) != len(exact.Headers["big"].(string)) {
		t.Errorf("delivered with a %d-byte header, sent %d", len(got), len(exact.Headers["big"].(string)))
	}
	over := padTo(t, base, frameMax+1)
	err = p.PublishWithContext(context.Background(), "", q, true, false, over)
	if !errors.Is(err, amqp.ErrFrameTooLarge) || !strings.Contains(err.Error(), strconv.Itoa(frameMax+1)) {
		t.Fatalf("one byte over frame_max: %v, want ErrFrameTooLarge naming %d", err, frameMax+1)
	}
	alive(t, conn, ch, q)
}

// TestNewPublisherFrameMaxIsTheConnections gives NewPublisher a channel on a
// connection that negotiated a frame_max of 8,192 bytes: a message that
// RabbitMQ's default would take but this connection cannot must be
// refused, and one that fits must go. The limit is read from the channel's
// connection (through reflection, as amqp091 has no accessor), so this also
// pins that read against amqp091 upgrades.
func TestNewPublisherFrameMaxIsTheConnections(t *testing.T) {
	url := testenv.AMQP(t)
	conn, err := amqp091.DialConfig(url, amqp091.Config{FrameSize: 8192})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.Config.FrameSize != 8192 {
		t.Fatalf("negotiated frame_max %d, want 8192", conn.Config.FrameSize)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q := uniqueQueue(t, url, "small-frames")
	declare(t, ch, q, nil)
	p, err := amqp.NewPublisher(ch)
	if err != nil {
		t.Fatal(err)
	}
	err = p.PublishWithContext(context.Background(), "", q, false, false,
		amqp091.Publishing{Headers: amqp091.Table{"big": strings.Repeat("x", 9000)}})
	if !errors.Is(err, amqp.ErrFrameTooLarge) || !strings.Contains(err.Error(), "8192") {
		t.Fatalf("9,000-byte header on an 8,192-byte frame_max: %v, want ErrFrameTooLarge naming 8192", err)
	}
	alive(t, conn, ch, q)
	if err := p.PublishWithContext(context.Background(), "", q, false, false,
		amqp091.Publishing{Headers: amqp091.Table{"big": strings.Repeat("x", 6000)}, Body: []byte("fits")}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the message that fits", 10*time.Second, func() bool {
		d, ok, err := ch.Get(q, true)
		return err == nil && ok && string(d.Body) == "fits"
	})
}

// TestPublisherDropsItsOwnHeadersToFit publishes a message whose own
// headers fit but do not leave room for the baggage the Publisher adds from
// the context: the message must go (without the baggage, keeping the
// traceparent and the session), and the send span must say what went.
func TestPublisherDropsItsOwnHeadersToFit(t *testing.T) {
	url := testenv.AMQP(t)
	tel := testenv.NewTelemetry(t)
	conn, ch := dial(t, url)
	frameMax := conn.Config.FrameSize
	q := uniqueQueue(t, url, "dropown")
	declare(t, ch, q, nil)
	p, err := amqp.NewPublisher(ch, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	var members []baggage.Member
	for i := range 4 {
		m, err := baggage.NewMember("note"+strconv.Itoa(i), strings.Repeat("n", 1500))
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, m)
	}
	bag, err := baggage.New(members...)
	if err != nil {
		t.Fatal(err)
	}
	ctx := baggage.ContextWithBaggage(carrier.ContextWithSession(context.Background(), "sess-frame"), bag)

	// With the traceparent and session-id the Publisher adds, 2,000 bytes
	// short of frame_max; the 6,000 bytes of baggage do not fit.
	sized := padTo(t, amqp091.Publishing{Headers: amqp091.Table{"traceparent": validTP, "session-id": "sess-frame"},
		Body: []byte("keep me")}, frameMax-2000)
	delete(sized.Headers, "traceparent")
	delete(sized.Headers, "session-id")
	if err := p.PublishWithContext(ctx, "", q, true, false, sized); err != nil {
		t.Fatalf("publish: %v (the message must go without the baggage)", err)
	}
	d, ok, err := ch.Get(q, true)
	if err != nil || !ok {
		t.Fatalf("get: ok=%v err=%v", ok, err)
	}
	h := amqp.Carrier(d.Headers)
	if string(d.Body) != "keep me" || len(h.Get("big")) != len(sized.Headers["big"].(string)) {
		t.Errorf("the caller's message changed: body %q, big header %d bytes", d.Body, len(h.Get("big")))
	}
	if h.Get("baggage") != "" {
		t.Error("baggage sent though it did not fit")
	}
	if h.Get("session-id") != "sess-frame" {
		t.Errorf("session-id %q: dropped though the baggage was enough", h.Get("session-id"))
	}
	spans := tel.Named("send " + q)
	if len(spans) != 1 {
		t.Fatalf("%d send spans", len(spans))
	}
	if got, want := h.Get("traceparent"), carrier.FormatTraceparent(spans[0].SpanContext()); got != want {
		t.Errorf("traceparent %q, want the send span's %q", got, want)
	}
	var dropped []string
	for _, e := range spans[0].Events() {
		if e.Name == "tracebridge.headers_dropped" {
			for _, a := range e.Attributes {
				if a.Key == "tracebridge.dropped_headers" {
					dropped = a.Value.AsStringSlice()
				}
			}
		}
	}
	if strings.Join(dropped, ",") != "baggage" {
		t.Errorf("headers_dropped event names %q, want [baggage]", dropped)
	}
	alive(t, conn, ch, q)
}

// TestConsumerDeadLetterTrimmedToFit dead-letters messages whose headers
// fit as delivered but not with retry-previous and the dead-letter-*
// headers added. Each must reach the dead-letter queue (body, traceparent
// and dead-letter-attempts/source intact), trimmed as documented: first
// what tracebridge adds, then the largest headers of the original, all
// listed in dead-letter-dropped-headers. The consumer must keep its
// connection (no reconnect) and go on to the next message.
func TestConsumerDeadLetterTrimmedToFit(t *testing.T) {
	t.Run("NewConsumer", func(t *testing.T) { testDeadLetterTrimmed(t, false) })
	t.Run("NewConsumerOn", func(t *testing.T) { testDeadLetterTrimmed(t, true) })
}

func testDeadLetterTrimmed(t *testing.T, on bool) {
	url := testenv.AMQP(t)
	conn, ch := dial(t, url)
	frameMax := conn.Config.FrameSize
	q := uniqueQueue(t, url, "dltrim")
	dlq := q + ".dlq"
	declare(t, ch, q, nil)
	declare(t, ch, dlq, nil) // as the consumer does: a Get on a missing queue would close ch
	var reconnects atomic.Int32
	done := make(chan struct{})
	h := func(ctx context.Context, d amqp091.Delivery) error {
		if d.MessageId == "next" {
			close(done)
			return nil
		}
		return tracebridge.Permanent(errors.New(strings.Repeat("the reason is long ", 40)))
	}
	var c *amqp.Consumer
	if on {
		own, _ := dial(t, url)
		c = amqp.NewConsumerOn(own, nil, q, nil, h, tracebridge.WithDeadLetter(dlq))
	} else {
		c = amqp.NewConsumer(url, q, nil, h, tracebridge.WithDeadLetter(dlq))
	}
	c.OnReconnect = func() { reconnects.Add(1) }
	runConsumer(t, c.Run)

	publish := func(id string, slack int) amqp091.Publishing {
		msg := padTo(t, amqp091.Publishing{MessageId: id, DeliveryMode: amqp091.Persistent, Body: []byte("body-" + id),
			Headers: amqp091.Table{"traceparent": validTP, "small": "keep"}}, frameMax-slack)
		if err := ch.Publish("", q, false, false, msg); err != nil {
			t.Fatal(err)
		}
		return msg
	}
	// Room for dead-letter-attempts/-source and the list, not for
	// retry-previous and the reason.
	publish("roomy", 400)
	// No room even for those: a header of the original must go.
	publish("tight", 30)

	got := map[string]amqp091.Delivery{}
	testenv.WaitFor(t, "both dead letters", 30*time.Second, func() bool {
		for {
			d, ok, err := ch.Get(dlq, true)
			if err != nil {
				t.Fatalf("get from %s: %v", dlq, err)
			}
			if !ok {
				break
			}
			got[d.MessageId] = d
		}
		return len(got) == 2
	})
	for id, wantDropped := range map[string]string{
		"roomy": "retry-previous,dead-letter-reason",
		"tight": "retry-previous,dead-letter-reason,big",
	} {
		d := got[id]
		h := amqp.Carrier(d.Headers)
		if string(d.Body) != "body-"+id || h.Get("traceparent") != validTP || h.Get("small") != "keep" {
			t.Errorf("%s: body %q traceparent %q small %q", id, d.Body, h.Get("traceparent"), h.Get("small"))
		}
		if h.Get("dead-letter-attempts") != "1" || h.Get("dead-letter-source") != q {
			t.Errorf("%s: dead-letter-attempts %q source %q", id, h.Get("dead-letter-attempts"), h.Get("dead-letter-source"))
		}
		if list := h.Get(amqpframe.DroppedHeader); list != wantDropped {
			t.Errorf("%s: %s = %q, want %q", id, amqpframe.DroppedHeader, list, wantDropped)
		}
		if _, kept := d.Headers["big"]; kept == strings.Contains(wantDropped, "big") {
			t.Errorf("%s: big header kept = %v, want %v", id, kept, !strings.Contains(wantDropped, "big"))
		}
	}
	if err := ch.Publish("", q, false, false, amqp091.Publishing{MessageId: "next"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the consumer did not get the next message")
	}
	if n := reconnects.Load(); n != 0 {
		t.Errorf("the consumer reconnected %d times: a dead letter closed its connection", n)
	}
}

// TestConsumerRetryThatCannotFitIsSettledAsFinal fails a message whose
// headers fit as delivered but leave no room for retry-attempt and
// retry-previous. Its retry can never be published; requeueing it would run
// the handler in a loop (hundreds of times a second) for ever. It must be
// settled as a final failure after one attempt instead: dead-lettered with
// WithDeadLetter, nacked without requeue (so the queue's own dead-letter
// exchange catches it) without.
func TestConsumerRetryThatCannotFitIsSettledAsFinal(t *testing.T) {
	for _, withDLQ := range []bool{true, false} {
		t.Run(map[bool]string{true: "dead-letter queue", false: "dead-letter exchange"}[withDLQ], func(t *testing.T) {
			url := testenv.AMQP(t)
			conn, ch := dial(t, url)
			q := uniqueQueue(t, url, "retryfit")
			caught := q + ".dlq" // deleted after the test either way
			declare(t, ch, caught, nil)
			opts := []tracebridge.Option{tracebridge.WithRetry(3, 10*time.Millisecond, 50*time.Millisecond)}
			if withDLQ {
				declare(t, ch, q, nil)
				opts = append(opts, tracebridge.WithDeadLetter(caught))
			} else {
				declare(t, ch, q, amqp091.Table{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": caught})
			}
			var calls atomic.Int32
			c := amqp.NewConsumer(url, q, nil, func(context.Context, amqp091.Delivery) error {
				calls.Add(1)
				return errors.New("try again")
			}, opts...)
			runConsumer(t, c.Run)
			msg := padTo(t, amqp091.Publishing{MessageId: "m", DeliveryMode: amqp091.Persistent, Body: []byte("body"),
				Headers: amqp091.Table{"traceparent": validTP}}, conn.Config.FrameSize-20)
			if err := ch.Publish("", q, false, false, msg); err != nil {
				t.Fatal(err)
			}
			var d amqp091.Delivery
			testenv.WaitFor(t, "the message in "+caught, 30*time.Second, func() bool {
				var ok bool
				var err error
				d, ok, err = ch.Get(caught, true)
				if err != nil {
					t.Fatalf("get: %v", err)
				}
				return ok
			})
			if string(d.Body) != "body" || amqp.Carrier(d.Headers).Get("traceparent") != validTP {
				t.Errorf("caught message: body %q traceparent %q", d.Body, amqp.Carrier(d.Headers).Get("traceparent"))
			}
			if withDLQ && amqp.Carrier(d.Headers).Get("dead-letter-attempts") != "1" {
				t.Errorf("dead-letter-attempts %q, want 1", amqp.Carrier(d.Headers).Get("dead-letter-attempts"))
			}
			time.Sleep(300 * time.Millisecond) // a loop would have run the handler again by now
			if n := calls.Load(); n != 1 {
				t.Errorf("handler ran %d times, want 1", n)
			}
		})
	}
}
