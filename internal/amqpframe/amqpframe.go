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
func Size(msg *amqp091.Publishing) int {
	n := frameOverhead + headerFixed
	for _, s := range [...]string{msg.ContentType, msg.ContentEncoding, msg.CorrelationId, msg.ReplyTo,
		msg.Expiration, msg.MessageId, msg.Type, msg.UserId, msg.AppId} {
		if len(s) > 0 {
			n += shortstr(s)
		}
	}
	if len(msg.Headers) > 0 {
		n += tableSize(msg.Headers)
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
	return n
}

// shortstr is amqp091's writeShortstr: a length octet and as many bytes as
// it says. amqp091 truncates the length to 8 bits and writes that many, so
// a longer string costs less than its length, and so it is counted here.
func shortstr(s string) int { return 1 + int(uint8(len(s))) }

func tableSize(t amqp091.Table) int {
	n := 4 // the long-string length of the encoded table
	for k, v := range t {
		n += EntrySize(k, v)
	}
	return n
}

// EntrySize is what the table entry k: v adds to a header table.
func EntrySize(k string, v any) int { return shortstr(k) + fieldSize(v) }

// fieldSize is amqp091's writeField: a type octet and the value. A type
// amqp091 cannot encode counts as nothing: Table.Validate refuses the
// publish before anything is sent.
func fieldSize(v any) int {
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
			n += fieldSize(e)
		}
		return n
	case amqp091.Table:
		return 1 + tableSize(v)
	}
	return 0
}

// Check returns nil when msg's content header fits in a frame of frameMax
// bytes (0: the connection set no limit), and otherwise an error wrapping
// ErrTooLarge that names both sizes.
func Check(msg *amqp091.Publishing, frameMax int) error {
	if size := Size(msg); frameMax > 0 && size > frameMax {
		return tooLarge(msg, size, frameMax)
	}
	return nil
}

func tooLarge(msg *amqp091.Publishing, size, frameMax int) error {
	var headers int
	if len(msg.Headers) > 0 {
		headers = tableSize(msg.Headers)
	}
	return fmt.Errorf("%w: its content header frame would be %d bytes (%d of them the header table), over the connection's frame_max of %d bytes",
		ErrTooLarge, size, headers, frameMax)
}

// Drop removes headers of msg, in the order of keys (all present in
// msg.Headers), until its content header fits in a frame of frameMax bytes,
// and returns the keys it removed. When removing them all is not enough,
// the error wraps ErrTooLarge and names the size without them.
func Drop(msg *amqp091.Publishing, frameMax int, keys []string) ([]string, error) {
	size := Size(msg)
	if frameMax <= 0 || size <= frameMax {
		return nil, nil
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
	if size := Size(msg); size > frameMax {
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
func FitDeadLetter(msg *amqp091.Publishing, frameMax, reserve int, names carrier.Names) ([]string, error) {
	size := Size(msg) + reserve
	if frameMax <= 0 || size <= frameMax {
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
	if size := Size(msg) + reserve; size > frameMax {
		return dropped, tooLarge(msg, size, frameMax)
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
