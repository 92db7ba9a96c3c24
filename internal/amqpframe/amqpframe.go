// Package amqpframe sizes the content-header frame of an AMQP 0-9-1 publish
// exactly as github.com/rabbitmq/amqp091-go encodes it, so that a message
// whose properties and headers do not fit in one frame is refused before it
// is sent, and a dead letter is trimmed until it fits.
//
// AMQP cannot split a content header over frames, and amqp091 does not
// check: it writes the oversized frame, returns nil, and the broker closes
// the whole connection (frame_too_large). Without publisher confirms the
// message is gone without an error, and every channel of the connection
// goes with it, with the unacked deliveries of its consumers.
package amqpframe

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/tracebridge/tracebridge/carrier"
)

// ErrTooLarge is wrapped by the error of a publish whose content header
// would not fit in one frame of the connection.
var ErrTooLarge = errors.New("amqp: message properties and headers do not fit in one frame")

// frameOverhead is what a frame adds to its payload: type, channel and size
// before it, the frame-end octet after it. frame_max counts them too.
const frameOverhead = 1 + 2 + 4 + 1

// headerFixed is the content header's payload before the properties:
// class, weight, body size and the property flags.
const headerFixed = 2 + 2 + 8 + 2

// DroppedHeader names the header a trimmed dead letter lists the keys it
// lost in, comma-separated.
const DroppedHeader = "dead-letter-dropped-headers"

// maxDroppedList bounds DroppedHeader's value; a longer list ends in ",…".
const maxDroppedList = 1024

// Size returns the size in bytes of the content-header frame amqp091 writes
// for msg, frame overhead included: what the connection's frame_max limits.
// It walks the header table once and allocates nothing; it encodes nothing.
//
// In the same walk it looks for short strings longer than MaxShortString
// bytes (a property such as MessageId, or a header key at any depth) and
// returns an error wrapping ErrShortStringTooLong naming the first it met:
// amqp091 would send only the string's length modulo 256 bytes of it,
// without an error. The size is then that of the corrupted frame.
func Size(msg *amqp091.Publishing) (int, error) {
	var l long
	n := frameOverhead + headerFixed
	for _, p := range [...]struct{ name, s string }{{"ContentType", msg.ContentType},
		{"ContentEncoding", msg.ContentEncoding}, {"CorrelationId", msg.CorrelationId}, {"ReplyTo", msg.ReplyTo},
		{"Expiration", msg.Expiration}, {"MessageId", msg.MessageId}, {"Type", msg.Type}, {"UserId", msg.UserId},
		{"AppId", msg.AppId}} {
		if len(p.s) > 0 {
			n += l.shortstr(p.name, "", p.s)
		}
	}
	if len(msg.Headers) > 0 {
		n += tableSize(msg.Headers, "", &l)
	}
	if msg.DeliveryMode > 0 {
		n++
	}
	if msg.Priority > 0 {
		n++
	}
	if !msg.Timestamp.IsZero() {
		n += 8
	}
	return n, l.err()
}

// MaxShortString is the longest string, in bytes, an AMQP short string
// (a property such as MessageId, a header key, an exchange or routing key)
// can carry: its length is one octet.
const MaxShortString = 255

// ErrShortStringTooLong is wrapped by the error of a publish with a short
// string longer than MaxShortString bytes. amqp091 does not refuse one: it
// writes the length modulo 256 and as many bytes, so a 300-byte MessageId
// arrives as its first 44 bytes, and a long header key as another key.
var ErrShortStringTooLong = errors.New("amqp: short string longer than 255 bytes")

// long is the first over-long short string a walk met. Recording it costs
// no allocation; the error is made only when there is one.
type long struct {
	field string // the property, or "header key"
	under string // for a key in a nested table: the top-level header it is under
	s     string
}

// shortstr is amqp091's writeShortstr: a length octet and as many bytes as
// it says. amqp091 truncates the length to 8 bits and writes that many, so
// a longer string costs less than its length, and so it is counted here;
// l notes it as the first over-long string unless one came before.
func (l *long) shortstr(field, under, s string) int {
	if len(s) > MaxShortString && l.field == "" {
		*l = long{field: field, under: under, s: s}
	}
	return 1 + int(uint8(len(s)))
}

func (l *long) err() error {
	if l.field == "" {
		return nil
	}
	return shortStringErr(l.field, l.under, l.s)
}

// shortStringErr names field (and the start of s, for a header key, which
// has no other name) and its length.
func shortStringErr(field, under, s string) error {
	what := field
	if field == headerKey {
		what = fmt.Sprintf("header key %q…", prefix(s, 32))
		if under != "" {
			what += fmt.Sprintf(" (nested in header %q)", prefix(under, 64))
		}
	}
	return fmt.Errorf("%w: %s is %d bytes; amqp091 would send only its first %d",
		ErrShortStringTooLong, what, len(s), uint8(len(s)))
}

