package kafka_test

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/benchwrap"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
	"github.com/tracebridge/tracebridge/sampling"
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

// benchVariant is one way a wrapped client runs: under an unsampled or a
// sampled parent (testenv.Parent), with the SDK's default parent-based
// sampler behind a batching processor.
type benchVariant struct {
	name    string
	sampled bool
	opts    []tracebridge.Option
}

func benchVariants(b *testing.B) []benchVariant {
	with := tracebridge.WithTracerProvider(benchProvider(b, sdktrace.ParentBased(sdktrace.AlwaysSample())))
	return []benchVariant{
		{"unsampled", false, []tracebridge.Option{with}},
		{"unsampled-parentbased", false, []tracebridge.Option{with, tracebridge.WithParentBasedSampling()}},
		{"sampled", true, []tracebridge.Option{with}},
		{"sampled-nocreate", true, []tracebridge.Option{with, tracebridge.WithoutCreateSpans()}},
		// The unsampled path off (the default before the probe), and the
		// session sampler, which is asked per message about debug sessions.
		{"unsampled-ask", false, []tracebridge.Option{with, tracebridge.WithoutParentBasedSampling()}},
		{"unsampled-session", false, []tracebridge.Option{tracebridge.WithTracerProvider(benchProvider(b, sampling.New(0.1)))}},
	}
}

// benchHeaders are the headers tracebridge writes under an unsampled
// parent, for the raw-headers row: what carrying a journey costs kafka-go
// and the broker before tracebridge does anything.
func benchHeaders() []kafkago.Header {
	var hs []kafkago.Header
	carrier.NewPropagator().Inject(testenv.Parent(false), tbkafka.NewCarrier(&hs))
	return hs
}

// BenchmarkWriter writes batches of 100 messages and single messages
// (b100, b1) through the raw writer, tracebridge and the hand-written
// wrappers (hand: the minimal one; handfull: the same with
// tracebridge's attributes), reporting process CPU time per message.
func BenchmarkWriter(b *testing.B) {
	addrs := testenv.Kafka(b)
	run := func(b *testing.B, batch int, w messageWriter, ctx context.Context, headers []kafkago.Header) {
		defer w.Close()
		runtime.GC()
		msgs := make([]kafkago.Message, batch)
		for i := range msgs {
			msgs[i] = kafkago.Message{Key: []byte(fmt.Sprintf("key-%03d", i)), Value: make([]byte, 256), Headers: headers}
		}
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		cpu := benchwrap.CPU(b)
		for i := 0; i < b.N; i += batch {
			if err := w.WriteMessages(ctx, msgs[:min(batch, b.N-i)]...); err != nil {
				b.Fatal(err)
			}
		}
		cpu(b.N)
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	}
	for _, batch := range []int{benchBatch, 1} {
		writer := func(b *testing.B) *kafkago.Writer {
			topic, drop := benchTopic(b, addrs, "bench-w")
			b.Cleanup(drop)
			raw := rawWriter(addrs, topic)
			raw.Balancer, raw.BatchSize = onePartition, batch
			return raw
		}
		name := fmt.Sprintf("b%d/", batch)
		b.Run(name+"raw", func(b *testing.B) { run(b, batch, writer(b), context.Background(), nil) })
		b.Run(name+"raw-headers", func(b *testing.B) { run(b, batch, writer(b), context.Background(), benchHeaders()) })
		for _, v := range benchVariants(b) {
			b.Run(name+v.name, func(b *testing.B) {
				run(b, batch, tbkafka.NewWriter(writer(b), v.opts...), testenv.Parent(v.sampled), nil)
			})
		}
		for _, h := range benchwrap.Variants() {
			b.Run(name+h.Name, func(b *testing.B) {
				tp := benchProvider(b, sdktrace.ParentBased(sdktrace.AlwaysSample()))
				run(b, batch, &handWriter{Writer: writer(b), w: benchwrap.New(tp, "kafka", h.Full), full: h.Full, addrs: addrs},
					benchwrap.SessionInBaggage(testenv.Parent(h.Sampled)), nil)
			})
		}
	}
}

