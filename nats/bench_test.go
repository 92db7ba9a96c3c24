package nats_test

import (
	"context"
	"encoding/binary"
	neturl "net/url"
	"strconv"
	"sync"
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
			ctx := benchwrap.SessionInBaggage(testenv.Parent(h.Sampled))
			extra := sendAttrs(ctx, server(url), len(payload))
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

// server is server.address and server.port of url, worked out once per
// row, as a hand-written wrapper would when it is set up.
func server(url string) []attribute.KeyValue {
	u, _ := neturl.Parse(url)
	p, _ := strconv.Atoi(u.Port())
	return []attribute.KeyValue{semconv.ServerAddress(u.Hostname()), semconv.ServerPort(p)}
}

// sendAttrs are the attributes tracebridge records on a NATS send span
// beyond the minimal ones, for the handfull rows.
func sendAttrs(ctx context.Context, srv []attribute.KeyValue, size int) benchwrap.Extra {
	return func(a []attribute.KeyValue) []attribute.KeyValue {
		a = append(a, srv...)
		a = append(a, semconv.MessagingMessageBodySize(size))
		if s := carrier.SessionFromContext(ctx); s != "" {
			a = append(a, semconv.SessionID(s))
		}
		return a
	}
}

// receiveAttrs are the attributes tracebridge records on a NATS process
// span beyond the minimal ones.
func receiveAttrs(srv []attribute.KeyValue, m *nats.Msg, group string) benchwrap.Extra {
	return func(a []attribute.KeyValue) []attribute.KeyValue {
		a = append(a, srv...)
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
			srv := server(url)
			run(b, h.Sampled, func(nc *nats.Conn, subj string, n *atomic.Int64) (*nats.Subscription, error) {
				return nc.Subscribe(subj, func(m *nats.Msg) {
					_, span := hw.Receive(context.Background(), m.Subject, benchwrap.NATSCarrier(m.Header), receiveAttrs(srv, m, ""))
					n.Add(1)
					span.End()
				})
			})
		})
	}
}

// BenchmarkCoreRequest sends b.N requests, each waiting for its reply from
// a raw responder on a second connection: raw, tracebridge's Request and
// the hand-written one (a CLIENT span around RequestMsg, its context
// injected into the request's headers). The responder is the same in
// every row.
func BenchmarkCoreRequest(b *testing.B) {
	url := testenv.NATS(b)
	payload := make([]byte, 128)
	run := func(b *testing.B, request func(nc *nats.Conn, subj string) error) {
		nc, rc := connect(b, url), connect(b, url)
		subj := unique(b, "benchreq")
		if _, err := rc.Subscribe(subj, func(m *nats.Msg) { _ = m.Respond(payload) }); err != nil {
			b.Fatal(err)
		}
		if err := rc.Flush(); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		start := time.Now()
		cpu := benchwrap.CPU(b)
		for b.Loop() {
			if err := request(nc, subj); err != nil {
				b.Fatal(err)
			}
		}
		cpu(b.N)
		msgsPerSec(b, start)
	}
	b.Run("raw", func(b *testing.B) {
		run(b, func(nc *nats.Conn, subj string) error {
			_, err := nc.Request(subj, payload, 5*time.Second)
			return err
		})
	})
	for _, v := range benchVariants(b) {
		b.Run(v.name, func(b *testing.B) {
			var c *tnats.Conn
			run(b, func(nc *nats.Conn, subj string) error {
				if c == nil {
					c = tnats.Wrap(nc, v.opts...)
				}
				_, err := c.Request(v.ctx, subj, payload, 5*time.Second)
				return err
			})
		})
	}
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			hw := benchwrap.New(benchTP(b), "nats", h.Full)
			ctx := benchwrap.SessionInBaggage(testenv.Parent(h.Sampled))
			extra := requestAttrs(server(url), len(payload))
			run(b, func(nc *nats.Conn, subj string) error {
				m := &nats.Msg{Subject: subj, Data: payload, Header: nats.Header{}}
				_, span := hw.Request(ctx, subj, benchwrap.NATSCarrier(m.Header), extra)
				_, err := nc.RequestMsg(m, 5*time.Second)
				benchwrap.End(span, err)
				return err
			})
		})
	}
}

