package msgtrace_test

import (
	"context"
	"testing"

	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/sampling"
)

// BenchmarkUnsampledMessage is the per-message cost of a message under an
// unsampled parent, produced (send span, inject) and consumed (extract,
// process span), for two samplers and three ways: default options (the
// probe decides), the opt-in WithParentBasedSampling, and
// WithoutParentBasedSampling (the SDK is asked, the default before the
// probe). Default and opt-in should be equal within noise; the session
// sampler's default also asks it about debug sessions per message.
func BenchmarkUnsampledMessage(b *testing.B) {
	samplers := []struct {
		name string
		s    sdktrace.Sampler
	}{
		{"sdk-parentbased", sdktrace.ParentBased(sdktrace.AlwaysSample())},
		{"session", sampling.New(0.1)},
	}
	paths := []struct {
		name string
		opt  msgtrace.Option
	}{
		{"default", nil},
		{"opt-in", func(c *msgtrace.Config) { c.ParentBasedSampling = true }},
		{"ask", func(c *msgtrace.Config) { c.AskSampler = true }},
	}
	parent := testenv.Parent(false)
	m := msgtrace.Message{Destination: "orders", BodySize: 128}
	for _, smp := range samplers {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(smp.s))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		for _, path := range paths {
			tr := msgtrace.New("kafka", []msgtrace.Option{func(c *msgtrace.Config) {
				c.TracerProvider, c.MeterProvider = tp, noopmetric.NewMeterProvider()
			}, path.opt})
			b.Run(smp.name+"/"+path.name+"/produce", func(b *testing.B) {
				c := propagation.MapCarrier{}
				b.ReportAllocs()
				for b.Loop() {
					clear(c)
					ctx, op := tr.StartSend(parent, c, m)
					op.End(ctx, nil)
				}
			})
			b.Run(smp.name+"/"+path.name+"/consume", func(b *testing.B) {
				c := propagation.MapCarrier{}
				carrier.NewPropagator().Inject(parent, c)
				d := msgtrace.Delivery{Message: m, Carrier: c}
				b.ReportAllocs()
				for b.Loop() {
					ctx, p := tr.StartProcess(context.Background(), d)
					p.End(ctx, nil, false)
				}
			})
		}
	}
}