// serverAttrs are server.address and server.port of the first broker.
func serverAttrs(dst []attribute.KeyValue, addrs []string) []attribute.KeyValue {
	host, port, _ := net.SplitHostPort(addrs[0])
	p, _ := strconv.Atoi(port)
	return append(dst, semconv.ServerAddress(host), semconv.ServerPort(p))
}

// handWriter is the producer a user writes by hand: a PRODUCER span per
// message, injected into a copy of the message, ended when the write
// returns.
type handWriter struct {
	*kafkago.Writer
	w     *benchwrap.Wrapper
	full  bool
	addrs []string
}

func (h *handWriter) WriteMessages(ctx context.Context, msgs ...kafkago.Message) error {
	out := make([]kafkago.Message, len(msgs))
	spans := make([]trace.Span, len(msgs))
	for i := range msgs {
		out[i] = msgs[i]
		m := &out[i]
		m.Headers = m.Headers[:len(m.Headers):len(m.Headers)]
		_, spans[i] = h.w.Send(ctx, h.Topic, benchwrap.KafkaCarrier{H: &m.Headers}, func(a []attribute.KeyValue) []attribute.KeyValue {
			a = serverAttrs(a, h.addrs)
			a = append(a, semconv.MessagingMessageBodySize(len(m.Value)), semconv.MessagingKafkaMessageKey(string(m.Key)))
			if s := carrier.SessionFromContext(ctx); s != "" {
				a = append(a, semconv.SessionID(s))
			}
			return a
		})
	}
	err := h.Writer.WriteMessages(ctx, out...)
	for i, s := range spans {
		if h.full && err == nil {
			s.SetAttributes(semconv.MessagingDestinationPartitionID(strconv.Itoa(out[i].Partition)),
				semconv.MessagingKafkaOffset(int(out[i].Offset)))
		}
		benchwrap.End(s, err)
	}
	return err
}

// benchProduce fills a new topic with n messages carrying the journey of an
// unsampled or sampled parent, for one consume row.
func benchProduce(b *testing.B, addrs []string, sampled bool, n int) string {
	topic, drop := benchTopic(b, addrs, "bench-c")
	b.Cleanup(drop)
	w := tbkafka.NewWriter(rawWriter(addrs, topic), tracebridge.WithTracerProvider(benchProvider(b, sdktrace.ParentBased(sdktrace.AlwaysSample()))))
	defer w.Close()
	msgs := make([]kafkago.Message, 1000)
	for i := range msgs {
		msgs[i] = kafkago.Message{Key: []byte(fmt.Sprintf("key-%03d", i%100)), Value: make([]byte, 256)}
	}
	ctx := testenv.Parent(sampled)
	for i := 0; i < n; i += len(msgs) {
		if err := w.WriteMessages(ctx, msgs[:min(len(msgs), n-i)]...); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	return topic
}

// benchRate reports the rate from the first message on, so the group join
// is not part of it.
func benchRate(b *testing.B, start time.Time) {
	if b.N > 1 {
		b.ReportMetric(float64(b.N-1)/time.Since(start).Seconds(), "msgs/s")
	}
}

// rawReaderLoop is the raw client's own loop: fetch, handle, commit.
func rawReaderLoop(b *testing.B, addrs []string) {
	topic := benchProduce(b, addrs, false, b.N)
	r := groupReader(addrs, newTopic("g"), 100*time.Millisecond, topic)
	defer r.Close()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := benchwrap.CPU(b)
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
	cpu(b.N)
	benchRate(b, start)
}

// handConsumerAttrs are the attributes tracebridge records on the process
// span of m, for the hand + attrs rows.
func handConsumerAttrs(a []attribute.KeyValue, addrs []string, group string, m *kafkago.Message) []attribute.KeyValue {
	a = serverAttrs(a, addrs)
	return append(a, semconv.MessagingConsumerGroupName(group),
		semconv.MessagingDestinationPartitionID(strconv.Itoa(m.Partition)),
		semconv.MessagingMessageBodySize(len(m.Value)), semconv.MessagingKafkaOffset(int(m.Offset)),
		semconv.MessagingKafkaMessageKey(string(m.Key)), attribute.Int("tracebridge.attempt", 1))
}

// handReaderLoop is a user's own loop with the hand-written wrapper h: the
// CONSUMER span covers the handler and the commit. It is the yardstick of
// both the Consumer and the traced Reader loop.
func handReaderLoop(b *testing.B, addrs []string, h benchwrap.Variant) {
	topic := benchProduce(b, addrs, h.Sampled, b.N)
	group := newTopic("g")
	r := groupReader(addrs, group, 100*time.Millisecond, topic)
	defer r.Close()
	hw := benchwrap.New(benchProvider(b, sdktrace.ParentBased(sdktrace.AlwaysSample())), "kafka", h.Full)
	var n atomic.Int64
	handler := func(context.Context, kafkago.Message) error { n.Add(1); return nil }
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := benchwrap.CPU(b)
	var start time.Time
	for i := range b.N {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			start = time.Now()
		}
		hctx, span := hw.Receive(ctx, m.Topic, benchwrap.KafkaCarrier{H: &m.Headers}, func(a []attribute.KeyValue) []attribute.KeyValue {
			return handConsumerAttrs(a, addrs, group, &m)
		})
		err = handler(hctx, m)
		if err == nil {
			err = r.CommitMessages(hctx, m)
		}
		benchwrap.End(span, err)
		if err != nil {
			b.Fatal(err)
		}
	}
	cpu(b.N)
	benchRate(b, start)
}

