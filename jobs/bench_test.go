package jobs_test

import (
	"context"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tnoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/jobs"
)

const benchWorkers = 8

// BenchmarkWaitGroupPool is the baseline: the same no-op work on a plain
// pool of goroutines fed by a channel.
func BenchmarkWaitGroupPool(b *testing.B) {
	ch := make(chan []byte, 1024)
	var wg sync.WaitGroup
	var done sync.WaitGroup
	for range benchWorkers {
		wg.Go(func() {
			for p := range ch {
				_ = p
				done.Done()
			}
		})
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		done.Add(1)
		select {
		case ch <- []byte("x"):
		case <-ctx.Done():
		}
	}
	done.Wait()
	close(ch)
	wg.Wait()
}

func benchRunner(b *testing.B, opts ...tracebridge.Option) {
	r := jobs.New(jobs.Config{}, append([]tracebridge.Option{tracebridge.WithConcurrency(benchWorkers)}, opts...)...)
	var done sync.WaitGroup
	_ = r.Register("noop", func(context.Context, *jobs.Job) error { done.Done(); return nil })
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		done.Add(1)
		if _, err := r.Enqueue(ctx, "noop", []byte("x")); err != nil {
			b.Fatal(err)
		}
	}
	done.Wait()
	b.StopTimer()
	if _, err := r.Shutdown(ctx); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRunnerUnsampled runs no-op jobs with no telemetry SDK.
func BenchmarkRunnerUnsampled(b *testing.B) {
	benchRunner(b, tracebridge.WithTracerProvider(tnoop.NewTracerProvider()),
		tracebridge.WithMeterProvider(noop.NewMeterProvider()))
}

// BenchmarkRunnerSampled runs no-op jobs with every span sampled by the
// SDK (and dropped: no exporter), so it measures span creation.
func BenchmarkRunnerSampled(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	benchRunner(b, tracebridge.WithTracerProvider(tp), tracebridge.WithMeterProvider(noop.NewMeterProvider()))
}