// headerKey is the field name long records for a header-table key.
const headerKey = "header key"

// prefix is s cut to at most n bytes, not inside a UTF-8 sequence.
func prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// ShortString returns an error wrapping ErrShortStringTooLong, naming field
// and the length, when s is longer than MaxShortString bytes: for a short
// string outside the content header, such as an exchange or routing key.
func ShortString(field, s string) error {
	if len(s) > MaxShortString {
		return shortStringErr(field, "", s)
	}
	return nil
}

// CheckNames returns an error wrapping ErrShortStringTooLong when a header
// name of n is too long to be an AMQP header key, so that a publisher or
// consumer configured with one refuses to start rather than refuse (or,
// unchecked, corrupt) every message it sends.
func CheckNames(n carrier.Names) error {
	for _, f := range [...]struct{ name, s string }{{"Traceparent", n.Traceparent}, {"Tracestate", n.Tracestate},
		{"Baggage", n.Baggage}, {"SessionID", n.SessionID}, {"RetryAttempt", n.RetryAttempt},
		{"RetryPrevious", n.RetryPrevious}, {"DeadLetterReason", n.DeadLetterReason},
		{"DeadLetterAttempts", n.DeadLetterAttempts}, {"DeadLetterSource", n.DeadLetterSource}} {
		if err := ShortString("header name carrier.Names."+f.name, f.s); err != nil {
			return err
		}
	}
	return nil
}

// tableSize is amqp091's writeTable. under is the top-level header a nested
// table is the value (or inside the value) of, for naming an over-long key.
func tableSize(t amqp091.Table, under string, l *long) int {
	n := 4 // the long-string length of the encoded table
	for k, v := range t {
		n += l.shortstr(headerKey, under, k)
		if under == "" {
			n += fieldSize(v, k, l)
		} else {
			n += fieldSize(v, under, l)
		}
	}
	return n
}

// EntrySize is what the table entry k: v adds to a header table.
func EntrySize(k string, v any) int {
	var l long // sizing only: Size reports over-long strings
	return l.shortstr(headerKey, "", k) + fieldSize(v, k, &l)
}

// fieldSize is amqp091's writeField: a type octet and the value. A type
// amqp091 cannot encode counts as nothing: Table.Validate refuses the
// publish before anything is sent.
func fieldSize(v any, under string, l *long) int {
	switch v := v.(type) {
	case nil:
		return 1
	case bool, byte, int8:
		return 2
	case int16:
		return 3
	case int, int32, float32:
		return 5
	case amqp091.Decimal:
		return 6
	case int64, float64, time.Time:
		return 9
	case string:
		return 5 + len(v)
	case []byte:
		return 5 + len(v)
	case []any:
		n := 5
		for _, e := range v {
			n += fieldSize(e, under, l)
		}
		return n
	case amqp091.Table:
		return 1 + tableSize(v, under, l)
	}
	return 0
}

// Check returns nil when msg's content header fits in a frame of frameMax
// bytes (0: the connection set no limit) and amqp091 can encode it intact.
// Otherwise the error wraps ErrShortStringTooLong (see Size) or ErrTooLarge,
// naming the sizes.
func Check(msg *amqp091.Publishing, frameMax int) error {
	size, err := Size(msg)
	if err != nil {
		return err
	}
	if frameMax > 0 && size > frameMax {
		return tooLarge(msg, size, frameMax)
	}
	return nil
}

func tooLarge(msg *amqp091.Publishing, size, frameMax int) error {
	var headers int
	if len(msg.Headers) > 0 {
		var l long
		headers = tableSize(msg.Headers, "", &l)
	}
	return fmt.Errorf("%w: its content header frame would be %d bytes (%d of them the header table), over the connection's frame_max of %d bytes",
		ErrTooLarge, size, headers, frameMax)
}

// Drop removes headers of msg, in the order of keys (all present in
// msg.Headers), until its content header fits in a frame of frameMax bytes,
// and returns the keys it removed. When removing them all is not enough,
// the error wraps ErrTooLarge and names the size without them. A message
// with an over-long short string is refused as Size refuses it, untouched.
func Drop(msg *amqp091.Publishing, frameMax int, keys []string) ([]string, error) {
	size, err := Size(msg)
	if err != nil || frameMax <= 0 || size <= frameMax {
		return nil, err
	}
	n := 0
	for need := size; n < len(keys) && need > frameMax; n++ {
		need -= EntrySize(keys[n], msg.Headers[keys[n]])
	}
	for _, k := range keys[:n] {
		delete(msg.Headers, k)
	}
	// Size is the authority: the sum above ignores the table's length
	// prefix, which goes too when the table is left empty.
	if size, _ := Size(msg); size > frameMax {
		return keys[:n], tooLarge(msg, size, frameMax)
	}
	return keys[:n], nil
}

