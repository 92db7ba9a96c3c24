package msgtrace_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// fullTraceState is a tracestate at the Level 2 limits, 32 members of 256
// characters each side, built afresh so that nothing is shared between calls.
func fullTraceState(t *testing.T, i int) trace.TraceState {
	t.Helper()
	ms := make([]string, 32)
	for j := range ms {
		k := fmt.Sprintf("k%d-%d", j, i)
		ms[j] = k + strings.Repeat("k", 256-len(k)) + "=" + strings.Repeat("v", 256)
	}
	ts, err := trace.ParseTraceState(strings.Join(ms, ","))
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// TestAttemptsBoundedInBytes: an entry of the record of failed attempts
// holds at most about 1.5 KiB, however large the failed message's
// tracestate (up to 16 KiB) or identity.
func TestAttemptsBoundedInBytes(t *testing.T) {
	const n = 2000
	a := msgtrace.NewAttempts(10000)
	before := heapAfterGC()
	for i := range n {
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{byte(i), byte(i >> 8), 1},
			TraceFlags: trace.FlagsSampled, TraceState: fullTraceState(t, i)})
		a.Put(fmt.Sprintf("%01000d", i), sc) // as long as an identity may be
	}
	after := heapAfterGC()
	per := int64(after-before) / n
	t.Logf("%d bytes per entry", per)
	if per > 1536 {
		t.Fatalf("an entry holds %d bytes, bound 1536", per)
	}
	if a.Len() != n {
		t.Fatalf("%d entries, want %d", a.Len(), n)
	}
	sc, ok := a.Get(fmt.Sprintf("%01000d", 7))
	if !ok || sc.SpanID() != (trace.SpanID{7, 0, 1}) || !sc.IsSampled() {
		t.Fatalf("entry 7: %v, %v", sc, ok)
	}
	a.Put(strings.Repeat("x", 1<<20), sc)
	if a.Len() != n {
		t.Fatal("a 1 MiB identity was remembered")
	}
}

// TestSpanCacheBoundedInBytes: a destination chosen by a publisher (a NATS
// subject) leaves at most about 4 KiB in the cache of span start options,
// however long it is: one whose names fit in 1 KiB is cached, a longer one
// is not.
func TestSpanCacheBoundedInBytes(t *testing.T) {
	for _, destLen := range []int{900, 16 << 10} {
		t.Run(fmt.Sprint(destLen), func(t *testing.T) {
			tr := msgtrace.New("nats", []msgtrace.Option{func(c *msgtrace.Config) {
				c.TracerProvider, c.MeterProvider = noop.NewTracerProvider(), metricnoop.NewMeterProvider()
			}})
			const n = 256
			start := func(d string) {
				ctx, op := tr.StartSend(context.Background(), propagation.MapCarrier{}, msgtrace.Message{Destination: d, BodySize: -1})
				op.End(ctx, nil)
			}
			start("warm-up")
			before := heapAfterGC()
			for i := range n {
				start(fill(fmt.Sprintf("orders.%d.", i), destLen))
			}
			after := heapAfterGC()
			runtime.KeepAlive(tr)
			per := (int64(after) - int64(before)) / n
			t.Logf("%d bytes per destination", per)
			if per > 4096 {
				t.Fatalf("a destination leaves %d bytes in the cache, bound 4096", per)
			}
		})
	}
}

func fill(s string, n int) string { return s + strings.Repeat("x", n-len(s)) }
