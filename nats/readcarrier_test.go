package nats

import (
	"slices"
	"testing"

	natsgo "github.com/nats-io/nats.go"
	"pgregory.net/rapid"
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