// defaultVariants are the unsampled and sampled rows with default options,
// the ones the README's table compares.
func defaultVariants(b *testing.B) []benchVariant {
	var out []benchVariant
	for _, v := range benchVariants(b) {
		if v.name == "unsampled" || v.name == "sampled" {
			out = append(out, v)
		}
	}
	return out
}

// BenchmarkConsume times raw FetchMessage+CommitMessages against the
// traced Consumer over the same pre-produced messages, from the first
// message on, so the group join is not part of the rate.
func BenchmarkConsume(b *testing.B) {
	addrs := testenv.Kafka(b)
	b.Run("raw", func(b *testing.B) { rawReaderLoop(b, addrs) })
	for _, h := range benchwrap.Variants() {
		b.Run("consumer-"+h.Name, func(b *testing.B) { handReaderLoop(b, addrs, h) })
	}
	for _, v := range benchVariants(b) {
		if v.name == "sampled-nocreate" {
			continue // a producer option
		}
		b.Run("consumer-"+v.name, func(b *testing.B) {
			topic := benchProduce(b, addrs, v.sampled, b.N)
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
				}, v.opts...)
			runConsumerBench(b, c, done, &start)
		})
	}
}

// runConsumerBench runs c until done and reports CPU and rate.
func runConsumerBench(b *testing.B, c *tbkafka.Consumer, done <-chan struct{}, start *atomic.Int64) {
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := benchwrap.CPU(b)
	go func() { runErr <- c.Run(ctx) }()
	<-done
	end := time.Now()
	cpu(b.N)
	b.StopTimer()
	cancel()
	if err := <-runErr; err != nil {
		b.Fatal(err)
	}
	if b.N > 1 {
		b.ReportMetric(float64(b.N-1)/end.Sub(time.Unix(0, start.Load())).Seconds(), "msgs/s")
	}
}

