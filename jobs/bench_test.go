package jobs_test

import (
	"context"
	"runtime"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tnoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/benchwrap"
	"github.com/tracebridge/tracebridge/internal/testenv"
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

// benchProvider is a production-shaped SDK: parent-based sampling behind a
// batching processor in front of an exporter that discards, as the broker
// packages' benchmarks use.
func benchProvider(b *testing.B) *sdktrace.TracerProvider {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())),
		sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// poolJob is a job on the raw and hand-written pools: what a user's own
// in-process queue carries (an ID it already has, a kind, a payload), plus
// the headers a hand-written wrapper injects into.
type poolJob struct {
	id, kind string
	payload  []byte
	headers  map[string]string
}

// benchJobID stands for the ID a user's own queue already gives its jobs,
// for the hand + attrs row's messaging.message.id.
const benchJobID = "0193a5c4-7d2e-7c1a-9f3b-000000000001"

// runPool enqueues b.N no-op jobs on a pool of GOMAXPROCS goroutines fed
// by a channel (the runner's default concurrency and queue size), with
// send and receive, when not nil, around the enqueue and the run: the raw
// row and the hand-written wrappers.
func runPool(b *testing.B, ctx context.Context, send func(context.Context, poolJob) trace.Span,
	receive func(poolJob) (context.Context, trace.Span)) {
	ch := make(chan poolJob, 1024)
	var wg, done sync.WaitGroup
	handler := func(context.Context, []byte) error { done.Done(); return nil }
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for j := range ch {
				if receive == nil {
					_ = handler(context.Background(), j.payload)
					continue
				}
				hctx, span := receive(j)
				benchwrap.End(span, handler(hctx, j.payload))
			}
		})
	}
	payload := []byte("x")
	b.ReportAllocs()
	b.ResetTimer()
	cpu := benchwrap.CPU(b)
	for range b.N {
		done.Add(1)
		j := poolJob{id: benchJobID, kind: "noop", payload: append([]byte(nil), payload...)}
		var span trace.Span
		if send != nil {
			j.headers = make(map[string]string, 4)
			span = send(ctx, j)
		}
		select {
		case ch <- j:
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		}
		if span != nil {
			benchwrap.End(span, nil)
		}
	}
	done.Wait()
	cpu(b.N)
	b.StopTimer()
	close(ch)
	wg.Wait()
}

// BenchmarkEnqueueRun enqueues no-op jobs and runs them: on a plain
// goroutine pool fed by a channel (raw), with the hand-written wrapper
// around that pool (hand: a PRODUCER span on enqueue injected into a map
// carrier with the stock propagator, a CONSUMER span around the handler
// extracted from it; handfull: the same with the runner's attributes), and
// on jobs.New with default options (the in-process queue), under an
// unsampled and a sampled parent.
func BenchmarkEnqueueRun(b *testing.B) {
	b.Run("raw", func(b *testing.B) { runPool(b, testenv.Parent(false), nil, nil) })
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			w := benchwrap.New(benchProvider(b), "tracebridge.jobs", h.Full)
			common := func(a []attribute.KeyValue, j poolJob) []attribute.KeyValue {
				return append(a, semconv.MessagingMessageID(j.id), semconv.MessagingMessageBodySize(len(j.payload)),
					jobs.KindKey.String(j.kind))
			}
			send := func(ctx context.Context, j poolJob) trace.Span {
				_, span := w.Send(ctx, "jobs", propagation.MapCarrier(j.headers), func(a []attribute.KeyValue) []attribute.KeyValue {
					a = common(a, j)
					if s := carrier.SessionFromContext(ctx); s != "" {
						a = append(a, semconv.SessionID(s))
					}
					return a
				})
				return span
			}
			receive := func(j poolJob) (context.Context, trace.Span) {
				// The session comes with the baggage; Receive records it.
				return w.Receive(context.Background(), "jobs", propagation.MapCarrier(j.headers), func(a []attribute.KeyValue) []attribute.KeyValue {
					return append(common(a, j), attribute.Int("tracebridge.attempt", 1))
				})
			}
			runPool(b, benchwrap.SessionInBaggage(testenv.Parent(h.Sampled)), send, receive)
		})
	}
	// untraced is the runner itself, with a no-op tracer provider and no
	// parent: job IDs, per-attempt timeouts, settling and its queue, which
	// the raw pool does not have. benchtable takes it as the runner's own
	// raw row for a second, tracing-only line of the table.
	for _, mode := range []struct {
		name    string
		sampled bool
		tp      trace.TracerProvider
	}{{"untraced", false, tnoop.NewTracerProvider()}, {"unsampled", false, nil}, {"sampled", true, nil}} {
		b.Run(mode.name, func(b *testing.B) {
			tp, ctx := mode.tp, context.Background()
			if tp == nil {
				tp, ctx = benchProvider(b), testenv.Parent(mode.sampled)
			}
			r := jobs.New(jobs.Config{}, tracebridge.WithTracerProvider(tp))
			var done sync.WaitGroup
			_ = r.Register("noop", func(context.Context, *jobs.Job) error { done.Done(); return nil })
			payload := []byte("x")
			b.ReportAllocs()
			b.ResetTimer()
			cpu := benchwrap.CPU(b)
			for range b.N {
				done.Add(1)
				if _, err := r.Enqueue(ctx, "noop", payload); err != nil {
					b.Fatal(err)
				}
			}
			done.Wait()
			cpu(b.N)
			b.StopTimer()
			if _, err := r.Shutdown(context.Background()); err != nil {
				b.Fatal(err)
			}
		})
	}
}
