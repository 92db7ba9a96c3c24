package amqp

import (
	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/propagation"
)

// Carrier adapts the headers of a Publishing or Delivery to a
// propagation.TextMapCarrier, so any OpenTelemetry propagator can read and
// write them.
//
// Set writes string values, which every AMQP client can read. Get accepts
// string and []byte values (some clients write header values as byte
// arrays) and treats any other type as absent without an error, so a
// header of the wrong type never fails a message. Keys are case-sensitive,
// as AMQP table keys are. Set on a Carrier over a nil table panics like any
// nil map; make the table first.
type Carrier amqp091.Table

var (
	_ propagation.TextMapCarrier = Carrier(nil)
	_ propagation.ValuesGetter   = Carrier(nil)
)

// Get returns the value of key when it is a string or []byte, and ""
// otherwise.
func (c Carrier) Get(key string) string {
	switch v := c[key].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// Values returns the value of key as a one-element slice, or nil when it is
// absent or not a string or []byte. An AMQP table holds one value per key,
// so there are never more.
func (c Carrier) Values(key string) []string {
	if v := c.Get(key); v != "" {
		return []string{v}
	}
	return nil
}

// Set stores value under key, replacing what was there.
func (c Carrier) Set(key, value string) { c[key] = value }

// Keys returns the keys of the table.
func (c Carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// deliveryCarrier is Carrier without Values, for reading a delivery's
// journey: a table holds one value per key, so a propagator's Get path
// reads exactly what Values would, without a one-element slice for every
// header present (three allocations per delivery).
type deliveryCarrier amqp091.Table

func (c deliveryCarrier) Get(key string) string { return Carrier(c).Get(key) }
func (c deliveryCarrier) Set(key, value string) { Carrier(c).Set(key, value) }
func (c deliveryCarrier) Keys() []string        { return Carrier(c).Keys() }