// BenchmarkReader is a user's own fetch loop: on the raw reader, with
// tracebridge's Reader (FetchMessage returns the process span's context,
// CommitMessages ends it), and with the hand-written wrappers (the same
// loop as BenchmarkConsume's hand rows).
func BenchmarkReader(b *testing.B) {
	addrs := testenv.Kafka(b)
	b.Run("raw", func(b *testing.B) { rawReaderLoop(b, addrs) })
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) { handReaderLoop(b, addrs, h) })
	}
	for _, v := range defaultVariants(b) {
		b.Run(v.name, func(b *testing.B) {
			topic := benchProduce(b, addrs, v.sampled, b.N)
			r := tbkafka.NewReader(groupReader(addrs, newTopic("g"), 100*time.Millisecond, topic), v.opts...)
			defer r.Close()
			var n atomic.Int64
			handler := func(context.Context, kafkago.Message) error { n.Add(1); return nil }
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			cpu := benchwrap.CPU(b)
			var start time.Time
			for i := range b.N {
				hctx, m, err := r.FetchMessage(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if i == 0 {
					start = time.Now()
				}
				if err = handler(hctx, m); err == nil {
					err = r.CommitMessages(hctx, m)
				} else {
					r.Done(m, err)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			cpu(b.N)
			benchRate(b, start)
		})
	}
}

// BenchmarkBatchConsume hands batches of up to benchBatch messages to a
// handler: the raw reader and the hand-written wrappers in a user's own
// loop (fetch benchBatch messages, handle them, commit them at once; hand:
// one CONSUMER span per message, ended after the commit), against
// tracebridge's BatchConsumer (one process span per batch linking every
// message's creation), which takes what has arrived, up to benchBatch.
func BenchmarkBatchConsume(b *testing.B) {
	addrs := testenv.Kafka(b)
	// loop is the own batch loop; wrap, when not nil, starts a message's span.
	loop := func(b *testing.B, sampled bool, wrap func(group string, m *kafkago.Message) trace.Span) {
		topic := benchProduce(b, addrs, sampled, b.N)
		group := newTopic("g")
		r := groupReader(addrs, group, 100*time.Millisecond, topic)
		defer r.Close()
		var n atomic.Int64
		handler := func(_ context.Context, msgs []kafkago.Message) error { n.Add(int64(len(msgs))); return nil }
		ctx := context.Background()
		batch := make([]kafkago.Message, 0, benchBatch)
		spans := make([]trace.Span, 0, benchBatch)
		b.ReportAllocs()
		b.ResetTimer()
		cpu := benchwrap.CPU(b)
		var start time.Time
		for i := 0; i < b.N; {
			batch, spans = batch[:0], spans[:0]
			for ; len(batch) < benchBatch && i < b.N; i++ {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if i == 0 {
					start = time.Now()
				}
				batch = append(batch, m)
				if wrap != nil {
					spans = append(spans, wrap(group, &batch[len(batch)-1]))
				}
			}
			err := handler(ctx, batch)
			if err == nil {
				err = r.CommitMessages(ctx, batch...)
			}
			for _, s := range spans {
				benchwrap.End(s, err)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		cpu(b.N)
		benchRate(b, start)
	}
	b.Run("raw", func(b *testing.B) { loop(b, false, nil) })
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			hw := benchwrap.New(benchProvider(b, sdktrace.ParentBased(sdktrace.AlwaysSample())), "kafka", h.Full)
			loop(b, h.Sampled, func(group string, m *kafkago.Message) trace.Span {
				_, span := hw.Receive(context.Background(), m.Topic, benchwrap.KafkaCarrier{H: &m.Headers}, func(a []attribute.KeyValue) []attribute.KeyValue {
					return handConsumerAttrs(a, addrs, group, m)
				})
				return span
			})
		})
	}
	for _, v := range defaultVariants(b) {
		b.Run(v.name, func(b *testing.B) {
			topic := benchProduce(b, addrs, v.sampled, b.N)
			var n, batches atomic.Int64
			var start atomic.Int64
			done := make(chan struct{})
			c := tbkafka.NewBatchConsumer(groupReader(addrs, newTopic("g"), 100*time.Millisecond, topic),
				func(ctx context.Context, msgs []kafkago.Message) error {
					batches.Add(1)
					k := n.Add(int64(len(msgs)))
					if k == int64(len(msgs)) {
						start.Store(time.Now().UnixNano())
					}
					if k >= int64(b.N) && k-int64(len(msgs)) < int64(b.N) {
						close(done)
					}
					return nil
				}, benchBatch, v.opts...)
			runConsumerBench(b, c, done, &start)
			b.ReportMetric(float64(n.Load())/float64(batches.Load()), "msgs/batch")
		})
	}
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
			stock.Inject(ctx, benchwrap.KafkaCarrier{H: &hs})
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
		stock.Inject(benchJourney(b, true), benchwrap.KafkaCarrier{H: &hs})
		b.ReportAllocs()
		for b.Loop() {
			ctx := stock.Extract(context.Background(), benchwrap.KafkaCarrier{H: &hs})
			if !trace.SpanContextFromContext(ctx).IsValid() {
				b.Fatal("no span context")
			}
		}
	})
}
