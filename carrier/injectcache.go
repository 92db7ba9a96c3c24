package carrier

import (
	"encoding/binary"
	"hash/maphash"
	"reflect"
	"sync/atomic"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"
)

// Inject spends most of its time on baggage: Baggage.Members allocates and
// converts every member, and each member is then sorted, filtered and
// percent-encoded. Yet the same Baggage is injected over and over: a handler
// that publishes several messages, and every journey whose baggage Extract
// served from its cache, which hands out one shared Baggage per header value.
// A Baggage is immutable, so its encoding is remembered by identity.
//
// Both inject caches have encSlots slots. An encoding entry holds the
// encoded header (at most 8192 bytes and the session member) and keeps its
// Baggage alive, which cacheableBaggage limits to the W3C sizes; an output
// entry holds one message's values (at most about 8.5 KiB) and its
// Baggage. A slot of each together holds at most 56 KiB (see
// TestCacheEntryBytes), 3.5 MiB per Propagator.
const encSlots = 64

// bagEnc is the encoded baggage header (session member included) that Inject
// wrote for one Baggage and session, with the filter drops it caused.
type bagEnc struct {
	id    uintptr
	bag   baggage.Baggage // holds the map, so that id cannot be reused while cached
	sess  string
	enc   []byte
	drops dropCounts
}

// encCache is a direct-mapped set of bagEnc, lock-free: entries are never
// modified once published.
type encCache struct {
	seed  maphash.Seed
	slots [encSlots]atomic.Pointer[bagEnc]
	// door holds the hashes of (Baggage, session) pairs seen once; as for
	// parseCache, a pair is remembered only when it comes again, so that
	// injecting a new one every time costs no allocation.
	door [encSlots]atomic.Uint64
}

type encKey struct {
	id   uintptr
	sess string
}

func (c *encCache) hash(id uintptr, sess string) uint64 {
	return maphash.Comparable(c.seed, encKey{id, sess})
}

func (c *encCache) get(h uint64, id uintptr, sess string) *bagEnc {
	if e := c.slots[h%encSlots].Load(); e != nil && e.id == id && e.sess == sess {
		return e
	}
	return nil
}

// admit reports whether the pair hashing to h was seen recently, and
// remembers it if not.
func (c *encCache) admit(h uint64) bool {
	d := &c.door[h%encSlots]
	if d.Load() == h {
		return true
	}
	d.Store(h)
	return false
}

func (c *encCache) put(h uint64, e *bagEnc) { c.slots[h%encSlots].Store(e) }

// cacheableBaggage reports whether the encoding of a Baggage with members
// ms may be cached. An entry keeps its Baggage alive (and so does the
// outCache entry that reuses it), so only a Baggage within the W3C limits
// is: at most 64 members whose strings total at most 8192 bytes. Every
// Baggage that Extract builds is; one that an application grew past them
// with SetMember is encoded afresh each time instead of being pinned.
func cacheableBaggage(ms []baggage.Member) bool {
	if len(ms) > maxBaggageMembers {
		return false
	}
	n := 0
	for _, m := range ms {
		n += len(m.Key()) + len(m.Value())
		for _, p := range m.Properties() {
			v, _ := p.Value()
			n += len(p.Key()) + len(v)
		}
	}
	return n <= maxBaggageBytes
}

// emptyBaggage is the identity of a Baggage without members: the baggage
// header then holds the session member alone, which repeats as much as any
// baggage does.
const emptyBaggage uintptr = 1

// bagIdentity returns the address of b's member map, emptyBaggage when b
// has no members, or 0 when its representation is not the single map this
// relies on; then Inject simply does not use the caches. Only the address
// is read, never the map.
func bagIdentity(b baggage.Baggage) uintptr {
	if b.Len() == 0 {
		return emptyBaggage
	}
	v := reflect.ValueOf(b)
	if v.NumField() != 1 {
		return 0
	}
	if f := v.Field(0); f.Kind() == reflect.Map {
		return f.Pointer()
	}
	return 0
}

// outKey is what a whole Inject output depends on when the span context
// has no tracestate: the traceparent fields, the Baggage's identity (0 for
// none) and the session.
type outKey struct {
	tid   trace.TraceID
	sid   trace.SpanID
	flags trace.TraceFlags
	bag   uintptr
	sess  string
}

// outEnc is one whole Inject output: every value in buf, at spans.
type outEnc struct {
	key   outKey
	bag   baggage.Baggage // keeps key.bag's map alive, as in bagEnc
	buf   []byte
	spans [4][2]int
}

// outCache remembers whole outputs by span ID, direct-mapped and lock-free
// like encCache. A span ID is admitted on its second sighting: a producer
// that starts a span per message injects each span ID once, and then the
// cache costs two atomic operations and no allocation.
type outCache struct {
	seed  maphash.Seed
	slots [encSlots]atomic.Pointer[outEnc]
	door  [encSlots]atomic.Uint64
}

func (c *outCache) slot(sid trace.SpanID) int {
	return int(maphash.Comparable(c.seed, sid) % encSlots)
}

func (c *outCache) get(k *outKey) *outEnc {
	if e := c.slots[c.slot(k.sid)].Load(); e != nil && e.key == *k {
		return e
	}
	return nil
}

func (c *outCache) admit(sid trace.SpanID) bool {
	id := binary.LittleEndian.Uint64(sid[:])
	d := &c.door[c.slot(sid)]
	if d.Load() == id {
		return true
	}
	d.Store(id)
	return false
}

func (c *outCache) put(e *outEnc) { c.slots[c.slot(e.key.sid)].Store(e) }