// requestAttrs are the attributes tracebridge records on a request span
// beyond the minimal ones.
func requestAttrs(srv []attribute.KeyValue, size int) benchwrap.Extra {
	return func(a []attribute.KeyValue) []attribute.KeyValue {
		return append(append(a, srv...), semconv.MessagingMessageBodySize(size))
	}
}

// jsStream is a row's own connection and a memory stream of its own, named
// like its one subject.
func jsStream(b *testing.B, url string) (*nats.Conn, jetstream.Stream, string) {
	nc := connect(b, url)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	subj := unique(b, "jsbench")
	return nc, stream(b, js, jetstream.StreamConfig{Name: subj, Subjects: []string{subj}}), subj
}

// ackAttrs records the PubAck's stream and sequence as tracebridge does,
// for the handfull rows.
func ackAttrs(span trace.Span, ack *jetstream.PubAck) {
	if ack != nil && span.IsRecording() {
		span.SetAttributes(tnats.StreamKey.String(ack.Stream), tnats.StreamSequenceKey.Int64(int64(ack.Sequence)))
	}
}

// BenchmarkJetStreamPublish publishes b.N messages with PublishMsg, each
// waiting for its PubAck. tracebridge's send span and the hand-written
// ones end at the ack; tracebridge and handfull record its stream and
// sequence.
func BenchmarkJetStreamPublish(b *testing.B) {
	url := testenv.NATS(b)
	payload := make([]byte, 128)
	run := func(b *testing.B, publish func() error) {
		b.ReportAllocs()
		start := time.Now()
		cpu := benchwrap.CPU(b)
		for b.Loop() {
			if err := publish(); err != nil {
				b.Fatal(err)
			}
		}
		cpu(b.N)
		msgsPerSec(b, start)
	}
	b.Run("raw", func(b *testing.B) {
		nc, _, subj := jsStream(b, url)
		js, _ := jetstream.New(nc)
		ctx := context.Background()
		run(b, func() error {
			_, err := js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: payload})
			return err
		})
	})
	for _, v := range benchVariants(b) {
		b.Run(v.name, func(b *testing.B) {
			nc, _, subj := jsStream(b, url)
			tjs, err := tnats.NewJetStream(nc, nil, v.opts...)
			if err != nil {
				b.Fatal(err)
			}
			run(b, func() error {
				_, err := tjs.PublishMsg(v.ctx, &nats.Msg{Subject: subj, Data: payload})
				return err
			})
		})
	}
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			nc, _, subj := jsStream(b, url)
			js, _ := jetstream.New(nc)
			hw := benchwrap.New(benchTP(b), "nats", h.Full)
			ctx := benchwrap.SessionInBaggage(testenv.Parent(h.Sampled))
			extra := sendAttrs(ctx, server(url), len(payload))
			run(b, func() error {
				m := &nats.Msg{Subject: subj, Data: payload, Header: nats.Header{}}
				sctx, span := hw.Send(ctx, subj, benchwrap.NATSCarrier(m.Header), extra)
				ack, err := js.PublishMsg(sctx, m)
				if h.Full {
					ackAttrs(span, ack)
				}
				benchwrap.End(span, err)
				return err
			})
		})
	}
}

// ackSpans is the hand-written async publish that records the PubAck: the
// send spans wait in a map for JetStream's ack and error handlers.
type ackSpans struct {
	mu sync.Mutex
	m  map[*nats.Msg]trace.Span
}

func (a *ackSpans) take(m *nats.Msg) trace.Span {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.m[m]
	delete(a.m, m)
	return s
}

func (a *ackSpans) ack(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
	if s := a.take(m); s != nil {
		ackAttrs(s, ack)
		s.End()
	}
}

func (a *ackSpans) fail(_ jetstream.JetStream, m *nats.Msg, err error) {
	if s := a.take(m); s != nil {
		benchwrap.End(s, err)
	}
}

