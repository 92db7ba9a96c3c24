package kafka

import (
	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/propagation"

	"github.com/tracebridge/tracebridge/carrier"
)

// Carrier adapts a message's record headers to the tracebridge and
// OpenTelemetry propagators. Use it to inject or extract a journey by hand,
// for example when building messages for a client other than Writer.
//
// Keys compare case-sensitively, as Kafka's do. Set and SetBytes replace
// every existing header of the key with one, so a forwarded message never
// carries two traceparent headers. Reads see every entry, so the propagator
// treats duplicate traceparent headers as invalid and joins repeated
// tracestate and baggage headers. Carrier edits the slice in place: give it
// headers no other message shares.
type Carrier struct{ h *[]kafkago.Header }

var (
	_ carrier.ByteCarrier        = Carrier{}
	_ propagation.ValuesGetter   = Carrier{}
	_ propagation.TextMapCarrier = Carrier{}
)

// NewCarrier returns a Carrier over *headers, typically &msg.Headers.
func NewCarrier(headers *[]kafkago.Header) Carrier { return Carrier{h: headers} }

// Len returns the number of headers.
func (c Carrier) Len() int { return len(*c.h) }

// At returns the i-th header.
func (c Carrier) At(i int) (string, []byte) {
	h := &(*c.h)[i]
	return h.Key, h.Value
}

// Get returns the first value of key, or "".
func (c Carrier) Get(key string) string {
	for i := range *c.h {
		if h := &(*c.h)[i]; h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// Values returns every value of key, in order.
func (c Carrier) Values(key string) []string {
	var out []string
	for i := range *c.h {
		if h := &(*c.h)[i]; h.Key == key {
			out = append(out, string(h.Value))
		}
	}
	return out
}

// Keys returns the header keys, repeated keys included.
func (c Carrier) Keys() []string {
	out := make([]string, len(*c.h))
	for i := range *c.h {
		out[i] = (*c.h)[i].Key
	}
	return out
}

// Set replaces every header named key by one with value.
func (c Carrier) Set(key, value string) {
	// A copy, not the string's memory: header bytes belong to the message,
	// and a user may reuse or edit them, which read-only string data forbids.
	c.SetBytes(key, []byte(value))
}

// SetBytes replaces every header named key by one with value, keeping the
// position of the first, so that header order stays stable across hops.
func (c Carrier) SetBytes(key string, value []byte) {
	hs := *c.h
	first := -1
	w := 0
	for i := range hs {
		if hs[i].Key == key {
			if first >= 0 {
				continue // a later duplicate: drop it
			}
			first = w
			hs[i].Value = value
		}
		if w != i {
			hs[w] = hs[i]
		}
		w++
	}
	if first < 0 {
		*c.h = append(hs, kafkago.Header{Key: key, Value: value})
		return
	}
	clear(hs[w:]) // do not keep dropped values reachable
	*c.h = hs[:w]
}
