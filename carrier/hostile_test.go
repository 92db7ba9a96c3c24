package carrier_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tracebridge/tracebridge/carrier"
)

// hostileShape builds a header that is scale times past a W3C limit; the
// size at scale 1 is about the limit itself.
type hostileShape struct {
	name   string
	header string
	build  func(scale int) string
}

func repeatMembers(format string, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, format, i)
	}
	return b.String()
}

var hostileShapes = []hostileShape{
	// 32 members is the Level 2 maximum: ×1000 is 32,000 distinct members.
	{"tracestate members", "tracestate", func(s int) string { return repeatMembers("k%d=v", 32*s) }},
	{"tracestate long value", "tracestate", func(s int) string { return "a=" + strings.Repeat("v", 256*s) }},
	{"tracestate long key", "tracestate", func(s int) string { return strings.Repeat("k", 256*s) + "=1" }},
	{"tracestate empty members", "tracestate", func(s int) string { return strings.Repeat(" ,", 256*s) + "a=1" }},
	{"tracestate duplicates", "tracestate", func(s int) string { return strings.Repeat("a=1,", 32*s) }},
	{"tracestate whitespace", "tracestate", func(s int) string { return "a=1" + strings.Repeat(" ", 512*s) }},
	// 64 members and 8192 bytes are what W3C Baggage asks to propagate.
	{"baggage members", "baggage", func(s int) string { return repeatMembers("k%d=v", 64*s) }},
	{"baggage escaped members", "baggage", func(s int) string { return repeatMembers("k%d=%%41%%42", 64*s) }},
	{"baggage duplicates", "baggage", func(s int) string { return strings.Repeat("k=%41,", 64*s) }},
	{"baggage long value", "baggage", func(s int) string { return "k=" + strings.Repeat("v", 8192*s) }},
	{"baggage invalid members", "baggage", func(s int) string { return strings.Repeat("@,", 4096*s) + "k=v" }},
	{"baggage properties", "baggage", func(s int) string { return "k=v" + strings.Repeat(";p=1", 2048*s) }},
	{"baggage session member", "baggage", func(s int) string { return "session.id=" + strings.Repeat("s", 128*s) }},
	{"session-id", "session-id", func(s int) string { return strings.Repeat("s", 128*s) }},
	{"traceparent future version", "traceparent", func(s int) string {
		return "01-" + tid + "-" + sid + "-01-" + strings.Repeat("x", 55*s)
	}},
	{"traceparent version 00", "traceparent", func(s int) string { return validTP + strings.Repeat("x", 55*s) }},
}

// hostileMessage is a Kafka-style message with a valid traceparent (unless
// the shape replaces it) and the hostile header.
func hostileMessage(header, value string) *kafkaHeaders {
	m := &kafkaHeaders{}
	if header != "traceparent" {
		m.add("traceparent", validTP)
	}
	m.add(header, value)
	return m
}

// extractTime is the fastest of runs extracts of c, each by a fresh
// Propagator so that no cache serves a repeat: the minimum is what the work
// costs, without the waits of a loaded machine.
func extractTime(c propagation.TextMapCarrier, runs int) time.Duration {
	best := time.Duration(1 << 62)
	for range runs {
		p := carrier.NewPropagator()
		runtime.GC() // a collection of earlier garbage is not this extract's cost
		start := time.Now()
		p.Extract(context.Background(), c)
		if d := time.Since(start); d < best {
			best = d
		}
	}
	return best
}

// TestHostileHeaderCostLinear: the work Extract does on a header is at most
// linear in its size, whatever its shape, from the W3C limit to 1,000 times
// past it. Time per byte at ×10, ×100 and ×1000 may not exceed 4 times the
// time per byte at ×1 (which includes Extract's fixed cost, so this is
// generous to small inputs and strict only about growth). A quadratic parse
// breaks it by orders of magnitude.
func TestHostileHeaderCostLinear(t *testing.T) {
	for _, sh := range hostileShapes {
		t.Run(sh.name, func(t *testing.T) {
			var t1 time.Duration
			var n1 int
			for _, scale := range []int{1, 10, 100, 1000} {
				v := sh.build(scale)
				msgs := []propagation.TextMapCarrier{hostileMessage(sh.header, v),
					propagation.MapCarrier{"traceparent": validTP, sh.header: v}}
				for _, c := range msgs {
					runs := 7
					if len(v) > 1<<20 {
						runs = 3
					}
					d := extractTime(c, runs)
					if scale == 1 {
						t1, n1 = max(t1, d), len(v)
						continue
					}
					limit := 4 * time.Duration(float64(t1)*float64(len(v))/float64(n1))
					t.Logf("×%d (%d bytes, %T): %v; ×1 (%d bytes): %v", scale, len(v), c, d, n1, t1)
					if d > limit {
						t.Fatalf("×%d (%d bytes, %T) took %v: more than 4 × linear from ×1 (%v for %d bytes), limit %v",
							scale, len(v), c, d, t1, n1, limit)
					}
				}
			}
		})
	}
}

