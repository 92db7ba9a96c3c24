package nats_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// benchProviders are the three ways a wrapped client runs: no sampling
// (the SDK drops every span), and sampling every span with the SDK's own
// work but no exporter, so what is measured is tracebridge plus the SDK.
func benchProviders(b *testing.B) map[string]*sdktrace.TracerProvider {
	un := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	sa := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { _ = un.Shutdown(context.Background()); _ = sa.Shutdown(context.Background()) })
	return map[string]*sdktrace.TracerProvider{"unsampled": un, "sampled": sa}
}

func msgsPerSec(b *testing.B, start time.Time) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkSpanSDK is the SDK's own cost of starting and ending one
// sampled span, the yardstick for the sampled overhead.
func BenchmarkSpanSDK(b *testing.B) {
	tr := benchProviders(b)["sampled"].Tracer("bench")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, s := tr.Start(ctx, "send bench")
		s.End()
	}
}

func BenchmarkCorePublish(b *testing.B) {
	url := testenv.NATS(b)
	payload := make([]byte, 128)
	b.Run("raw", func(b *testing.B) {
		nc := connect(b, url)
		subj := unique(b, "bench")
		b.ReportAllocs()
		start := time.Now()
		for b.Loop() {
			if err := nc.Publish(subj, payload); err != nil {
				b.Fatal(err)
			}
		}
		_ = nc.Flush()
		msgsPerSec(b, start)
	})
	provs := benchProviders(b)
	for _, name := range []string{"unsampled", "sampled"} {
		b.Run(name, func(b *testing.B) {
			c := tnats.Wrap(connect(b, url), tracebridge.WithTracerProvider(provs[name]))
			subj := unique(b, "bench")
			ctx := context.Background()
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				if err := c.Publish(ctx, subj, payload); err != nil {
					b.Fatal(err)
				}
			}
			_ = c.Flush()
			msgsPerSec(b, start)
		})
	}
}

// BenchmarkJetStream publishes b.N messages asynchronously and consumes
// and acks them all: one message's full round trip per iteration.
func BenchmarkJetStream(b *testing.B) {
	url := testenv.NATS(b)
	payload := make([]byte, 128)
	run := func(b *testing.B, publish func(subj string) error, consume func(cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error)) {
		js, err := jetstream.New(connect(b, url))
		if err != nil {
			b.Fatal(err)
		}
		subj := unique(b, "jsbench")
		st := stream(b, js, jetstream.StreamConfig{Name: subj, Subjects: []string{subj}})
		cons := consumer(b, st, jetstream.ConsumerConfig{Durable: "c", MaxAckPending: -1})
		var n atomic.Int64
		b.ReportAllocs()
		start := time.Now()
		cc, err := consume(cons, &n)
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Stop()
		for b.Loop() {
			if err := publish(subj); err != nil {
				b.Fatal(err)
			}
		}
		for n.Load() < int64(b.N) {
			time.Sleep(time.Millisecond)
		}
		msgsPerSec(b, start)
	}
	b.Run("raw", func(b *testing.B) {
		var js jetstream.JetStream
		run(b, func(subj string) error {
			_, err := js.PublishAsync(subj, payload)
			return err
		}, func(cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error) {
			js, _ = jetstream.New(connect(b, url))
			return cons.Consume(func(m jetstream.Msg) {
				_ = m.Ack()
				n.Add(1)
			})
		})
	})
	provs := benchProviders(b)
	for _, name := range []string{"unsampled", "sampled"} {
		b.Run(name, func(b *testing.B) {
			var tjs *tnats.JetStream
			ctx := context.Background()
			run(b, func(subj string) error {
				_, err := tjs.PublishAsync(ctx, subj, payload)
				return err
			}, func(cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error) {
				js, _ := jetstream.New(connect(b, url))
				tjs = tnats.WrapJetStream(js, tracebridge.WithTracerProvider(provs[name]))
				c := tnats.NewConsumer(js, cons, tracebridge.WithTracerProvider(provs[name]))
				return c.Consume(func(context.Context, jetstream.Msg) error {
					n.Add(1)
					return nil
				})
			})
		})
	}
}
