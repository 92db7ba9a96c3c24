package amqpframe_test

import (
	"encoding/binary"
	"errors"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"pgregory.net/rapid"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/amqpframe"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// wire records the size of every content-header frame a client writes, by
// parsing the byte stream amqp091 sends to the broker.
type wire struct {
	net.Conn
	mu      sync.Mutex
	buf     []byte
	skipped bool  // the 8-byte protocol header
	headers []int // sizes of content-header frames, overhead included
}

func (w *wire) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf = append(w.buf, p...)
	if !w.skipped && len(w.buf) >= 8 {
		w.buf, w.skipped = w.buf[8:], true
	}
	for w.skipped && len(w.buf) >= 7 {
		size := int(binary.BigEndian.Uint32(w.buf[3:7]))
		if len(w.buf) < 7+size+1 {
			break
		}
		if w.buf[0] == 2 { // frame-header
			w.headers = append(w.headers, 7+size+1)
		}
		w.buf = w.buf[7+size+1:]
	}
	w.mu.Unlock()
	return w.Conn.Write(p)
}

func (w *wire) last() (int, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.headers) == 0 {
		return 0, 0
	}
	return w.headers[len(w.headers)-1], len(w.headers)
}

func dialRecorded(t *testing.T) (*amqp091.Channel, *wire) {
	t.Helper()
	url := testenv.AMQP(t)
	var w *wire
	conn, err := amqp091.DialConfig(url, amqp091.Config{Dial: func(network, addr string) (net.Conn, error) {
		c, err := net.DialTimeout(network, addr, 10*time.Second)
		if err != nil {
			return nil, err
		}
		w = &wire{Conn: c}
		return w, nil
	}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	return ch, w
}

// field draws a header value of any type amqp091 encodes, nested tables
// and arrays included.
func field(depth int) *rapid.Generator[any] {
	scalars := []*rapid.Generator[any]{
		rapid.Just[any](nil),
		rapid.Map(rapid.Bool(), func(v bool) any { return v }),
		rapid.Map(rapid.Byte(), func(v byte) any { return v }),
		rapid.Map(rapid.Int8(), func(v int8) any { return v }),
		rapid.Map(rapid.Int16(), func(v int16) any { return v }),
		rapid.Map(rapid.Int32(), func(v int32) any { return v }),
		rapid.Map(rapid.Int32(), func(v int32) any { return int(v) }),
		rapid.Map(rapid.Int64(), func(v int64) any { return v }),
		rapid.Map(rapid.Float32(), func(v float32) any { return v }),
		rapid.Map(rapid.Float64(), func(v float64) any { return v }),
		rapid.Map(rapid.Int32(), func(v int32) any { return amqp091.Decimal{Scale: 2, Value: v} }),
		rapid.Map(rapid.Int64Range(0, math.MaxInt32), func(v int64) any { return time.Unix(v, 0) }),
		rapid.Map(rapid.StringN(0, 600, -1), func(v string) any { return v }),
		rapid.Map(rapid.SliceOfN(rapid.Byte(), 0, 600), func(v []byte) any { return v }),
	}
	if depth > 0 {
		scalars = append(scalars,
			rapid.Map(rapid.SliceOfN(field(depth-1), 0, 4), func(v []any) any { return v }),
			rapid.Map(table(depth-1), func(v amqp091.Table) any { return v }))
	}
	return rapid.OneOf(scalars...)
}

func table(depth int) *rapid.Generator[amqp091.Table] {
	// Keys up to 300 bytes: amqp091 writes a key's length in 8 bits.
	return rapid.Map(rapid.MapOfN(rapid.StringN(0, 300, 300), field(depth), 0, 6), func(m map[string]any) amqp091.Table {
		return amqp091.Table(m)
	})
}

// TestSizeIsWhatAmqp091Writes measures the content-header frame amqp091
// actually writes to RabbitMQ for random properties and header tables (every
// field type, nested, with keys and short strings over 255 bytes, which
// amqp091 truncates) and checks that Size predicts it to the byte.
func TestSizeIsWhatAmqp091Writes(t *testing.T) {
	ch, w := dialRecorded(t)
	rapid.Check(t, func(rt *rapid.T) {
		short := func(label string) string { return rapid.StringN(0, 300, 300).Draw(rt, label) }
		msg := amqp091.Publishing{
			ContentType: short("content-type"), ContentEncoding: short("content-encoding"),
			CorrelationId: short("correlation-id"), ReplyTo: short("reply-to"), MessageId: short("message-id"),
			Type: short("type"), AppId: short("app-id"),
			DeliveryMode: rapid.Uint8Range(0, 2).Draw(rt, "delivery-mode"),
			Priority:     rapid.Uint8Range(0, 9).Draw(rt, "priority"),
			Body:         []byte("x"),
		}
		// The broker refuses (with a channel error) an expiration that is
		// not a number and a user ID that is not the connection's.
		if rapid.Bool().Draw(rt, "expiration") {
			msg.Expiration = "60000"
		}
		if rapid.Bool().Draw(rt, "user-id") {
			msg.UserId = "guest"
		}
		if rapid.Bool().Draw(rt, "timestamp") {
			msg.Timestamp = time.Unix(rapid.Int64Range(1, math.MaxInt32).Draw(rt, "ts"), 0)
		}
		if rapid.Bool().Draw(rt, "headers") {
			msg.Headers = table(2).Draw(rt, "table")
		}
		_, before := w.last()
		// The default exchange drops a message for a queue that does not
		// exist; only the bytes on the way matter.
		if err := ch.Publish("", "tb.amqpframe.nowhere", false, false, msg); err != nil {
			rt.Fatalf("publish: %v", err)
		}
		got, after := w.last()
		if after != before+1 {
			rt.Fatalf("recorded %d content headers for one publish", after-before)
		}
		if want := amqpframe.Size(&msg); got != want {
			rt.Fatalf("amqp091 wrote a %d-byte content-header frame, Size says %d", got, want)
		}
	})
	// The broker took every frame without closing the connection.
	if _, err := ch.QueueDeclare("", false, true, true, false, nil); err != nil {
		t.Fatalf("a round trip after the publishes: %v", err)
	}
}

func TestSizeAllocatesNothing(t *testing.T) {
	msg := amqp091.Publishing{ContentType: "text/plain", MessageId: "m1", DeliveryMode: 2, Timestamp: time.Now(),
		Headers: amqp091.Table{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
			"baggage": "a=b", "n": int64(3), "nested": amqp091.Table{"x": []any{"y", int32(1)}}}}
	if n := testing.AllocsPerRun(100, func() { amqpframe.Size(&msg) }); n != 0 {
		t.Errorf("Size allocates %v times per call", n)
	}
}

func TestCheckNamesSizeAndLimit(t *testing.T) {
	msg := amqp091.Publishing{Headers: amqp091.Table{"big": strings.Repeat("x", 133120)}}
	err := amqpframe.Check(&msg, 131072)
	if !errors.Is(err, amqpframe.ErrTooLarge) {
		t.Fatalf("Check = %v, want ErrTooLarge", err)
	}
	size := amqpframe.Size(&msg)
	for _, want := range []string{strconv.Itoa(size), "131072"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if err := amqpframe.Check(&msg, size); err != nil {
		t.Errorf("a frame of exactly frame_max refused: %v", err)
	}
	if err := amqpframe.Check(&msg, 0); err != nil {
		t.Errorf("frame_max 0 (no limit) refused: %v", err)
	}
}

const validTP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

// deadLetter is a delivery's headers plus what a dead letter adds.
func deadLetter(extra amqp091.Table) amqp091.Publishing {
	h := amqp091.Table{
		"traceparent":          validTP,
		"retry-previous":       validTP,
		"dead-letter-reason":   strings.Repeat("r", 512),
		"dead-letter-attempts": "3",
		"dead-letter-source":   "orders",
		"tracestate":           "k=" + strings.Repeat("v", 200),
		"baggage":              "b=" + strings.Repeat("v", 300),
	}
	for k, v := range extra {
		h[k] = v
	}
	return amqp091.Publishing{Headers: h, Body: []byte("payload"), MessageId: "m1"}
}

func TestFitDeadLetterTrimsTracingFirstThenLargest(t *testing.T) {
	names := carrier.DefaultNames()
	user := amqp091.Table{"big": strings.Repeat("b", 5000), "mid": strings.Repeat("m", 2000), "small": "s"}
	whole := deadLetter(user)
	full := amqpframe.Size(&whole)

	for _, tc := range []struct {
		name     string
		frameMax int
		dropped  []string
	}{
		{"fits", full, nil},
		{"reason and link", full - 500, []string{"retry-previous", "dead-letter-reason"}},
		{"all of tracing", full - 1000, []string{"retry-previous", "dead-letter-reason", "tracestate", "baggage"}},
		{"then the largest", full - 2000, []string{"retry-previous", "dead-letter-reason", "tracestate", "baggage", "big"}},
		{"two user headers", full - 6200, []string{"retry-previous", "dead-letter-reason", "tracestate", "baggage", "big", "mid"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := deadLetter(user)
			dropped, err := amqpframe.FitDeadLetter(&msg, tc.frameMax, 0, names)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(dropped, ",") != strings.Join(tc.dropped, ",") {
				t.Errorf("dropped %q, want %q", dropped, tc.dropped)
			}
			if size := amqpframe.Size(&msg); size > tc.frameMax {
				t.Errorf("trimmed to %d bytes, frame_max %d", size, tc.frameMax)
			}
			for _, k := range []string{"traceparent", "dead-letter-attempts", "dead-letter-source", "small"} {
				if _, ok := msg.Headers[k]; !ok {
					t.Errorf("%s removed", k)
				}
			}
			list, listed := msg.Headers[amqpframe.DroppedHeader]
			if tc.dropped == nil {
				if listed {
					t.Errorf("nothing dropped, but %s = %v", amqpframe.DroppedHeader, list)
				}
				return
			}
			if list != strings.Join(tc.dropped, ",") {
				t.Errorf("%s = %q, want %q", amqpframe.DroppedHeader, list, strings.Join(tc.dropped, ","))
			}
		})
	}
}

func TestFitDeadLetterKeepsRoomAndRefusesTheImpossible(t *testing.T) {
	names := carrier.DefaultNames()
	msg := deadLetter(amqp091.Table{"big": strings.Repeat("b", 5000)})
	full := amqpframe.Size(&msg)
	if _, err := amqpframe.FitDeadLetter(&msg, full, 100, names); err != nil {
		t.Fatal(err)
	}
	if size := amqpframe.Size(&msg); size+100 > full {
		t.Errorf("reserve ignored: %d + 100 > %d", size, full)
	}

	// Only what is never removed is left, and it does not fit.
	msg = deadLetter(nil)
	_, err := amqpframe.FitDeadLetter(&msg, 200, 0, names)
	if !errors.Is(err, amqpframe.ErrTooLarge) {
		t.Fatalf("FitDeadLetter into 200 bytes = %v, want ErrTooLarge", err)
	}
}

func TestFitDeadLetterDropsAnInvalidTraceparentFirst(t *testing.T) {
	names := carrier.DefaultNames()
	msg := deadLetter(amqp091.Table{"traceparent": strings.Repeat("z", 3000), "user": strings.Repeat("u", 1000)})
	dropped, err := amqpframe.FitDeadLetter(&msg, amqpframe.Size(&msg)-1000, 0, names)
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) != 1 || dropped[0] != "traceparent" {
		t.Errorf("dropped %q, want only the invalid traceparent", dropped)
	}
	if _, ok := msg.Headers["user"]; !ok {
		t.Error("a user header went before an invalid traceparent")
	}
}

func TestFitDeadLetterListIsBoundedAndAppends(t *testing.T) {
	names := carrier.DefaultNames()
	user := amqp091.Table{amqpframe.DroppedHeader: "earlier"}
	for i := range 400 {
		user["key,\n"+strings.Repeat("k", 10)+strconv.Itoa(i)] = strings.Repeat("v", 100)
	}
	msg := deadLetter(user)
	dropped, err := amqpframe.FitDeadLetter(&msg, 4096, 0, names)
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) < 300 {
		t.Fatalf("dropped %d keys", len(dropped))
	}
	list := msg.Headers[amqpframe.DroppedHeader].(string)
	if !strings.HasPrefix(list, "earlier,retry-previous,") {
		t.Errorf("list does not continue the earlier one: %.60q", list)
	}
	if !strings.HasSuffix(list, ",…") || len(list) > 1024+len(",…") {
		t.Errorf("list of %d bytes not capped: ...%q", len(list), list[max(0, len(list)-20):])
	}
	if strings.ContainsAny(list, "\n") || strings.Contains(list, "key,") {
		t.Errorf("separator or control character from a key left in the list: %.80q", list)
	}
	if size := amqpframe.Size(&msg); size > 4096 {
		t.Errorf("trimmed to %d bytes", size)
	}
}

func TestDropRemovesOnlyWhatIsNeeded(t *testing.T) {
	msg := amqp091.Publishing{Headers: amqp091.Table{"user": strings.Repeat("u", 1000),
		"baggage": strings.Repeat("b", 800), "tracestate": strings.Repeat("t", 400)}}
	full := amqpframe.Size(&msg)
	dropped, err := amqpframe.Drop(&msg, full-500, []string{"baggage", "tracestate"})
	if err != nil || len(dropped) != 1 || dropped[0] != "baggage" {
		t.Fatalf("Drop = %q, %v; want [baggage]", dropped, err)
	}
	if _, ok := msg.Headers["tracestate"]; !ok {
		t.Error("tracestate dropped though baggage was enough")
	}
	_, err = amqpframe.Drop(&msg, 500, []string{"tracestate"})
	if !errors.Is(err, amqpframe.ErrTooLarge) {
		t.Fatalf("Drop below the user's own size = %v, want ErrTooLarge", err)
	}
}
