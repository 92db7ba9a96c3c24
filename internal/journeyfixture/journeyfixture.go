// Package journeyfixture records real journeys for the tests of journey,
// journeytest and the tracebridge CLI: a checkout that crosses Kafka (an
// embedded kfake broker, or KAFKA_BROKERS) and the jobs runner, with a
// retry that recovers and a message that ends in its dead-letter topic. It
// is for tests only.
package journeyfixture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/journey"
	"github.com/tracebridge/tracebridge/journeytest"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// Config says what to record.
type Config struct {
	// Sessions is how many journeys run at once, each with a session of
	// its own (default 1).
	Sessions int
	// NewTraces makes the orders consumer and the job runner start a trace
	// of their own per attempt, linked to the creation context
	// (tracebridge.LinkToCreation): one session spread over several traces.
	NewTraces bool
	// OTLP, when set, also receives every span as OTLP JSON lines
	// (journey.OTLPWriter), each written before the recorder has it.
	OTLP io.Writer
}

// Run is what was recorded.
type Run struct {
	Rec      *journeytest.Recorder
	Sessions []string
	// Span names of the journey.
	Root, SendOrders, ProcessOrders, SendJob, ProcessJob, SendShipping, ProcessShipping, SendDLQ string
	// DLQ is the dead-letter topic.
	DLQ string
}

// SpansPerJourney is how many spans each journey has: checkout, send
// orders, 2 attempts at orders, send and process the job, send shipping, 3
// attempts at shipping and the dead-letter send.
const SpansPerJourney = 11

var seq atomic.Int64

