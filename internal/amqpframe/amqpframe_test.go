package amqpframe_test

import (
	"encoding/binary"
	"errors"
	"maps"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

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

// shortString draws a property or header key: any text up to 300 bytes,
// and often one of 250 to 300 bytes, around the 255 amqp091 can carry (it
// writes the length in 8 bits), which short random text would rarely reach.
func shortString() *rapid.Generator[string] {
	return rapid.OneOf(rapid.StringN(0, 300, 300),
		rapid.Map(rapid.IntRange(250, 300), func(n int) string { return strings.Repeat("s", n) }))
}

func table(depth int) *rapid.Generator[amqp091.Table] {
	return rapid.Map(rapid.MapOfN(shortString(), field(depth), 0, 6), func(m map[string]any) amqp091.Table {
		return amqp091.Table(m)
	})
}

// TestSizeIsWhatAmqp091Writes measures the content-header frame amqp091
// actually writes to RabbitMQ for random properties and header tables (every
// field type, nested, with keys and short strings over 255 bytes, which
// amqp091 truncates) and checks that Size predicts it to the byte, and
// reports an error exactly when there is such a string.
func TestSizeIsWhatAmqp091Writes(t *testing.T) {
	ch, w := dialRecorded(t)
	rapid.Check(t, func(rt *rapid.T) {
		short := func(label string) string { return shortString().Draw(rt, label) }
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
		want, err := amqpframe.Size(&msg)
		if got != want {
			rt.Fatalf("amqp091 wrote a %d-byte content-header frame, Size says %d", got, want)
		}
		if long := overlong(&msg); long != errors.Is(err, amqpframe.ErrShortStringTooLong) || long != (err != nil) {
			rt.Fatalf("message with an over-long short string: %v; Size's error: %v", long, err)
		}
	})
	// The broker took every frame without closing the connection.
	if _, err := ch.QueueDeclare("", false, true, true, false, nil); err != nil {
		t.Fatalf("a round trip after the publishes: %v", err)
	}
}

// overlong says whether msg has a short string amqp091 truncates: a
// property or a header key, at any depth, over 255 bytes.
func overlong(msg *amqp091.Publishing) bool {
	for _, s := range []string{msg.ContentType, msg.ContentEncoding, msg.CorrelationId, msg.ReplyTo,
		msg.Expiration, msg.MessageId, msg.Type, msg.UserId, msg.AppId} {
		if len(s) > 255 {
			return true
		}
	}
	return overlongField(msg.Headers)
}

func overlongField(v any) bool {
	switch v := v.(type) {
	case amqp091.Table:
		for k, e := range v {
			if len(k) > 255 || overlongField(e) {
				return true
			}
		}
	case []any:
		for _, e := range v {
			if overlongField(e) {
				return true
			}
		}
	}
	return false
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
	size := frameSize(t, &msg)
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
	full := frameSize(t, &whole)

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
			if size := frameSize(t, &msg); size > tc.frameMax {
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
	full := frameSize(t, &msg)
	if _, err := amqpframe.FitDeadLetter(&msg, full, 100, names); err != nil {
		t.Fatal(err)
	}
	if size := frameSize(t, &msg); size+100 > full {
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
	dropped, err := amqpframe.FitDeadLetter(&msg, frameSize(t, &msg)-1000, 0, names)
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
	if size := frameSize(t, &msg); size > 4096 {
		t.Errorf("trimmed to %d bytes", size)
	}
}

func TestDropRemovesOnlyWhatIsNeeded(t *testing.T) {
	msg := amqp091.Publishing{Headers: amqp091.Table{"user": strings.Repeat("u", 1000),
		"baggage": strings.Repeat("b", 800), "tracestate": strings.Repeat("t", 400)}}
	full := frameSize(t, &msg)
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

// TestSizeNamesAnOverlongShortString checks that Size, Check, Drop and
// FitDeadLetter refuse a short string of 256 bytes or more wherever AMQP
// has one (each property, a header key at any depth), naming it and its
// length, and leave the message untouched; 255 bytes is fine.
func TestSizeNamesAnOverlongShortString(t *testing.T) {
	long := strings.Repeat("é", 150) // 300 bytes, cut only between runes
	for _, tc := range []struct {
		name string
		msg  amqp091.Publishing
		want []string
	}{
		{"ContentType", amqp091.Publishing{ContentType: long}, []string{"ContentType is 300 bytes", "first 44"}},
		{"ContentEncoding", amqp091.Publishing{ContentEncoding: long}, []string{"ContentEncoding is 300 bytes"}},
		{"CorrelationId", amqp091.Publishing{CorrelationId: long}, []string{"CorrelationId is 300 bytes"}},
		{"ReplyTo", amqp091.Publishing{ReplyTo: long}, []string{"ReplyTo is 300 bytes"}},
		{"Expiration", amqp091.Publishing{Expiration: long}, []string{"Expiration is 300 bytes"}},
		{"MessageId", amqp091.Publishing{MessageId: long}, []string{"MessageId is 300 bytes"}},
		{"Type", amqp091.Publishing{Type: long}, []string{"Type is 300 bytes"}},
		{"UserId", amqp091.Publishing{UserId: long}, []string{"UserId is 300 bytes"}},
		{"AppId", amqp091.Publishing{AppId: long}, []string{"AppId is 300 bytes"}},
		{"256 bytes", amqp091.Publishing{MessageId: strings.Repeat("m", 256)}, []string{"MessageId is 256 bytes", "first 0"}},
		{"top-level key", amqp091.Publishing{Headers: amqp091.Table{long: 1}}, []string{"header key", "is 300 bytes"}},
		{"nested key", amqp091.Publishing{Headers: amqp091.Table{"a": "b", "outer": amqp091.Table{"x": amqp091.Table{long: nil}}}},
			[]string{"header key", `nested in header "outer"`, "is 300 bytes"}},
		{"key in an array", amqp091.Publishing{Headers: amqp091.Table{"arr": []any{1, []any{amqp091.Table{long: "v"}}}}},
			[]string{`nested in header "arr"`, "is 300 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size, err := amqpframe.Size(&tc.msg)
			if !errors.Is(err, amqpframe.ErrShortStringTooLong) {
				t.Fatalf("Size = %d, %v; want ErrShortStringTooLong", size, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %s", err, w)
				}
			}
			if !utf8.ValidString(err.Error()) {
				t.Errorf("error cuts a key inside a UTF-8 sequence: %q", err)
			}
			if err := amqpframe.Check(&tc.msg, 0); !errors.Is(err, amqpframe.ErrShortStringTooLong) {
				t.Errorf("Check without a frame limit = %v", err)
			}
			n := len(tc.msg.Headers)
			if dropped, err := amqpframe.Drop(&tc.msg, 1, slices.Collect(maps.Keys(tc.msg.Headers))); !errors.Is(err, amqpframe.ErrShortStringTooLong) || len(dropped) != 0 || len(tc.msg.Headers) != n {
				t.Errorf("Drop = %q, %v; want it refused untouched", dropped, err)
			}
			if tc.msg.Headers == nil {
				tc.msg.Headers = amqp091.Table{}
			}
			n = len(tc.msg.Headers)
			if dropped, err := amqpframe.FitDeadLetter(&tc.msg, 100, 0, carrier.DefaultNames()); !errors.Is(err, amqpframe.ErrShortStringTooLong) || len(dropped) != 0 || len(tc.msg.Headers) != n {
				t.Errorf("FitDeadLetter = %q, %v; want it refused untouched", dropped, err)
			}
		})
	}

	s255 := strings.Repeat("x", 255)
	ok := amqp091.Publishing{ContentType: s255, ContentEncoding: s255, CorrelationId: s255, ReplyTo: s255,
		Expiration: s255, MessageId: s255, Type: s255, UserId: s255, AppId: s255,
		Headers: amqp091.Table{s255: amqp091.Table{s255: []any{amqp091.Table{s255: 1}}}}}
	if _, err := amqpframe.Size(&ok); err != nil {
		t.Errorf("255-byte short strings refused: %v", err)
	}
	// The first over-long string is the one named; a property comes
	// before the table.
	two := amqp091.Publishing{AppId: long, Headers: amqp091.Table{long: 1}}
	if _, err := amqpframe.Size(&two); err == nil || !strings.Contains(err.Error(), "AppId") {
		t.Errorf("Size with two over-long strings = %v, want the AppId named", err)
	}
}

func TestCheckNamesAndShortString(t *testing.T) {
	if err := amqpframe.CheckNames(carrier.DefaultNames()); err != nil {
		t.Fatalf("default names refused: %v", err)
	}
	if err := amqpframe.CheckNames(carrier.Names{Baggage: strings.Repeat("b", 255)}); err != nil {
		t.Errorf("a 255-byte name refused: %v", err)
	}
	err := amqpframe.CheckNames(carrier.Names{DeadLetterSource: strings.Repeat("s", 256)})
	if !errors.Is(err, amqpframe.ErrShortStringTooLong) || !strings.Contains(err.Error(), "carrier.Names.DeadLetterSource is 256 bytes") {
		t.Errorf("CheckNames with a 256-byte name = %v", err)
	}
	if err := amqpframe.ShortString("routing key", strings.Repeat("r", 255)); err != nil {
		t.Errorf("255-byte routing key refused: %v", err)
	}
	if err := amqpframe.ShortString("routing key", strings.Repeat("r", 511)); !errors.Is(err, amqpframe.ErrShortStringTooLong) ||
		!strings.Contains(err.Error(), "routing key is 511 bytes; amqp091 would send only its first 255") {
		t.Errorf("ShortString of 511 bytes = %v", err)
	}
}
