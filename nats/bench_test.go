package nats_test

import (
	"context"
	neturl "net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/benchwrap"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
	"github.com/tracebridge/tracebridge/sampling"
)

// benchVariant is one way a wrapped client runs: under an unsampled or a
// sampled parent, with the SDK's default (parent-based) sampler and no
// exporter, so what is measured is tracebridge plus the SDK.
type benchVariant struct {
	name string
	ctx  context.Context
	opts []tracebridge.Option
}

func benchVariants(b *testing.B) []benchVariant {
	tp := sdktrace.NewTracerProvider()
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	with := tracebridge.WithTracerProvider(tp)
	stp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampling.New(0.1)))
	b.Cleanup(func() { _ = stp.Shutdown(context.Background()) })
	return []benchVariant{
		{"unsampled", testenv.Parent(false), []tracebridge.Option{with}},
		{"unsampled-parentbased", testenv.Parent(false), []tracebridge.Option{with, tracebridge.WithParentBasedSampling()}},
		{"sampled", testenv.Parent(true), []tracebridge.Option{with}},
		// The unsampled path off (the default before the probe), and the
		// session sampler, which is asked per message about debug sessions.
		{"unsampled-ask", testenv.Parent(false), []tracebridge.Option{with, tracebridge.WithoutParentBasedSampling()}},
		{"unsampled-session", testenv.Parent(false), []tracebridge.Option{tracebridge.WithTracerProvider(stp)}},
	}
}

func msgsPerSec(b *testing.B, start time.Time) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkSpanSDK is the SDK's own cost of starting and ending one
// sampled span, the yardstick for the sampled overhead: bare, and with the
// attributes the messaging conventions ask of a NATS send span (start-time
// ones first, the rest set once the span records, as tracebridge does).
func BenchmarkSpanSDK(b *testing.B) {
	tp := sdktrace.NewTracerProvider()
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := tp.Tracer("bench")
	ctx := testenv.Parent(true)
	b.Run("bare", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, s := tr.Start(ctx, "send bench")
			s.End()
		}
	})
	b.Run("semconv", func(b *testing.B) {
		start := trace.WithAttributes(semconv.MessagingSystemKey.String("nats"), semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("send"), semconv.MessagingDestinationName("bench"),
			semconv.ServerAddress("127.0.0.1"), semconv.ServerPort(4222))
		kind := trace.WithSpanKind(trace.SpanKindProducer)
		b.ReportAllocs()
		for b.Loop() {
			_, s := tr.Start(ctx, "send bench", kind, start)
			s.SetAttributes(semconv.MessagingMessageBodySize(128), semconv.SessionID("0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a"))
			s.End()
		}
	})
}

// BenchmarkCorePublish compares wrapped publishes with raw ones, both
// without headers and with the headers tracebridge writes (raw-headers):
// nats.go encodes any header map on every publish, which is a cost of
// carrying a journey at all, before tracebridge does anything.
func BenchmarkCorePublish(b *testing.B) {
	url := testenv.NATS(b)
	payload := make([]byte, 128)
	b.Run("raw", func(b *testing.B) {
		nc := connect(b, url)
		subj := unique(b, "bench")
		b.ReportAllocs()
		start := time.Now()
		cpu := benchwrap.CPU(b)
		for b.Loop() {
			if err := nc.Publish(subj, payload); err != nil {
				b.Fatal(err)
			}
		}
		_ = nc.Flush()
		cpu(b.N)
		msgsPerSec(b, start)
	})
	b.Run("raw-headers", func(b *testing.B) {
		nc := connect(b, url)
		subj := unique(b, "bench")
		h := nats.Header{}
		carrier.NewPropagator().Inject(testenv.Parent(false), tnats.HeaderCarrier(h))
		b.ReportAllocs()
		start := time.Now()
		cpu := benchwrap.CPU(b)
		for b.Loop() {
			if err := nc.PublishMsg(&nats.Msg{Subject: subj, Data: payload, Header: h}); err != nil {
				b.Fatal(err)
			}
		}
		_ = nc.Flush()
		cpu(b.N)
		msgsPerSec(b, start)
	})
	for _, v := range benchVariants(b) {
		b.Run(v.name, func(b *testing.B) {
			c := tnats.Wrap(connect(b, url), v.opts...)
			subj := unique(b, "bench")
			b.ReportAllocs()
			start := time.Now()
			cpu := benchwrap.CPU(b)
			for b.Loop() {
				if err := c.Publish(v.ctx, subj, payload); err != nil {
					b.Fatal(err)
				}
			}
			_ = c.Flush()
			cpu(b.N)
			msgsPerSec(b, start)
		})
	}
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			nc := connect(b, url)
			subj := unique(b, "bench")
			hw := benchwrap.New(benchTP(b), "nats", h.Full)
			ctx := testenv.Parent(h.Sampled)
			extra := sendAttrs(ctx, url, len(payload))
			b.ReportAllocs()
			start := time.Now()
			cpu := benchwrap.CPU(b)
			for b.Loop() {
				m := &nats.Msg{Subject: subj, Data: payload, Header: nats.Header{}}
				_, span := hw.Send(ctx, subj, benchwrap.NATSCarrier(m.Header), extra)
				err := nc.PublishMsg(m)
				benchwrap.End(span, err)
				if err != nil {
					b.Fatal(err)
				}
			}
			_ = nc.Flush()
			cpu(b.N)
			msgsPerSec(b, start)
		})
	}
}