// Record runs cfg.Sessions journeys at once and waits until every span of
// them has ended:
//
//	checkout (web)
//	└─ send <orders> (web)
//	   ├─ process <orders> attempt 1 (orders) ✗ retried
//	   └─ process <orders> attempt 2 (orders)  ↪ previous attempt
//	      └─ send jobs
//	         └─ process jobs (shipping)
//	            └─ send <shipping>
//	               ├─ process <shipping> attempts 1, 2, 3 (shipping) ✗
//	               └─ (under attempt 3) send <shipping>.dlq
func Record(t testing.TB, cfg Config) *Run {
	t.Helper()
	if cfg.Sessions <= 0 {
		cfg.Sessions = 1
	}
	addrs := testenv.Kafka(t)
	id := fmt.Sprintf("jf%d-%d", time.Now().UnixNano()%1e9, seq.Add(1))
	orders, shipping := id+"-orders", id+"-shipping"
	r := &Run{Rec: journeytest.NewRecorder(), DLQ: shipping + ".dlq",
		Root: "checkout", SendOrders: "send " + orders, ProcessOrders: "process " + orders,
		SendJob: "send jobs", ProcessJob: "process jobs", SendShipping: "send " + shipping,
		ProcessShipping: "process " + shipping, SendDLQ: "send " + shipping + ".dlq"}
	createTopics(t, addrs, orders, shipping, r.DLQ)

	var tps []*sdktrace.TracerProvider
	var otlp *journey.OTLPWriter
	if cfg.OTLP != nil {
		otlp = journey.NewOTLPWriter(cfg.OTLP)
	}
	service := func(name string) *sdktrace.TracerProvider {
		opts := []sdktrace.TracerProviderOption{sdktrace.WithSampler(sdktrace.AlwaysSample()),
			sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(name))),
			sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor())}
		if otlp != nil {
			// Before the recorder: once the recorder has a span, it has
			// been written, so a caller that waited for the recorder can
			// read what was written.
			opts = append(opts, sdktrace.WithSyncer(otlp))
		}
		tp := sdktrace.NewTracerProvider(append(opts, sdktrace.WithSpanProcessor(r.Rec))...)
		tps = append(tps, tp)
		return tp
	}
	web, ordersTP, shippingTP := service("web"), service("orders"), service("shipping")
	t.Cleanup(func() {
		for _, tp := range tps {
			_ = tp.Shutdown(context.Background())
		}
	})
	var policy []tracebridge.Option
	if cfg.NewTraces {
		policy = append(policy, tracebridge.WithParentPolicy(tracebridge.LinkToCreation, 0))
	}
	retry := tracebridge.WithRetry(3, 10*time.Millisecond, 50*time.Millisecond)

	w := tbkafka.NewWriter(writer(addrs, orders), tracebridge.WithTracerProvider(web))
	t.Cleanup(func() { _ = w.Close() })
	shipW := tbkafka.NewWriter(writer(addrs, shipping), tracebridge.WithTracerProvider(shippingTP))
	t.Cleanup(func() { _ = shipW.Close() })

	runner := jobs.New(jobs.Config{}, append([]tracebridge.Option{tracebridge.WithTracerProvider(shippingTP)}, policy...)...)
	if err := runner.Register("ship", func(ctx context.Context, j *jobs.Job) error {
		return shipW.WriteMessages(ctx, kafkago.Message{Key: j.Payload, Value: j.Payload})
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = runner.Shutdown(context.Background()) })

	var mu sync.Mutex
	tries := map[string]int{}
	oc := tbkafka.NewConsumer(reader(addrs, id+"-orders-g", orders), func(ctx context.Context, m kafkago.Message) error {
		mu.Lock()
		tries[string(m.Key)]++
		n := tries[string(m.Key)]
		mu.Unlock()
		if n == 1 {
			return errors.New("stock service: timeout")
		}
		_, err := runner.Enqueue(ctx, "ship", m.Value)
		return err
	}, append([]tracebridge.Option{tracebridge.WithTracerProvider(ordersTP), retry}, policy...)...)
	sc := tbkafka.NewConsumer(reader(addrs, id+"-shipping-g", shipping), func(context.Context, kafkago.Message) error {
		return errors.New("carrier API: address rejected")
	}, tracebridge.WithTracerProvider(shippingTP), retry, tracebridge.WithDeadLetter(r.DLQ))
	for _, c := range []*tbkafka.Consumer{oc, sc} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("consumer: %v", err)
			}
		})
	}

	tracer := web.Tracer("shop")
	for i := range cfg.Sessions {
		session := fmt.Sprintf("%s-session-%d", id, i+1)
		r.Sessions = append(r.Sessions, session)
		ctx, span := tracer.Start(carrier.ContextWithSession(context.Background(), session), r.Root,
			trace.WithSpanKind(trace.SpanKindServer))
		if err := w.WriteMessages(ctx, kafkago.Message{Key: []byte(session), Value: []byte(session)}); err != nil {
			t.Fatalf("write %s: %v", session, err)
		}
		span.End()
	}
	// The dead-letter send ends before the attempt that sent it, which
	// ends last: wait for whole journeys.
	for _, s := range r.Sessions {
		j := r.Rec.Await(s, 60*time.Second, func(j *journey.Journey) bool { return len(j.Spans) >= SpansPerJourney })
		if len(j.Spans) < SpansPerJourney {
			var b []byte
			for _, sp := range j.Spans {
				b = fmt.Appendf(b, "\n  %s", sp.Name)
			}
			t.Fatalf("session %s: %d spans after 60s, want %d:%s", s, len(j.Spans), SpansPerJourney, b)
		}
	}
	return r
}

// Spans returns the recorded spans of the run's sessions, in the order they
// ended.
func (r *Run) Spans() []journey.Span {
	var out []journey.Span
	for _, s := range r.Rec.Spans() {
		if slices.Contains(r.Sessions, s.Session()) {
			out = append(out, s)
		}
	}
	return out
}

func writer(addrs []string, topic string) *kafkago.Writer {
	return &kafkago.Writer{Addr: kafkago.TCP(addrs...), Topic: topic, Balancer: &kafkago.Hash{},
		BatchTimeout: 2 * time.Millisecond, RequiredAcks: kafkago.RequireAll}
}

func reader(addrs []string, group, topic string) *kafkago.Reader {
	return kafkago.NewReader(kafkago.ReaderConfig{
		Brokers: addrs, GroupID: group, GroupTopics: []string{topic}, StartOffset: kafkago.FirstOffset,
		MaxWait: 50 * time.Millisecond, HeartbeatInterval: 500 * time.Millisecond, SessionTimeout: 6 * time.Second,
		RebalanceTimeout: 2 * time.Second, JoinGroupBackoff: 200 * time.Millisecond,
		ReadBackoffMin: 10 * time.Millisecond, ReadBackoffMax: 50 * time.Millisecond,
	})
}

func createTopics(t testing.TB, addrs []string, topics ...string) {
	t.Helper()
	testenv.CreateTopics(t, addrs, testenv.Topics(1, topics...)...)
}
