//go:build !race

package carrier_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// TestAllocationBudget guards the targets for the benchmark payload:
// inject at most 2 allocations, extract at most 6 once the journey's
// tracestate and baggage are cached. (The race detector changes allocation
// counts, hence the build tag.)
func TestAllocationBudget(t *testing.T) {
	p := carrier.NewPropagator()
	sc, _ := carrier.ParseTraceparent(validTP)
	ts, _ := trace.ParseTraceState(benchTS)
	m1, _ := baggage.NewMemberRaw("tenant", "acme")
	m2, _ := baggage.NewMemberRaw("user.id", "u-12345")
	m3, _ := baggage.NewMemberRaw("feature", "checkout-v2")
	bag, _ := baggage.New(m1, m2, m3)
	ctx := baggage.ContextWithBaggage(context.Background(), bag)
	ctx = carrier.ContextWithSession(trace.ContextWithRemoteSpanContext(ctx, sc.WithTraceState(ts)), benchSession)
	c := &kafkaHeaders{h: make([]header, 0, 8)}
	inject := testing.AllocsPerRun(200, func() {
		c.h = c.h[:0]
		p.Inject(ctx, c)
	})
	var out context.Context
	extract := testing.AllocsPerRun(200, func() { out = p.Extract(context.Background(), c) })
	if inject > 2 || extract > 6 {
		t.Fatalf("allocations: inject %.0f (budget 2), extract %.0f (budget 6)", inject, extract)
	}
	if carrier.SessionFromContext(out) != benchSession || baggage.FromContext(out).Len() != 4 {
		t.Fatal("extract lost the payload")
	}
}
