package kafka_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

const benchBatch = 100

// benchProvider is a production-shaped SDK: a batching processor in front
// of an exporter that discards, so the benchmark measures span work, not
// export.
func benchProvider(b *testing.B, sampler sdktrace.Sampler) trace.TracerProvider {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// onePartition fills each batch at once: with keys spread over partitions
// a sync write would wait for BatchTimeout, and the benchmark would time
// the timer.
var onePartition = kafkago.BalancerFunc(func(_ kafkago.Message, p ...int) int { return p[0] })

type messageWriter interface {
	WriteMessages(context.Context, ...kafkago.Message) error
	Close() error
}

func BenchmarkWriter(b *testing.B) {
	addrs := testenv.Kafka(b)
	for _, v := range []struct {
		name string
		wrap func(*kafkago.Writer) messageWriter
	}{
		{"raw", func(w *kafkago.Writer) messageWriter { return w }},
		{"wrapped-unsampled", func(w *kafkago.Writer) messageWriter {
			return tbkafka.NewWriter(w, tracebridge.WithTracerProvider(benchProvider(b, sdktrace.NeverSample())))
		}},
		{"wrapped-sampled", func(w *kafkago.Writer) messageWriter {
			return tbkafka.NewWriter(w, tracebridge.WithTracerProvider(benchProvider(b, sdktrace.AlwaysSample())))
		}},
	} {
		b.Run(v.name, func(b *testing.B) {
			topic := newTopic("bench-w")
			ensureTopics(b, addrs, topic)
			raw := rawWriter(addrs, topic)
			raw.Balancer, raw.BatchSize = onePartition, benchBatch
			w := v.wrap(raw)
			defer w.Close()
			ctx := carrier.ContextWithSession(context.Background(), "bench-session")
			msgs := make([]kafkago.Message, benchBatch)
			for i := range msgs {
				msgs[i] = kafkago.Message{Key: []byte(fmt.Sprintf("key-%03d", i)), Value: make([]byte, 256)}
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i += benchBatch {
				if err := w.WriteMessages(ctx, msgs[:min(benchBatch, b.N-i)]...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkConsume times raw FetchMessage+CommitMessages against the
// traced Consumer over the same pre-produced messages, from the first
// message on, so the group join is not part of the rate.
func BenchmarkConsume(b *testing.B) {
	addrs := testenv.Kafka(b)
	produce := func(b *testing.B, topic string) {
		ensureTopics(b, addrs, topic)
		w := tbkafka.NewWriter(rawWriter(addrs, topic), tracebridge.WithTracerProvider(benchProvider(b, sdktrace.AlwaysSample())))
		defer w.Close()
		msgs := make([]kafkago.Message, 1000)
		for i := range msgs {
			msgs[i] = kafkago.Message{Key: []byte(fmt.Sprintf("key-%03d", i%100)), Value: make([]byte, 256)}
		}
		ctx := carrier.ContextWithSession(context.Background(), "bench-session")
		for i := 0; i < b.N; i += len(msgs) {
			if err := w.WriteMessages(ctx, msgs[:min(len(msgs), b.N-i)]...); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("raw", func(b *testing.B) {
		topic := newTopic("bench-r")
		produce(b, topic)
		r := groupReader(addrs, newTopic("g"), 100*time.Millisecond, topic)
		defer r.Close()
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		var start time.Time
		for i := range b.N {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if i == 0 {
				start = time.Now()
			}
			if err := r.CommitMessages(ctx, m); err != nil {
				b.Fatal(err)
			}
		}
		if b.N > 1 {
			b.ReportMetric(float64(b.N-1)/time.Since(start).Seconds(), "msgs/s")
		}
	})
	for _, v := range []struct {
		name    string
		sampler sdktrace.Sampler
	}{{"consumer-unsampled", sdktrace.NeverSample()}, {"consumer-sampled", sdktrace.AlwaysSample()}} {
		b.Run(v.name, func(b *testing.B) {
			topic := newTopic("bench-c")
			produce(b, topic)
			var n atomic.Int64
			var start atomic.Int64
			done := make(chan struct{})
			c := tbkafka.NewConsumer(groupReader(addrs, newTopic("g"), 100*time.Millisecond, topic),
				func(ctx context.Context, msg kafkago.Message) error {
					k := n.Add(1)
					if k == 1 {
						start.Store(time.Now().UnixNano())
					}
					if k == int64(b.N) {
						close(done)
					}
					return nil
				}, tracebridge.WithTracerProvider(benchProvider(b, v.sampler)))
			ctx, cancel := context.WithCancel(context.Background())
			runErr := make(chan error, 1)
			b.ReportAllocs()
			b.ResetTimer()
			go func() { runErr <- c.Run(ctx) }()
			<-done
			end := time.Now()
			b.StopTimer()
			cancel()
			if err := <-runErr; err != nil {
				b.Fatal(err)
			}
			if b.N > 1 {
				b.ReportMetric(float64(b.N-1)/end.Sub(time.Unix(0, start.Load())).Seconds(), "msgs/s")
			}
		})
	}
}

// stockCarrier is the carrier a kafka-go user writes for the stock
// propagators: Set appends, Get returns the first match.
type stockCarrier struct{ h *[]kafkago.Header }

func (c stockCarrier) Get(key string) string {
	for _, h := range *c.h {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func (c stockCarrier) Set(key, value string) {
	*c.h = append(*c.h, kafkago.Header{Key: key, Value: []byte(value)})
}

func (c stockCarrier) Keys() []string {
	out := make([]string, len(*c.h))
	for i, h := range *c.h {
		out[i] = h.Key
	}
	return out
}

func benchJourney(b *testing.B, sessionAsBaggage bool) context.Context {
	ts, err := trace.ParseTraceState("vendor1=opaque-value-1,vendor2=opaque-value-2")
	if err != nil {
		b.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6},
		TraceFlags: trace.FlagsSampled, TraceState: ts})
	var ms []baggage.Member
	for _, kv := range [][2]string{{"tenant", "acme"}, {"region", "eu-west-1"}, {"feature", "new-checkout"}} {
		m, _ := baggage.NewMember(kv[0], kv[1])
		ms = append(ms, m)
	}
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	if sessionAsBaggage {
		m, _ := baggage.NewMember(carrier.BaggageSessionKey, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
		ms = append(ms, m)
	} else {
		ctx = carrier.ContextWithSession(ctx, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
	}
	bag, _ := baggage.New(ms...)
	return baggage.ContextWithBaggage(ctx, bag)
}

func BenchmarkCarrier(b *testing.B) {
	ours := carrier.NewPropagator()
	stock := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	b.Run("ours/inject", func(b *testing.B) {
		ctx := benchJourney(b, false)
		b.ReportAllocs()
		for b.Loop() {
			hs := make([]kafkago.Header, 0, 4)
			ours.Inject(ctx, tbkafka.NewCarrier(&hs))
		}
	})
	b.Run("stock/inject", func(b *testing.B) {
		ctx := benchJourney(b, true)
		b.ReportAllocs()
		for b.Loop() {
			hs := make([]kafkago.Header, 0, 4)
			stock.Inject(ctx, stockCarrier{&hs})
		}
	})
	b.Run("ours/extract", func(b *testing.B) {
		var hs []kafkago.Header
		ours.Inject(benchJourney(b, false), tbkafka.NewCarrier(&hs))
		b.ReportAllocs()
		for b.Loop() {
			ctx := ours.Extract(context.Background(), tbkafka.NewCarrier(&hs))
			if !trace.SpanContextFromContext(ctx).IsValid() {
				b.Fatal("no span context")
			}
		}
	})
	b.Run("stock/extract", func(b *testing.B) {
		var hs []kafkago.Header
		stock.Inject(benchJourney(b, true), stockCarrier{&hs})
		b.ReportAllocs()
		for b.Loop() {
			ctx := stock.Extract(context.Background(), stockCarrier{&hs})
			if !trace.SpanContextFromContext(ctx).IsValid() {
				b.Fatal("no span context")
			}
		}
	})
}