// BenchmarkJetStreamPublishAsync publishes b.N messages with
// PublishMsgAsync and waits for all their acks. tracebridge's send span
// ends at the ack and records the stream and sequence; so does handfull's
// (through JetStream's ack handlers), while hand's ends when
// PublishMsgAsync returns. The wrapjetstream rows are WrapJetStream, whose
// spans end on a relay of each future.
func BenchmarkJetStreamPublishAsync(b *testing.B) {
	url := testenv.NATS(b)
	payload := make([]byte, 128)
	run := func(b *testing.B, js jetstream.JetStream, publish func() (jetstream.PubAckFuture, error)) {
		b.ReportAllocs()
		start := time.Now()
		cpu := benchwrap.CPU(b)
		var last jetstream.PubAckFuture
		for b.Loop() {
			f, err := publish()
			if err != nil {
				b.Fatal(err)
			}
			last = f
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatalf("%d acks pending", js.PublishAsyncPending())
		}
		// A relayed future (WrapJetStream) is told after the span ended.
		select {
		case <-last.Ok():
		case err := <-last.Err():
			b.Fatal(err)
		}
		cpu(b.N)
		msgsPerSec(b, start)
	}
	b.Run("raw", func(b *testing.B) {
		nc, _, subj := jsStream(b, url)
		js, _ := jetstream.New(nc)
		run(b, js, func() (jetstream.PubAckFuture, error) {
			return js.PublishMsgAsync(&nats.Msg{Subject: subj, Data: payload})
		})
	})
	tb := func(v benchVariant, wrap bool) func(b *testing.B) {
		return func(b *testing.B) {
			nc, _, subj := jsStream(b, url)
			var tjs *tnats.JetStream
			if wrap {
				js, _ := jetstream.New(nc)
				tjs = tnats.WrapJetStream(js, v.opts...)
			} else {
				var err error
				if tjs, err = tnats.NewJetStream(nc, nil, v.opts...); err != nil {
					b.Fatal(err)
				}
			}
			run(b, tjs.JetStream, func() (jetstream.PubAckFuture, error) {
				return tjs.PublishMsgAsync(v.ctx, &nats.Msg{Subject: subj, Data: payload})
			})
		}
	}
	for _, v := range benchVariants(b) {
		b.Run(v.name, tb(v, false))
	}
	for _, v := range benchVariants(b)[:3] {
		b.Run("wrapjetstream-"+v.name, tb(v, true))
	}
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			nc, _, subj := jsStream(b, url)
			hw := benchwrap.New(benchTP(b), "nats", h.Full)
			ctx := benchwrap.SessionInBaggage(testenv.Parent(h.Sampled))
			extra := sendAttrs(ctx, server(url), len(payload))
			if !h.Full {
				js, _ := jetstream.New(nc)
				run(b, js, func() (jetstream.PubAckFuture, error) {
					m := &nats.Msg{Subject: subj, Data: payload, Header: nats.Header{}}
					_, span := hw.Send(ctx, subj, benchwrap.NATSCarrier(m.Header), extra)
					f, err := js.PublishMsgAsync(m)
					benchwrap.End(span, err)
					return f, err
				})
				return
			}
			spans := &ackSpans{m: map[*nats.Msg]trace.Span{}}
			js, _ := jetstream.New(nc, jetstream.WithPublishAsyncAckHandler(spans.ack), jetstream.WithPublishAsyncErrHandler(spans.fail))
			run(b, js, func() (jetstream.PubAckFuture, error) {
				m := &nats.Msg{Subject: subj, Data: payload, Header: nats.Header{}}
				_, span := hw.Send(ctx, subj, benchwrap.NATSCarrier(m.Header), extra)
				spans.mu.Lock()
				spans.m[m] = span
				spans.mu.Unlock()
				f, err := js.PublishMsgAsync(m)
				if err != nil && spans.take(m) != nil {
					benchwrap.End(span, err)
				}
				return f, err
			})
		})
	}
}

