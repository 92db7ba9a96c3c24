package amqp

import (
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/propagation"
)

// pubHeaders is the header table a publish sends in place of the caller's
// (which is never modified), and the carrier the journey is injected
// through. amqp091 encodes a Publishing's table before Publish returns and
// keeps no reference to it, so the table is reused, from a pool, by the
// next publish: copying the caller's table then costs no allocation.
//
// An AMQP table holds values as interfaces, and storing a string in one
// allocates its header. The baggage and session-id values repeat from
// message to message of a journey, so Set keeps, per header name, the last
// value it boxed and stores that box again when the same bytes come back.
type pubHeaders struct {
	h     amqp091.Table
	boxes [4]box // the propagator writes at most four headers
}

// box is a string value already held in an interface, under its key.
type box struct {
	key, val string
	v        any
}

var (
	_ propagation.TextMapCarrier = (*pubHeaders)(nil)

	pubHeadersPool = sync.Pool{New: func() any { return &pubHeaders{h: make(amqp091.Table, 8)} }}
)

// maxPooledHeaders bounds the tables kept for reuse: a map never shrinks,
// and clearing one costs its capacity, so the table of a publish with an
// unusually large header set is left to the garbage collector.
const maxPooledHeaders = 32

// getPubHeaders returns a table holding user's headers, to be given back
// with put once the publish has been encoded.
func getPubHeaders(user amqp091.Table) *pubHeaders {
	ph := pubHeadersPool.Get().(*pubHeaders)
	for k, v := range user {
		ph.h[k] = v
	}
	return ph
}

// put clears the table and returns it to the pool. The caller must not use
// the table again: amqp091 has encoded it, and nothing else holds it.
func (ph *pubHeaders) put() {
	if len(ph.h) > maxPooledHeaders {
		return
	}
	clear(ph.h)
	pubHeadersPool.Put(ph)
}

// Get returns the value of key as Carrier does.
func (ph *pubHeaders) Get(key string) string { return Carrier(ph.h).Get(key) }

// Set stores value under key, reusing the interface value of the last Set
// of the same bytes under key.
func (ph *pubHeaders) Set(key, value string) {
	if key == "" {
		ph.h[key] = value // "" marks a free box
		return
	}
	free := -1
	for i := range ph.boxes {
		b := &ph.boxes[i]
		if b.key == key {
			if b.val != value {
				*b = box{key: key, val: value, v: value}
			}
			ph.h[key] = b.v
			return
		}
		if b.key == "" && free < 0 {
			free = i
		}
	}
	if free < 0 {
		ph.h[key] = value // a fifth header name: no cache
		return
	}
	ph.boxes[free] = box{key: key, val: value, v: value}
	ph.h[key] = ph.boxes[free].v
}

// Keys returns the keys of the table.
func (ph *pubHeaders) Keys() []string { return Carrier(ph.h).Keys() }
