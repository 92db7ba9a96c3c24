package testenv

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
)

// Telemetry is an in-memory OpenTelemetry SDK for assertions: every span is
// sampled and recorded, and metrics are read on demand.
type Telemetry struct {
	Spans          *tracetest.SpanRecorder
	TracerProvider *sdktrace.TracerProvider
	MeterProvider  *sdkmetric.MeterProvider
	reader         *sdkmetric.ManualReader
}

// NewTelemetry returns a recording SDK that is shut down after t.
func NewTelemetry(t testing.TB, opts ...sdktrace.TracerProviderOption) *Telemetry {
	rec := tracetest.NewSpanRecorder()
	reader := sdkmetric.NewManualReader()
	tp := sdktrace.NewTracerProvider(append([]sdktrace.TracerProviderOption{
		sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(rec)}, opts...)...)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	return &Telemetry{Spans: rec, TracerProvider: tp, MeterProvider: mp, reader: reader}
}

// Ended returns the spans that have ended so far.
func (tel *Telemetry) Ended() []sdktrace.ReadOnlySpan { return tel.Spans.Ended() }

// Metrics collects the current metrics.
func (tel *Telemetry) Metrics(t testing.TB) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect metrics: %v", err)
	}
	return rm
}

// Options returns the tracebridge options that send spans and metrics to
// tel, followed by more.
func (tel *Telemetry) Options(more ...tracebridge.Option) []tracebridge.Option {
	return append([]tracebridge.Option{tracebridge.WithTracerProvider(tel.TracerProvider),
		tracebridge.WithMeterProvider(tel.MeterProvider)}, more...)
}

// SumInt returns the value of an Int64 sum metric, summed over its data
// points; ok is false when the metric was not reported.
func (tel *Telemetry) SumInt(t testing.TB, name string) (total int64, ok bool) {
	t.Helper()
	for _, sm := range tel.Metrics(t).ScopeMetrics {
		for _, m := range sm.Metrics {
			if d, isSum := m.Data.(metricdata.Sum[int64]); isSum && m.Name == name {
				ok = true
				for _, p := range d.DataPoints {
					total += p.Value
				}
			}
		}
	}
	return total, ok
}

// Named returns the ended spans called name, in the order they ended.
func (tel *Telemetry) Named(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tel.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// Attr returns span attribute k.
func Attr(s sdktrace.ReadOnlySpan, k attribute.Key) (attribute.Value, bool) {
	for _, a := range s.Attributes() {
		if a.Key == k {
			return a.Value, true
		}
	}
	return attribute.Value{}, false
}

// WaitFor polls cond until it holds, failing t after d.
func WaitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Parent is the context a benchmark produces under: the journey of a
// request whose span the HTTP edge did (sampled) or did not (unsampled)
// sample, remote as it arrives, with a session, as in production.
func Parent(sampled bool) context.Context {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
		SpanID:  trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31},
		Remote:  true,
	})
	if sampled {
		sc = sc.WithTraceFlags(trace.FlagsSampled)
	}
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), sc)
	return carrier.ContextWithSession(ctx, "0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a")
}
