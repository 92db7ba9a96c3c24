package carrier_test

import (
	"context"
	"fmt"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// The side-by-side benchmark of issue 2: tracebridge's Propagator against
// the stock composite TraceContext + Baggage propagator, both through a
// []kafka.Header-shaped carrier. Payload: traceparent, a 2-member
// tracestate, 3 baggage members and the session (which stock OpenTelemetry
// can carry only as the baggage member session.id). Run with
//
//	go test -run '^$' -bench 'Inject|Extract' -benchmem -count=5 ./carrier/

const (
	benchSession = "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6071"
	benchTS      = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
)

func benchBaggage(b *testing.B, session string, withSession bool) baggage.Baggage {
	return benchBaggageOf(b, session, withSession, "u-12345")
}

func benchBaggageOf(b *testing.B, session string, withSession bool, user string) baggage.Baggage {
	kv := []string{"tenant", "acme", "user.id", user, "feature", "checkout-v2"}
	if withSession {
		kv = append(kv, carrier.BaggageSessionKey, session)
	}
	var ms []baggage.Member
	for i := 0; i < len(kv); i += 2 {
		m, err := baggage.NewMemberRaw(kv[i], kv[i+1])
		if err != nil {
			b.Fatal(err)
		}
		ms = append(ms, m)
	}
	bag, err := baggage.New(ms...)
	if err != nil {
		b.Fatal(err)
	}
	return bag
}

func benchSpanContext(b *testing.B) trace.SpanContext {
	sc, ok := carrier.ParseTraceparent(validTP)
	ts, err := trace.ParseTraceState(benchTS)
	if !ok || err != nil {
		b.Fatal("bad bench payload")
	}
	return sc.WithTraceState(ts)
}

func BenchmarkInject(b *testing.B) {
	sc := benchSpanContext(b)
	b.Run("tracebridge", func(b *testing.B) {
		p := carrier.NewPropagator()
		ctx := baggage.ContextWithBaggage(context.Background(), benchBaggage(b, "", false))
		ctx = carrier.ContextWithSession(trace.ContextWithRemoteSpanContext(ctx, sc), benchSession)
		c := &kafkaHeaders{h: make([]header, 0, 8)}
		b.ReportAllocs()
		defer reportCPU(b, cpuNanos())
		for b.Loop() {
			c.h = c.h[:0]
			p.Inject(ctx, c)
		}
		if len(c.h) != 4 {
			b.Fatalf("wrote %d headers", len(c.h))
		}
	})
	// Every message from a new journey: no Baggage is injected twice in a
	// row, so nothing Inject remembers applies.
	b.Run("tracebridge/distinct", func(b *testing.B) {
		p := carrier.NewPropagator()
		ctxs := make([]context.Context, 1<<14)
		for i := range ctxs {
			ctx := baggage.ContextWithBaggage(context.Background(), benchBaggageOf(b, "", false, fmt.Sprintf("u-%d", i)))
			ctxs[i] = carrier.ContextWithSession(trace.ContextWithRemoteSpanContext(ctx, sc), benchSession)
		}
		c := &kafkaHeaders{h: make([]header, 0, 8)}
		i := 0
		b.ReportAllocs()
		defer reportCPU(b, cpuNanos())
		for b.Loop() {
			c.h = c.h[:0]
			p.Inject(ctxs[i], c)
			if i++; i == len(ctxs) {
				i = 0
			}
		}
		if len(c.h) != 4 {
			b.Fatalf("wrote %d headers", len(c.h))
		}
	})
	b.Run("stock", func(b *testing.B) {
		p := stockPropagator()
		ctx := baggage.ContextWithBaggage(context.Background(), benchBaggage(b, benchSession, true))
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
		c := &stockHeaders{h: make([]header, 0, 8)}
		b.ReportAllocs()
		defer reportCPU(b, cpuNanos())
		for b.Loop() {
			c.h = c.h[:0]
			p.Inject(ctx, c)
		}
		if len(c.h) != 3 {
			b.Fatalf("wrote %d headers", len(c.h))
		}
	})
	b.Run("stock/distinct", func(b *testing.B) {
		p := stockPropagator()
		ctxs := make([]context.Context, 1<<14)
		for i := range ctxs {
			ctx := baggage.ContextWithBaggage(context.Background(), benchBaggageOf(b, benchSession, true, fmt.Sprintf("u-%d", i)))
			ctxs[i] = trace.ContextWithRemoteSpanContext(ctx, sc)
		}
		c := &stockHeaders{h: make([]header, 0, 8)}
		i := 0
		b.ReportAllocs()
		defer reportCPU(b, cpuNanos())
		for b.Loop() {
			c.h = c.h[:0]
			p.Inject(ctxs[i], c)
			if i++; i == len(ctxs) {
				i = 0
			}
		}
		if len(c.h) != 3 {
			b.Fatalf("wrote %d headers", len(c.h))
		}
	})
}

// benchMessages builds n messages' headers. distinct makes every message's
// baggage, tracestate and session different: the cache-miss case, in which
// the rest of the baggage is shared by many journeys (tenant, feature), as it
// usually is. allDistinct also varies the user.id member, so nothing at all
// repeats. Otherwise all messages carry the same journey context, as the
// messages of one busy journey do.
func benchMessages(b *testing.B, n int, distinct, allDistinct, ours bool) [][]header {
	p := carrier.NewPropagator()
	stock := stockPropagator()
	msgs := make([][]header, n)
	for i := range msgs {
		sess := benchSession
		user := "u-12345"
		if allDistinct {
			user = fmt.Sprintf("u-%d", i)
		}
		sc := benchSpanContext(b)
		if distinct {
			sess = fmt.Sprintf("0190b3c4-5d6e-7f80-9a1b-%012x", i)
			ts, _ := trace.ParseTraceState(fmt.Sprintf("rojo=%016x,congo=t61rcWkgMzE", i))
			sc = sc.WithTraceState(ts)
		}
		ctx := trace.ContextWithRemoteSpanContext(context.Background(), sc)
		if ours {
			ctx = baggage.ContextWithBaggage(ctx, benchBaggageOf(b, "", false, user))
			c := &kafkaHeaders{}
			p.Inject(carrier.ContextWithSession(ctx, sess), c)
			msgs[i] = c.h
		} else {
			ctx = baggage.ContextWithBaggage(ctx, benchBaggageOf(b, sess, true, user))
			c := &stockHeaders{}
			stock.Inject(ctx, c)
			msgs[i] = c.h
		}
	}
	return msgs
}

func BenchmarkExtract(b *testing.B) {
	for _, tc := range []struct {
		name          string
		n             int
		distinct, all bool
	}{{"hit", 1, false, false}, {"miss", 1 << 14, true, false}, {"miss-all", 1 << 14, true, true}} {
		b.Run("tracebridge/"+tc.name, func(b *testing.B) {
			p := carrier.NewPropagator()
			msgs := benchMessages(b, tc.n, tc.distinct, tc.all, true)
			ctx := context.Background()
			c := &kafkaHeaders{}
			i := 0
			var out context.Context
			b.ReportAllocs()
			defer reportCPU(b, cpuNanos())
			for b.Loop() {
				c.h = msgs[i]
				if i++; i == len(msgs) {
					i = 0
				}
				out = p.Extract(ctx, c)
			}
			if !trace.SpanContextFromContext(out).IsValid() || carrier.SessionFromContext(out) == "" ||
				baggage.FromContext(out).Len() != 4 || trace.SpanContextFromContext(out).TraceState().Len() != 2 {
				b.Fatal("extract lost the payload")
			}
		})
		b.Run("stock/"+tc.name, func(b *testing.B) {
			p := stockPropagator()
			msgs := benchMessages(b, tc.n, tc.distinct, tc.all, false)
			ctx := context.Background()
			c := &stockHeaders{}
			i := 0
			var out context.Context
			b.ReportAllocs()
			defer reportCPU(b, cpuNanos())
			for b.Loop() {
				c.h = msgs[i]
				if i++; i == len(msgs) {
					i = 0
				}
				out = p.Extract(ctx, c)
			}
			if !trace.SpanContextFromContext(out).IsValid() || baggage.FromContext(out).Len() != 4 ||
				trace.SpanContextFromContext(out).TraceState().Len() != 2 {
				b.Fatal("extract lost the payload")
			}
		})
	}
}

var _ propagation.TextMapCarrier = (*stockHeaders)(nil)

// reportCPU adds the process CPU time per operation since start.
func reportCPU(b *testing.B, start int64) {
	if b.N > 0 {
		b.ReportMetric(float64(cpuNanos()-start)/float64(b.N), "cpu-ns/op")
	}
}
