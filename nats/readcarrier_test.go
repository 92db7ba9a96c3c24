package nats

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	"pgregory.net/rapid"

	"github.com/tracebridge/tracebridge/carrier"
)

// TestReadCarrierReadsAsHeaderCarrier checks the read-side shortcut
// against HeaderCarrier on headers of random case variants: every name,
// in any case, reads the same values, so a duplicate across case variants
// is still seen as one.
func TestReadCarrierReadsAsHeaderCarrier(t *testing.T) {
	names := []string{"traceparent", "Traceparent", "TRACEPARENT", "session-id", "Session-Id", "baggage", "nats-msg-id", "Nats-Msg-Id"}
	rapid.Check(t, func(t *rapid.T) {
		h := natsgo.Header{}
		for _, k := range rapid.SliceOfN(rapid.SampledFrom(names), 0, 6).Draw(t, "keys") {
			h[k] = append(h[k], rapid.SampledFrom([]string{"a", "b", ""}).Draw(t, "value"))
		}
		fast, slow := readCarrier(h), HeaderCarrier(h)
		// Variants are merged in map order, so values compare as sets.
		for _, key := range names {
			want := slices.Sorted(slices.Values(slow.Values(key)))
			got := fast.(interface{ Values(string) []string }).Values(key)
			if !slices.Equal(slices.Sorted(slices.Values(got)), want) {
				t.Fatalf("header %v: Values(%q) = %q, want %q", h, key, got, want)
			}
			if g := fast.Get(key); len(want) == 0 && g != "" || len(want) > 0 && !slices.Contains(want, g) {
				t.Fatalf("header %v: Get(%q) = %q, not one of %q", h, key, g, want)
			}
		}
	})
}

// TestReadCarrierManyKeysCostsLinear reads a journey out of headers of 64
// to 64,000 keys (a thousand times more than any client sends), all
// lowercase and with one capitalised key, through the propagator: the
// journey is found each time, and a thousand times the keys costs at most
// about a thousand times the time (each read looks at every key at most a
// bounded number of times).
func TestReadCarrierManyKeysCostsLinear(t *testing.T) {
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	build := func(n int, upper bool) natsgo.Header {
		h := natsgo.Header{"traceparent": {tp}}
		for i := range n {
			h[fmt.Sprintf("x-filler-%d", i)] = []string{"v"}
		}
		if upper {
			h["X-Capitalised"] = []string{"v"}
		}
		return h
	}
	p := carrier.NewPropagator()
	cost := func(h natsgo.Header) time.Duration {
		best := time.Duration(1 << 62)
		for range 5 {
			start := time.Now()
			ctx := p.Extract(context.Background(), readCarrier(h))
			best = min(best, time.Since(start))
			if got := trace.SpanContextFromContext(ctx).TraceID().String(); got != "0af7651916cd43dd8448eb211c80319c" {
				t.Fatalf("journey lost in a header of %d keys: trace %s", len(h), got)
			}
		}
		return best
	}
	for _, upper := range []bool{false, true} {
		small, large := cost(build(64, upper)), cost(build(64_000, upper))
		// 1000× the keys; allow 3× slack over linear for cache effects
		// and a floor for timer resolution on the small header.
		if limit := 3 * 1000 * max(small, 2*time.Microsecond); large > limit {
			t.Errorf("capitalised key %v: 64,000 keys took %v, 64 took %v: more than linear (limit %v)", upper, large, small, limit)
		}
		t.Logf("capitalised key %v: 64 keys %v, 64,000 keys %v", upper, small, large)
	}
}
