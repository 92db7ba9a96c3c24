//go:build !race

package carrier_test

import (
	"context"
	"fmt"
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

// TestAllocationBudgetMiss guards extract on a cache miss, where every
// message starts a new journey: fewer allocations than stock OpenTelemetry's
// 15, both when only the session changes and when nothing repeats.
func TestAllocationBudgetMiss(t *testing.T) {
	for _, tc := range []struct {
		name   string
		user   func(i int) string
		budget float64
	}{
		{"shared-rest", func(int) string { return "u-12345" }, 9},
		{"all-distinct", func(i int) string { return fmt.Sprintf("u-%d", i) }, 13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := carrier.NewPropagator()
			msgs := make([]*kafkaHeaders, 4096)
			for i := range msgs {
				sess := fmt.Sprintf("0190b3c4-5d6e-7f80-9a1b-%012x", i)
				h := &kafkaHeaders{}
				h.add("traceparent", validTP)
				h.add("tracestate", fmt.Sprintf("rojo=%016x,congo=t61rcWkgMzE", i))
				h.add("baggage", "session.id="+sess+",feature=checkout-v2,tenant=acme,user.id="+tc.user(i))
				h.add("session-id", sess)
				msgs[i] = h
			}
			i := 0
			var out context.Context
			allocs := testing.AllocsPerRun(1000, func() {
				out = p.Extract(context.Background(), msgs[i%len(msgs)])
				i++
			})
			if allocs > tc.budget {
				t.Fatalf("extract miss: %.1f allocations, budget %.0f", allocs, tc.budget)
			}
			if carrier.SessionFromContext(out) == "" || baggage.FromContext(out).Len() != 4 ||
				trace.SpanContextFromContext(out).TraceState().Len() != 2 {
				t.Fatal("extract lost the payload")
			}
		})
	}
}