// TestHostileHeaderCostCeiling: a 1 MiB header of any shape extracts in
// under 50 ms, even under the race detector on a loaded machine.
func TestHostileHeaderCostCeiling(t *testing.T) {
	const mib = 1 << 20
	for _, sh := range hostileShapes {
		t.Run(sh.name, func(t *testing.T) {
			n1 := len(sh.build(1))
			v := sh.build((mib + n1 - 1) / n1)
			d := extractTime(hostileMessage(sh.header, v), 3)
			t.Logf("%d bytes: %v", len(v), d)
			if d > 50*time.Millisecond {
				t.Fatalf("%d-byte %s header took %v to extract, limit 50ms", len(v), sh.header, d)
			}
		})
	}
}

// heapAfterGC is the live heap once garbage is collected.
func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestHostileHeaderNotRetained: what a message with huge headers leaves
// behind in the Propagator's caches is bounded in bytes, and a small member
// that is kept does not pin the header it came in. Each message goes
// through Extract, a child span and two Injects (a handler that publishes
// twice, which is what admits an entry to the inject caches), as a consumer
// that forwards does.
func TestHostileHeaderNotRetained(t *testing.T) {
	const mib = 1 << 20
	junk := strings.Repeat("x", mib)
	cases := []struct {
		name       string
		tracestate string
		baggage    string
		perMessage uint64 // bytes a message may leave behind
	}{
		// A small kept member after a huge one that is dropped.
		{"small member beside a huge one", "", "keep=1," + "big=" + junk, 16 << 10},
		// A small kept member, then a huge tail past the limits.
		{"small member then junk", "", "keep=1," + strings.Repeat("@,", mib/2), 16 << 10},
		// Valid tracestate members padded with whitespace and empty members.
		{"tracestate in whitespace", "a=1" + strings.Repeat(" ,", mib/2) + "b=2", "keep=1", 16 << 10},
		// As much baggage as may be kept (64 members, 8192 bytes with n) in front of
		// a huge tail: the bound of the two inject caches together.
		{"full baggage then junk", "", repeatMembers("k%02d="+strings.Repeat("v", 120), 63) + ",big=" + junk, 48 << 10},
	}
	tr := noop.NewTracerProvider().Tracer("t")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := carrier.NewPropagator()
			run := func(i int) {
				m := &kafkaHeaders{}
				m.add("traceparent", fmt.Sprintf("00-%032x-%016x-01", i+1, i+1))
				if tc.tracestate != "" {
					m.add("tracestate", tc.tracestate)
				}
				// A baggage of its own, as every journey has: a shared one
				// would be decoded once and served from the cache.
				m.add("baggage", fmt.Sprintf("n=%d,", i)+tc.baggage)
				ctx := p.Extract(context.Background(), m)
				if baggage.FromContext(ctx).Len() == 0 {
					t.Fatal("no baggage kept")
				}
				if tc.tracestate != "" && trace.SpanContextFromContext(ctx).TraceState().String() != "a=1,b=2" {
					t.Fatalf("tracestate %q", trace.SpanContextFromContext(ctx).TraceState().String())
				}
				ctx, span := tr.Start(ctx, "process")
				for range 2 {
					p.Inject(ctx, &kafkaHeaders{})
					p.Inject(ctx, propagation.MapCarrier{})
				}
				span.End()
			}
			run(0) // one-time allocations
			const n = 64
			before := heapAfterGC()
			for i := range n {
				run(i + 1)
			}
			after := heapAfterGC()
			runtime.KeepAlive(p)
			var per uint64
			if after > before {
				per = (after - before) / n
			}
			t.Logf("retained %d bytes per message (heap %d -> %d)", per, before, after)
			if per > tc.perMessage {
				t.Fatalf("%d messages with a %d-byte header retained %d bytes each, bound %d", n, len(tc.baggage)+len(tc.tracestate), per, tc.perMessage)
			}
		})
	}
}
