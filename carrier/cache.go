package carrier

import (
	"hash/maphash"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"
)

// The messages of one journey carry the same tracestate and baggage bytes
// over and over, and decoding them into OpenTelemetry's types is most of
// what Extract costs. A Propagator therefore keeps a small cache of decoded
// header values, keyed by the exact bytes of the header. It is per
// Propagator, so a result is never reused under another trust policy or
// allow-list, and bounded in entries and in the length of a cached value,
// so hostile input cannot grow it. That bounds it in bytes too (see
// TestCacheEntryBytes): an entry holds at most 8 KiB for a tracestate and
// 32 KiB for a baggage (64 members with properties, decoded, and the
// Baggage built from them), so at most 2 MiB and 8 MiB per Propagator.
// When a message's tracestate and baggage are both small, Extract copies
// them into one allocation, and whichever entry keeps it holds the other
// header's bytes too: at most another 2 KiB.
const (
	cacheShards   = 16   // spreads lock contention across goroutines
	cachePerShard = 16   // entries per shard: 256 per cache
	maxCachedLen  = 2048 // longer header values are decoded every time
	doorSlots     = 1024 // hashes of values seen once, see parseCache.admit
)

// parseCache maps a header value to its decoded form. Values are immutable
// once stored, so they are shared between the contexts of many messages.
type parseCache[V any] struct {
	seed   maphash.Seed
	shards [cacheShards]cacheShard[V]
	// door remembers the hashes of values seen once. A value is stored
	// only when it comes a second time, so a stream of values that never
	// repeat (every message a new journey) costs an atomic store instead of
	// a locked map insert and eviction, and cannot flush the journeys that
	// do repeat out of the cache.
	door [doorSlots]atomic.Uint64
}

type cacheShard[V any] struct {
	mu sync.RWMutex
	m  map[string]V
}

func newParseCache[V any]() *parseCache[V] {
	return &parseCache[V]{seed: maphash.MakeSeed()}
}

func (c *parseCache[V]) hash(key string) uint64 { return maphash.String(c.seed, key) }

// get looks key, whose hash is h, up. key may be a view of a carrier's
// bytes: it is only compared, never kept.
func (c *parseCache[V]) get(key string, h uint64) (v V, ok bool) {
	if len(key) > maxCachedLen {
		return v, false
	}
	s := &c.shards[h%cacheShards]
	s.mu.RLock()
	v, ok = s.m[key]
	s.mu.RUnlock()
	return v, ok
}

// admit reports whether a value with hash h was seen recently and so is
// worth storing; if not, it remembers h for next time.
func (c *parseCache[V]) admit(h uint64) bool {
	slot := &c.door[(h/cacheShards)%doorSlots]
	if slot.Load() == h {
		return true
	}
	slot.Store(h)
	return false
}

// put stores v under key (hash h), which the caller must own, if key was
// seen before. A full shard forgets one entry first; Go's random map
// iteration order makes that a random eviction, which needs no bookkeeping
// on the read path.
func (c *parseCache[V]) put(key string, h uint64, v V) {
	if len(key) > maxCachedLen || !c.admit(h) {
		return
	}
	c.store(key, h, v)
}

// store is put for a value that admit already let in.
func (c *parseCache[V]) store(key string, h uint64, v V) {
	if len(key) > maxCachedLen {
		return
	}
	s := &c.shards[h%cacheShards]
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[string]V, cachePerShard)
	}
	if _, ok := s.m[key]; !ok && len(s.m) >= cachePerShard {
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	s.m[key] = v
	s.mu.Unlock()
}

// tsEntry is a decoded tracestate: the TraceState OpenTelemetry can hold,
// the Level 2 members it cannot (see levelTwoState), and the drops that
// decoding it caused, which are counted again on every use.
type tsEntry struct {
	ts          trace.TraceState
	extra, kept string
	full        string
	count       int
	drops       dropCounts
}

// bagEntry is a decoded baggage header: its members, the Baggage built from
// them unchanged, and the drops that decoding it caused.
type bagEntry struct {
	members []bagMember
	bytes   int
	bag     baggage.Baggage
	drops   dropCounts
}

// dropCounts counts drops by reason. A hostile header can hold hundreds of
// thousands of invalid members; counting them here and reporting each
// reason once per header keeps the metric off the per-member path, and a
// cache entry stores the counts in a fixed 32 bytes.
type dropCounts [numDropReasons]uint32

// any reports whether anything was dropped.
func (c *dropCounts) any() bool { return *c != dropCounts{} }

// dropSink counts the drops of one header value while it is decoded (or
// encoded) and reports them with flush, so that a cache entry can keep
// them and a cache hit count them again.
type dropSink struct {
	d *drops
	f field
	n dropCounts
}

func (s *dropSink) add(r dropReason) { s.n[r]++ }

// flush reports the counted drops.
func (s *dropSink) flush() { s.d.replay(s.f, &s.n) }

// replay reports the drops counted in c for header f.
func (d *drops) replay(f field, c *dropCounts) {
	for r, n := range c {
		if n > 0 {
			d.addN(f, dropReason(r), int64(n))
		}
	}
}
