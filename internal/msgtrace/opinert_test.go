package msgtrace_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// An operation is inert, its End doing nothing, exactly when it started
// no span and no metric measures it.
func TestOpInert(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tel := testenv.NewTelemetry(t)
	for _, c := range []struct {
		name    string
		sampled bool
		metrics bool
		want    bool
	}{
		{"unsampled, no metrics", false, false, true},
		{"unsampled, metrics", false, true, false},
		{"sampled, no metrics", true, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := msgtrace.New("nats", []msgtrace.Option{func(cfg *msgtrace.Config) {
				cfg.TracerProvider, cfg.MeterProvider = tp, noop.NewMeterProvider()
				if c.metrics {
					cfg.MeterProvider = tel.MeterProvider
				}
			}})
			ctx, op := tr.StartSend(testenv.Parent(c.sampled), propagation.MapCarrier{}, msgtrace.Message{Destination: "orders"})
			if got := op.Inert(); got != c.want {
				t.Fatalf("Inert() = %v, want %v", got, c.want)
			}
			op.End(ctx, nil)
		})
	}
}
