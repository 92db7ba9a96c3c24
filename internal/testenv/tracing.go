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

	"github.com/tracebridge/tracebridge"
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
