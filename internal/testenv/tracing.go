package testenv

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
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