// BenchmarkJetStreamConsume consumes and acks b.N messages published
// beforehand, each with a journey of its own under an unsampled or a
// sampled parent: raw, tracebridge's NewConsumer and the hand-written
// Consume callback.
func BenchmarkJetStreamConsume(b *testing.B) {
	url := testenv.NATS(b)
	payload := make([]byte, 128)
	run := func(b *testing.B, sampled bool, consume func(nc *nats.Conn, cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error)) {
		nc, st, subj := jsStream(b, url)
		js, _ := jetstream.New(nc)
		parentCtx := testenv.Parent(sampled)
		parent := trace.SpanContextFromContext(parentCtx)
		prop := carrier.NewPropagator()
		for i := range b.N {
			// Each message's creation context is a span of its own, as a
			// producer's send span would be.
			var id trace.SpanID
			binary.BigEndian.PutUint64(id[:], uint64(i)+1)
			h := nats.Header{}
			prop.Inject(trace.ContextWithRemoteSpanContext(parentCtx, parent.WithSpanID(id)), tnats.HeaderCarrier(h))
			if _, err := js.PublishMsgAsync(&nats.Msg{Subject: subj, Data: payload, Header: h}); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("publishes not acked")
		}
		cons := consumer(b, st, jetstream.ConsumerConfig{Durable: "c", MaxAckPending: -1})
		var n atomic.Int64
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		cpu := benchwrap.CPU(b)
		cc, err := consume(nc, cons, &n)
		if err != nil {
			b.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for n.Load() < int64(b.N) {
			if time.Now().After(deadline) {
				b.Fatalf("handled %d of %d", n.Load(), b.N)
			}
			time.Sleep(time.Millisecond)
		}
		cpu(b.N)
		b.StopTimer()
		msgsPerSec(b, start)
		cc.Stop()
		<-cc.Closed()
	}
	for _, sampled := range []bool{false, true} {
		mode := "unsampled"
		if sampled {
			mode = "sampled"
		}
		b.Run("raw-"+mode, func(b *testing.B) {
			run(b, sampled, func(_ *nats.Conn, cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error) {
				return cons.Consume(func(m jetstream.Msg) {
					_ = m.Headers()
					n.Add(1)
					_ = m.Ack()
				})
			})
		})
	}
	for _, v := range benchVariants(b) {
		b.Run(v.name, func(b *testing.B) {
			run(b, trace.SpanContextFromContext(v.ctx).IsSampled(), func(nc *nats.Conn, cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error) {
				js, _ := jetstream.New(nc)
				return tnats.NewConsumer(js, cons, v.opts...).Consume(func(context.Context, jetstream.Msg) error {
					n.Add(1)
					return nil
				})
			})
		})
	}
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			hw := benchwrap.New(benchTP(b), "nats", h.Full)
			srv := server(url)
			run(b, h.Sampled, func(_ *nats.Conn, cons jetstream.Consumer, n *atomic.Int64) (jetstream.ConsumeContext, error) {
				return cons.Consume(func(m jetstream.Msg) {
					var extra benchwrap.Extra
					if h.Full {
						extra = consumeAttrs(srv, m)
					}
					_, span := hw.Receive(context.Background(), m.Subject(), benchwrap.NATSCarrier(m.Headers()), extra)
					n.Add(1)
					benchwrap.End(span, m.Ack())
				})
			})
		})
	}
}

// consumeAttrs are the attributes tracebridge records on a JetStream
// process span beyond the minimal ones: receiveAttrs' and the message's
// stream position.
func consumeAttrs(srv []attribute.KeyValue, m jetstream.Msg) benchwrap.Extra {
	return func(a []attribute.KeyValue) []attribute.KeyValue {
		a = append(append(a, srv...), semconv.MessagingConsumerGroupName("c"), semconv.MessagingMessageBodySize(len(m.Data())))
		if md, err := m.Metadata(); err == nil {
			a = append(a, attribute.Int("tracebridge.attempt", int(md.NumDelivered)), tnats.StreamKey.String(md.Stream),
				tnats.StreamSequenceKey.Int64(int64(md.Sequence.Stream)), tnats.DeliveredKey.Int64(int64(md.NumDelivered)))
		}
		return a
	}
}
