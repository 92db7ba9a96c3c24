package nats

import (
	"strings"
	"sync"

	natsgo "github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
)

// HeaderCarrier adapts a nats.Header to the propagators. nats.Header is
// case-sensitive, but a header may have passed through code (or another
// client) that capitalised it, so reads match keys case-insensitively and
// writes use lowercase keys, replacing every case variant: a forwarded
// message never carries two traceparent entries.
type HeaderCarrier natsgo.Header

var (
	_ propagation.TextMapCarrier = HeaderCarrier(nil)
	_ propagation.ValuesGetter   = HeaderCarrier(nil)
)

// Get returns the first value of key, matched case-insensitively.
func (c HeaderCarrier) Get(key string) string {
	if v := c.Values(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// Values returns every value of key across all its case variants, so the
// propagator sees a "Traceparent" next to a "traceparent" as the duplicate
// it is and treats the traceparent as invalid.
func (c HeaderCarrier) Values(key string) []string {
	exact, ok := c[key]
	if ok && len(c) == 1 || len(c) == 0 {
		return exact
	}
	var merged []string
	for k, v := range c {
		if len(k) != len(key) || k == key || !strings.EqualFold(k, key) {
			continue
		}
		if merged == nil {
			merged = append(make([]string, 0, len(exact)+len(v)), exact...)
		}
		merged = append(merged, v...)
	}
	if merged != nil {
		return merged
	}
	return exact
}

// Set replaces every case variant of key with the lowercase key holding
// value alone.
func (c HeaderCarrier) Set(key, value string) {
	c.set(key, []string{value})
}

func (c HeaderCarrier) set(key string, v []string) {
	key = lower(key)
	if len(c) > 0 {
		for k := range c {
			if len(k) == len(key) && k != key && strings.EqualFold(k, key) {
				delete(c, k)
			}
		}
	}
	c[key] = v
}

// Keys lists the keys present, as stored.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// readCarrier is the carrier a delivered message's journey is read
// through. HeaderCarrier looks at every key on every read for case
// variants of the name it reads; a header whose keys are all lowercase
// (what tracebridge and most clients write) cannot hold a variant of a
// lowercase name, so one look at its keys here spares each of the
// propagator's reads its own.
func readCarrier(h natsgo.Header) propagation.TextMapCarrier {
	for k := range h {
		if hasUpper(k) {
			return HeaderCarrier(h)
		}
	}
	return lowerHeader(h)
}

// lowerHeader is a HeaderCarrier over a header whose keys are all
// lowercase (see readCarrier): a lowercase name is read with one lookup.
type lowerHeader natsgo.Header

var _ propagation.ValuesGetter = lowerHeader(nil)

func (c lowerHeader) Get(key string) string {
	if v := c.Values(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c lowerHeader) Values(key string) []string {
	if hasUpper(key) {
		return HeaderCarrier(c).Values(key)
	}
	return c[key]
}

func (c lowerHeader) Set(key, value string) { HeaderCarrier(c).Set(key, value) }

func (c lowerHeader) Keys() []string { return HeaderCarrier(c).Keys() }

// lower returns s in lowercase without allocating when it already is, which
// is the case for every name the propagators use by default.
func lower(s string) string {
	if hasUpper(s) {
		return strings.ToLower(s)
	}
	return s
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return true
		}
	}
	return false
}

// injector writes a message's headers with one allocation for all their
// value slices instead of one per header: the propagator sets up to four.
type injector struct {
	h    HeaderCarrier
	slab [4]string
	n    int
	// owned is set when h is the package's own empty map (see
	// Conn.Publish): it holds only lowercase keys written here, so there
	// are no case variants to look for.
	owned bool
}

// injectors holds injectors with their header maps for messages the
// package builds and discards itself (see Conn.Publish).
var injectors = sync.Pool{New: func() any { return &injector{h: make(HeaderCarrier, 4), owned: true} }}

// reset empties in for reuse, dropping its references to the values.
func (in *injector) reset() {
	clear(in.h)
	in.slab = [4]string{}
	in.n = 0
}

func (in *injector) Get(key string) string {
	if in.owned {
		if v := in.h[lower(key)]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	return in.h.Get(key)
}
func (in *injector) Keys() []string { return in.h.Keys() }

func (in *injector) Set(key, value string) {
	if in.n == len(in.slab) {
		in.h.Set(key, value)
		return
	}
	in.slab[in.n] = value
	if v := in.slab[in.n : in.n+1 : in.n+1]; in.owned {
		in.h[lower(key)] = v
	} else {
		in.h.set(key, v)
	}
	in.n++
}