// FitDeadLetter trims a dead letter (a delivery's headers plus the
// dead-letter-* and retry-previous headers) until its content header fits
// in frameMax bytes with reserve bytes to spare, and returns the keys it
// removed. It removes, in this order and only as many as needed: a
// traceparent that is not valid, retry-previous, dead-letter-reason,
// tracestate and baggage (what tracing added), then the remaining headers
// largest first. It never removes a valid traceparent (the journey),
// dead-letter-attempts or dead-letter-source, and lists the
// removed keys in DroppedHeader (after those of an earlier trim). When even
// that is not enough the error wraps ErrTooLarge: the caller must then
// keep the message (leave it unacked), never drop it.
//
// A dead letter with a short string over MaxShortString bytes is refused
// untouched, with Size's error, and kept the same way. A delivery cannot
// carry one (the wire format has no room for its length), so only a header
// the caller added could be one, and that is a mistake to report, not data
// to trim away.
func FitDeadLetter(msg *amqp091.Publishing, frameMax, reserve int, names carrier.Names) ([]string, error) {
	size, err := Size(msg)
	if err != nil {
		return nil, err
	}
	if size += reserve; frameMax <= 0 || size <= frameMax {
		return nil, nil
	}
	_, validTP := carrier.ParseTraceparent(text(msg.Headers[names.Traceparent]))
	keep := func(k string) bool {
		return k == names.Traceparent && validTP || k == names.DeadLetterAttempts || k == names.DeadLetterSource || k == DroppedHeader
	}
	var order []string
	first := []string{names.Traceparent, names.RetryPrevious, names.DeadLetterReason, names.Tracestate, names.Baggage}
	for _, k := range first {
		if _, ok := msg.Headers[k]; ok && !keep(k) && !slices.Contains(order, k) {
			order = append(order, k)
		}
	}
	rest := make([]string, 0, len(msg.Headers))
	for k := range msg.Headers {
		if !keep(k) && !slices.Contains(first, k) {
			rest = append(rest, k)
		}
	}
	slices.SortFunc(rest, func(a, b string) int {
		return cmp.Or(cmp.Compare(EntrySize(b, msg.Headers[b]), EntrySize(a, msg.Headers[a])), cmp.Compare(a, b))
	})
	order = append(order, rest...)

	// Each removal saves its entry and lengthens the list of removed keys,
	// whose header is itself part of the table.
	prior, _ := msg.Headers[DroppedHeader].(string)
	if v, ok := msg.Headers[DroppedHeader]; ok {
		size -= EntrySize(DroppedHeader, v) // rewritten below
	}
	listed := len(prior) // bytes of the list, before the cap
	listSize := func() int { return EntrySize(DroppedHeader, "") + min(listed, maxDroppedList+len(",…")) }
	n := 0
	for ; n < len(order) && size+listSize() > frameMax; n++ {
		size -= EntrySize(order[n], msg.Headers[order[n]])
		if listed > 0 {
			listed++ // the comma
		}
		listed += len(order[n])
	}
	dropped := order[:n]
	for _, k := range dropped {
		delete(msg.Headers, k)
	}
	msg.Headers[DroppedHeader] = droppedList(prior, dropped)
	// Size is the authority; the sum above only chose how many to remove.
	if size, _ := Size(msg); size+reserve > frameMax {
		return dropped, tooLarge(msg, size+reserve, frameMax)
	}
	return dropped, nil
}

// text is a header value as carriers read it: a string or a byte array.
func text(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// droppedList appends keys to the list prior with commas, keeping at most
// maxDroppedList bytes and then ",…". A comma or control character in a
// key becomes '_', byte for byte, so the list stays one parsable line.
func droppedList(prior string, keys []string) string {
	b := append(make([]byte, 0, len(prior)+64), prior...)
	for _, k := range keys {
		if len(b) > 0 {
			b = append(b, ',')
		}
		for j := 0; j < len(k); j++ {
			c := k[j]
			if c == ',' || c < 0x20 || c == 0x7f {
				c = '_'
			}
			b = append(b, c)
		}
	}
	if len(b) > maxDroppedList {
		b = b[:maxDroppedList]
		for len(b) > 0 && !utf8.RuneStart(b[len(b)-1]) {
			b = b[:len(b)-1] // do not end inside a UTF-8 sequence
		}
		if len(b) > 0 && b[len(b)-1] >= utf8.RuneSelf {
			b = b[:len(b)-1]
		}
		b = append(b, ",…"...)
	}
	return string(b)
}
