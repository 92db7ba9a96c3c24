package carrier

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

func liveHeap() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

func (c *parseCache[V]) entries() int {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.RLock()
		n += len(c.shards[i].m)
		c.shards[i].mu.RUnlock()
	}
	return n
}

// fill returns s cut or padded with "x" to exactly n bytes.
func fill(s string, n int) string {
	if len(s) >= n {
		return s[:n]
	}
	return s + strings.Repeat("x", n-len(s))
}

// worstTracestate is a distinct tracestate of maxCachedLen bytes whose
// members are half of a Level 2 shape OpenTelemetry rejects, so that its
// entry holds every string it can: the key, the joined members, the kept
// and the extra ones, and the TraceState.
func worstTracestate(i int) string {
	ms := make([]string, 16)
	for j := range ms {
		k := fmt.Sprintf("k%d-%d", j, i)
		if j%2 == 1 {
			k = fmt.Sprintf("%d-%d", j, i) // digit first: Level 2 only
		}
		ms[j] = fill(k+"=", 127)
	}
	return fill(strings.Join(ms, ","), maxCachedLen)
}

// worstBaggage is a distinct baggage of maxCachedLen bytes with 64 members,
// each with a property and a percent-escape, so its entry holds decoded
// copies as well as the key.
func worstBaggage(i int) string {
	ms := make([]string, 64)
	for j := range ms {
		ms[j] = fill(fmt.Sprintf("k%02d=%%41%d;p=1;", j, i), 31)
	}
	return fill(strings.Join(ms, ","), maxCachedLen)
}

// TestCacheEntryBytes fills each cache with the largest entries it admits
// and checks the heap each entry holds against the bound stated in the
// README: what one message can leave behind in that cache.
func TestCacheEntryBytes(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	cases := []struct {
		name    string
		bound   int64
		headers func(i int) map[string]string
		entries func(p *Propagator) int
	}{
		{"tracestate parse cache", 8 << 10, func(i int) map[string]string {
			return map[string]string{"traceparent": tp, "tracestate": worstTracestate(i)}
		}, func(p *Propagator) int { return p.tsCache.entries() }},
		{"baggage parse cache", 32 << 10, func(i int) map[string]string {
			return map[string]string{"baggage": worstBaggage(i)}
		}, func(p *Propagator) int { return p.bagCache.entries() }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPropagator()
			if v := tc.headers(0)["tracestate"] + tc.headers(0)["baggage"]; len(v) != maxCachedLen {
				t.Fatalf("test value is %d bytes, want %d", len(v), maxCachedLen)
			}
			before := liveHeap()
			for i := range 1000 {
				h := &byteHeaders{}
				for k, v := range tc.headers(i) {
					h.h = append(h.h, [2][]byte{[]byte(k), []byte(v)})
				}
				p.Extract(context.Background(), h) // the first sighting only knocks
				p.Extract(context.Background(), h)
			}
			n := tc.entries(p)
			per := (liveHeap() - before) / int64(n)
			runtime.KeepAlive(p)
			t.Logf("%d entries, %d bytes each", n, per)
			if n < cacheShards*cachePerShard/2 || per > tc.bound {
				t.Fatalf("%d entries of %d bytes each, bound %d", n, per, tc.bound)
			}
		})
	}

	t.Run("inject caches", func(t *testing.T) {
		// The largest Baggage they keep: 64 members, 8192 bytes of
		// strings, each ctx under a span of its own injected four times
		// (an entry is admitted on its second sighting in each cache).
		const bound = 56 << 10 // an encoding and an output, each with its Baggage
		p := NewPropagator()
		before := liveHeap()
		for i := range 500 {
			ms := make([]baggage.Member, 64)
			for j := range ms {
				ms[j], _ = baggage.NewMemberRaw(fmt.Sprintf("k%02d-%d", j, i), strings.Repeat("v", 120))
			}
			b, _ := baggage.New(ms...)
			sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{byte(i), byte(i >> 8), 1}})
			ctx := ContextWithSession(baggage.ContextWithBaggage(trace.ContextWithSpanContext(context.Background(), sc), b), strings.Repeat("s", MaxSessionIDLen))
			for range 4 {
				p.Inject(ctx, propagation.MapCarrier{})
			}
		}
		enc, out := 0, 0
		for i := range encSlots {
			if p.encCache.slots[i].Load() != nil {
				enc++
			}
			if p.outCache.slots[i].Load() != nil {
				out++
			}
		}
		per := (liveHeap() - before) / int64(max(enc, out))
		runtime.KeepAlive(p)
		t.Logf("%d encodings, %d outputs: %d bytes per slot of both", enc, out, per)
		if enc < encSlots/2 || out < encSlots/2 || per > bound {
			t.Fatalf("%d encodings, %d outputs, %d bytes per slot of both, bound %d", enc, out, per, bound)
		}
	})
}

// byteHeaders is a minimal ByteCarrier, so that Extract copies what it
// keeps as it does for Kafka.
type byteHeaders struct{ h [][2][]byte }

func (b *byteHeaders) Get(key string) string {
	for _, kv := range b.h {
		if string(kv[0]) == key {
			return string(kv[1])
		}
	}
	return ""
}
func (b *byteHeaders) Set(key, value string)     { b.SetBytes(key, []byte(value)) }
func (b *byteHeaders) Keys() []string            { return nil }
func (b *byteHeaders) Len() int                  { return len(b.h) }
func (b *byteHeaders) At(i int) (string, []byte) { return string(b.h[i][0]), b.h[i][1] }
func (b *byteHeaders) SetBytes(key string, value []byte) {
	b.h = append(b.h, [2][]byte{[]byte(key), value})
}