// benchTP is the hand-written rows' provider, the same SDK setup as
// benchVariants'.
func benchTP(b *testing.B) *sdktrace.TracerProvider {
	tp := sdktrace.NewTracerProvider()
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// serverAttrs are server.address and server.port of url.
func serverAttrs(dst []attribute.KeyValue, url string) []attribute.KeyValue {
	u, _ := neturl.Parse(url)
	p, _ := strconv.Atoi(u.Port())
	return append(dst, semconv.ServerAddress(u.Hostname()), semconv.ServerPort(p))
}

// sendAttrs are the attributes tracebridge records on a NATS send span
// beyond the minimal ones, for the handfull rows.
func sendAttrs(ctx context.Context, url string, size int) benchwrap.Extra {
	return func(a []attribute.KeyValue) []attribute.KeyValue {
		a = serverAttrs(a, url)
		a = append(a, semconv.MessagingMessageBodySize(size))
		if s := carrier.SessionFromContext(ctx); s != "" {
			a = append(a, semconv.SessionID(s))
		}
		return a
	}
}

// receiveAttrs are the attributes tracebridge records on a NATS process
// span beyond the minimal ones.
func receiveAttrs(url string, m *nats.Msg, group string) benchwrap.Extra {
	return func(a []attribute.KeyValue) []attribute.KeyValue {
		a = serverAttrs(a, url)
		if group != "" {
			a = append(a, semconv.MessagingConsumerGroupName(group))
		}
		return append(a, semconv.MessagingMessageBodySize(len(m.Data)), attribute.Int("tracebridge.attempt", 1))
	}
}

// BenchmarkCoreSubscribe publishes b.N messages carrying a journey (from
// a second connection) to a subscriber: raw, tracebridge's Subscribe and
// the hand-written one. The publishing side is the same in every row.
func BenchmarkCoreSubscribe(b *testing.B) {
	url := testenv.NATS(b)
	payload := make([]byte, 128)
	run := func(b *testing.B, sampled bool, subscribe func(nc *nats.Conn, subj string, n *atomic.Int64) (*nats.Subscription, error)) {
		nc, pub := connect(b, url), connect(b, url)
		subj := unique(b, "benchsub")
		h := nats.Header{}
		carrier.NewPropagator().Inject(testenv.Parent(sampled), tnats.HeaderCarrier(h))
		var n atomic.Int64
		sub, err := subscribe(nc, subj, &n)
		if err != nil {
			b.Fatal(err)
		}
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			b.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		cpu := benchwrap.CPU(b)
		for range b.N {
			if err := pub.PublishMsg(&nats.Msg{Subject: subj, Data: payload, Header: h}); err != nil {
				b.Fatal(err)
			}
		}
		_ = pub.Flush()
		deadline := time.Now().Add(2 * time.Minute)
		for n.Load() < int64(b.N) {
			if time.Now().After(deadline) {
				b.Fatalf("received %d of %d", n.Load(), b.N)
			}
			time.Sleep(time.Millisecond)
		}
		cpu(b.N)
		msgsPerSec(b, start)
	}
	for _, sampled := range []bool{false, true} {
		mode := "unsampled"
		if sampled {
			mode = "sampled"
		}
		b.Run("raw-"+mode, func(b *testing.B) {
			run(b, sampled, func(nc *nats.Conn, subj string, n *atomic.Int64) (*nats.Subscription, error) {
				return nc.Subscribe(subj, func(m *nats.Msg) { _ = m.Header; n.Add(1) })
			})
		})
		b.Run(mode, func(b *testing.B) {
			tp := benchTP(b)
			run(b, sampled, func(nc *nats.Conn, subj string, n *atomic.Int64) (*nats.Subscription, error) {
				return tnats.Wrap(nc, tracebridge.WithTracerProvider(tp)).Subscribe(subj, func(context.Context, *nats.Msg) { n.Add(1) })
			})
		})
	}
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			hw := benchwrap.New(benchTP(b), "nats", h.Full)
			run(b, h.Sampled, func(nc *nats.Conn, subj string, n *atomic.Int64) (*nats.Subscription, error) {
				return nc.Subscribe(subj, func(m *nats.Msg) {
					_, span := hw.Receive(context.Background(), m.Subject, benchwrap.NATSCarrier(m.Header), receiveAttrs(url, m, ""))
					n.Add(1)
					span.End()
				})
			})
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
		cpu := benchwrap.CPU(b)
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
		cpu(b.N)
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
	b.Run("raw-headers", func(b *testing.B) {
		var js jetstream.JetStream
		h := nats.Header{}
		carrier.NewPropagator().Inject(testenv.Parent(false), tnats.HeaderCarrier(h))
		run(b, func(subj string) error {
			_, err := js.PublishMsgAsync(&nats.Msg{Subject: subj, Data: payload, Header: h})
			return err
		}, func(cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error) {
			js, _ = jetstream.New(connect(b, url))
			return cons.Consume(func(m jetstream.Msg) {
				_ = m.Headers()
				_ = m.Ack()
				n.Add(1)
			})
		})
	})
	wrapped := func(v benchVariant, wrap bool) func(b *testing.B) {
		return func(b *testing.B) {
			var tjs *tnats.JetStream
			run(b, func(subj string) error {
				_, err := tjs.PublishAsync(v.ctx, subj, payload)
				return err
			}, func(cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error) {
				nc := connect(b, url)
				if wrap {
					js, _ := jetstream.New(nc)
					tjs = tnats.WrapJetStream(js, v.opts...)
				} else {
					var err error
					if tjs, err = tnats.NewJetStream(nc, nil, v.opts...); err != nil {
						b.Fatal(err)
					}
				}
				c := tnats.NewConsumer(tjs.JetStream, cons, v.opts...)
				return c.Consume(func(context.Context, jetstream.Msg) error {
					n.Add(1)
					return nil
				})
			})
		}
	}
	for _, v := range benchVariants(b) {
		b.Run(v.name, wrapped(v, false))
	}
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			var js jetstream.JetStream
			hw := benchwrap.New(benchTP(b), "nats", h.Full)
			ctx := testenv.Parent(h.Sampled)
			extra := sendAttrs(ctx, url, len(payload))
			run(b, func(subj string) error {
				m := &nats.Msg{Subject: subj, Data: payload, Header: nats.Header{}}
				_, span := hw.Send(ctx, subj, benchwrap.NATSCarrier(m.Header), extra)
				_, err := js.PublishMsgAsync(m)
				benchwrap.End(span, err)
				return err
			}, func(cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error) {
				js, _ = jetstream.New(connect(b, url))
				return cons.Consume(func(m jetstream.Msg) {
					var extra benchwrap.Extra
					if h.Full {
						extra = receiveAttrs(url, &nats.Msg{Data: m.Data()}, "c")
					}
					_, span := hw.Receive(context.Background(), m.Subject(), benchwrap.NATSCarrier(m.Headers()), extra)
					n.Add(1)
					benchwrap.End(span, m.Ack())
				})
			})
		})
	}
	// WrapJetStream waits for each async publish's ack on a goroutine.
	b.Run("unsampled-wrapjetstream", wrapped(benchVariants(b)[0], true))
}
