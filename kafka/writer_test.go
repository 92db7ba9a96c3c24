package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

func TestCarrierReplacesAndReadsDuplicates(t *testing.T) {
	hs := []kafkago.Header{{Key: "traceparent", Value: []byte("a")}, {Key: "x", Value: []byte("1")},
		{Key: "traceparent", Value: []byte("b")}, {Key: "Traceparent", Value: []byte("c")}}
	c := tbkafka.NewCarrier(&hs)
	if got := c.Values("traceparent"); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("Values = %v", got)
	}
	c.Set("traceparent", "new")
	if len(hs) != 3 || headerCount(hs, "traceparent") != 1 || c.Get("traceparent") != "new" || c.Get("Traceparent") != "c" || hs[1].Key != "x" {
		t.Fatalf("after Set: %v", hs)
	}
	c.Set("baggage", "k=v")
	if c.Get("baggage") != "k=v" || len(c.Keys()) != 4 {
		t.Fatalf("append: %v", hs)
	}
	// The propagator treats duplicate traceparent headers as absent.
	p := carrier.NewPropagator()
	dup := []kafkago.Header{{Key: "traceparent", Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")},
		{Key: "traceparent", Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")}}
	if trace.SpanContextFromContext(p.Extract(context.Background(), tbkafka.NewCarrier(&dup))).IsValid() {
		t.Fatal("duplicate traceparent extracted as valid")
	}
}

func TestWriterSingleBatchAndForwarding(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("writer")
	ensureTopics(t, addrs, topic)
	w := tbkafka.NewWriter(rawWriter(addrs, topic), tel.Options()...)
	defer w.Close()

	const fwdTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	shared := []kafkago.Header{{Key: "app", Value: []byte("x")}}
	msgs := []kafkago.Message{
		{Key: []byte("a"), Value: []byte("1"), Headers: shared},
		{Key: []byte("b"), Value: []byte("22"), Headers: shared},
		{Key: []byte("fwd"), Value: []byte("333"), Headers: []kafkago.Header{{Key: "traceparent", Value: []byte(fwdTP)}}},
		{Value: []byte("nokey")},
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	if len(shared) != 1 || len(msgs[0].Headers) != 1 {
		t.Fatal("WriteMessages edited the caller's headers")
	}
	creates := tel.Named("create " + topic)
	sends := tel.Named("send " + topic)
	if len(creates) != 4 || len(sends) != 1 {
		t.Fatalf("%d create and %d send spans, want 4 and 1", len(creates), len(sends))
	}
	if sends[0].SpanKind() != trace.SpanKindClient || len(sends[0].Links()) != 4 {
		t.Fatalf("batch send span: kind %v, %d links", sends[0].SpanKind(), len(sends[0].Links()))
	}
	keys := byKey(creates)
	if v, _ := testenv.Attr(keys["b"][0], "messaging.message.body.size"); v.AsInt64() != 2 {
		t.Fatalf("body size %v", v)
	}
	var nokey int
	for _, c := range creates {
		if _, ok := testenv.Attr(c, "messaging.kafka.message.key"); !ok {
			nokey++
		}
		if v, _ := testenv.Attr(c, "server.port"); v.AsInt64() == 0 {
			t.Fatal("no server.port on create span")
		}
	}
	if nokey != 1 {
		t.Fatalf("%d create spans without a key, want 1 (nil key)", nokey)
	}

	// What arrived: own creation contexts, the forwarded one untouched.
	r := groupReader(addrs, newTopic("inspect"), 0, topic)
	defer r.Close()
	got := make(map[string]kafkago.Message)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for len(got) < 4 {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got[string(m.Key)] = m
	}
	if headerValue(got["fwd"].Headers, "traceparent") != fwdTP || headerCount(got["fwd"].Headers, "traceparent") != 1 {
		t.Fatalf("forwarded message rewritten: %v", got["fwd"].Headers)
	}
	sa, _ := carrier.ParseTraceparent(headerValue(got["a"].Headers, "traceparent"))
	sb, _ := carrier.ParseTraceparent(headerValue(got["b"].Headers, "traceparent"))
	if sa.SpanID() != keys["a"][0].SpanContext().SpanID() || sb.SpanID() != keys["b"][0].SpanContext().SpanID() || sa.SpanID() == sb.SpanID() {
		t.Fatal("messages do not carry their own create spans")
	}
	if headerValue(got["a"].Headers, "app") != "x" {
		t.Fatal("user header lost")
	}

	// One message: one PRODUCER send span, injected.
	if err := w.WriteMessages(context.Background(), kafkago.Message{Key: []byte("one"), Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	one := byKey(tel.Named("send " + topic))["one"]
	if len(one) != 1 || one[0].SpanKind() != trace.SpanKindProducer {
		t.Fatalf("single message: %d send spans", len(one))
	}
}

func TestWriterWithoutCreateSpans(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("nocreate")
	ensureTopics(t, addrs, topic)
	w := tbkafka.NewWriter(rawWriter(addrs, topic), append(tel.Options(), tracebridge.WithoutCreateSpans())...)
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafkago.Message{Key: []byte("a")}, kafkago.Message{Key: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if n := len(tel.Named("create " + topic)); n != 0 {
		t.Fatalf("%d create spans with WithoutCreateSpans", n)
	}
	sends := tel.Named("send " + topic)
	if len(sends) != 1 {
		t.Fatalf("%d send spans", len(sends))
	}
	if v, _ := testenv.Attr(sends[0], "messaging.batch.message_count"); v.AsInt64() != 2 {
		t.Fatalf("batch send span message_count %d, want 2", v.AsInt64())
	}
	if n, _ := tel.SumInt(t, "messaging.client.sent.messages"); n != 2 {
		t.Fatalf("sent.messages = %d, want 2", n)
	}
	m := readOne(t, addrs, topic)
	sc, _ := carrier.ParseTraceparent(headerValue(m.Headers, "traceparent"))
	if sc.SpanID() != sends[0].SpanContext().SpanID() {
		t.Fatal("message does not carry the batch send span")
	}
}

// TestWriterWriteErrorsPerMessage makes the broker reject one oversized
// message of a batch: only its create span fails.
func TestWriterWriteErrorsPerMessage(t *testing.T) {
	if os.Getenv("KAFKA_BROKERS") != "" {
		t.Skip("needs the embedded broker's message.max.bytes")
	}
	addrs := testenv.Kafka(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "2000"}))
	tel := testenv.NewTelemetry(t)
	topic := newTopic("werr")
	ensureTopics(t, addrs, topic)
	raw := rawWriter(addrs, topic)
	raw.MaxAttempts = 1
	raw.Balancer = kafkago.BalancerFunc(func(m kafkago.Message, partitions ...int) int {
		if string(m.Key) == "big" {
			return partitions[2]
		}
		return partitions[0]
	})
	w := tbkafka.NewWriter(raw, tel.Options()...)
	defer w.Close()
	err := w.WriteMessages(context.Background(),
		kafkago.Message{Key: []byte("small"), Value: []byte("v")},
		kafkago.Message{Key: []byte("big"), Value: []byte(strings.Repeat("x", 5000))})
	var werrs kafkago.WriteErrors
	if !errors.As(err, &werrs) || werrs[0] != nil || werrs[1] == nil {
		t.Fatalf("want WriteErrors for the big message only, got %v", err)
	}
	keys := byKey(tel.Named("create " + topic))
	if keys["small"][0].Status().Code == codes.Error || keys["big"][0].Status().Code != codes.Error {
		t.Fatalf("status small=%v big=%v", keys["small"][0].Status(), keys["big"][0].Status())
	}
	if s := tel.Named("send " + topic); len(s) != 1 || s[0].Status().Code != codes.Error {
		t.Fatal("batch send span does not record the failure")
	}
}

func TestWriterAsyncCompletion(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("async")
	ensureTopics(t, addrs, topic)
	raw := rawWriter(addrs, topic)
	raw.Async = true
	var mu sync.Mutex
	var completed []kafkago.Message
	raw.Completion = func(msgs []kafkago.Message, err error) {
		if err != nil {
			t.Errorf("completion: %v", err)
		}
		mu.Lock()
		completed = append(completed, msgs...)
		mu.Unlock()
	}
	w := tbkafka.NewWriter(raw, tel.Options()...)
	msgs := make([]kafkago.Message, 30)
	for i := range msgs {
		msgs[i] = kafkago.Message{Key: []byte{byte('a' + i%26), byte('0' + i/26)}, Value: []byte("v")}
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMessages(context.Background(), kafkago.Message{Key: []byte("single")}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil { // blocks on the Completion calls
		t.Fatal(err)
	}
	mu.Lock()
	n := len(completed)
	mu.Unlock()
	if n != 31 {
		t.Fatalf("user Completion saw %d messages, want 31", n)
	}
	creates := tel.Named("create " + topic)
	if len(creates) != 30 {
		t.Fatalf("%d create spans ended, want 30", len(creates))
	}
	for _, c := range creates {
		if _, ok := testenv.Attr(c, "messaging.kafka.offset"); !ok {
			t.Fatal("async create span has no offset from the produce response")
		}
	}
	sends := tel.Named("send " + topic)
	if len(sends) != 2 {
		t.Fatalf("%d send spans ended, want 2 (batch and single)", len(sends))
	}
}

func TestReaderSpanEndsAtCommit(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("reader")
	ensureTopics(t, addrs, topic)
	producer := produceOne(t, addrs, topic, "k1", tel)
	r := tbkafka.NewReader(groupReader(addrs, newTopic("g"), 0, topic), tel.Options()...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mctx, msg, err := r.FetchMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if carrier.SessionFromContext(mctx) != "sess-k1" || trace.SpanContextFromContext(mctx).TraceID() != producer.SpanContext().TraceID() {
		t.Fatal("fetched context does not carry the journey")
	}
	if n := len(tel.Named("process " + topic)); n != 0 {
		t.Fatal("process span ended before the commit")
	}
	if err := r.CommitMessages(ctx, msg); err != nil {
		t.Fatal(err)
	}
	ps := tel.Named("process " + topic)
	if len(ps) != 1 || ps[0].Parent().SpanID() != producer.SpanContext().SpanID() {
		t.Fatalf("%d process spans after commit", len(ps))
	}
	var commitEvent bool
	for _, e := range ps[0].Events() {
		if e.Name == "settle" {
			commitEvent = true
		}
	}
	if !commitEvent {
		t.Fatal("no commit event on the process span")
	}
	if v, _ := testenv.Attr(ps[0], "messaging.consumer.group.name"); v.AsString() == "" {
		t.Fatal("no consumer group attribute")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestPanicAndPermanent(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic, dlq := newTopic("panic"), newTopic("panic-dlq")
	ensureTopics(t, addrs, topic, dlq)
	produceOne(t, addrs, topic, "boom", tel)
	produceOne(t, addrs, topic, "perm", tel)
	var mu sync.Mutex
	calls := map[string]int{}
	c := tbkafka.NewConsumer(groupReader(addrs, newTopic("g"), 0, topic), func(ctx context.Context, msg kafkago.Message) error {
		mu.Lock()
		calls[string(msg.Key)]++
		mu.Unlock()
		if string(msg.Key) == "boom" {
			panic("handler bug")
		}
		return tracebridge.Permanent(errors.New("bad payload"))
	}, append(tel.Options(), tracebridge.WithRetry(3, time.Millisecond, 2*time.Millisecond), tracebridge.WithDeadLetter(dlq))...)
	stop := runConsumer(t, c.Run)
	testenv.WaitFor(t, "both dead letters", 30*time.Second, func() bool {
		return len(tel.Named("send "+dlq)) == 2
	})
	stop()
	mu.Lock()
	defer mu.Unlock()
	if calls["boom"] != 3 || calls["perm"] != 1 {
		t.Fatalf("attempts: panic %d (want 3), permanent %d (want 1)", calls["boom"], calls["perm"])
	}
	for _, p := range byKey(tel.Named("process " + topic))["boom"] {
		if v, _ := testenv.Attr(p, "error.type"); v.AsString() != "panic" {
			t.Fatalf("panic attempt error.type %q", v.AsString())
		}
	}
}

func TestBatchConsumerLinksEveryMessage(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("batch")
	ensureTopics(t, addrs, topic)
	w := tbkafka.NewWriter(rawWriter(addrs, topic), tel.Options()...)
	msgs := make([]kafkago.Message, 50)
	for i := range msgs {
		msgs[i] = kafkago.Message{Key: []byte{'k', byte('0' + i/10), byte('0' + i%10)}}
	}
	ctx := carrier.ContextWithSession(context.Background(), "batch-sess")
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	var mu sync.Mutex
	seen := 0
	var c *tbkafka.Consumer
	c = tbkafka.NewBatchConsumer(groupReader(addrs, newTopic("g"), 0, topic), func(ctx context.Context, batch []kafkago.Message) error {
		for _, m := range batch {
			if carrier.SessionFromContext(c.Extract(context.Background(), m)) != "batch-sess" {
				t.Errorf("message %s: journey not extractable", m.Key)
			}
		}
		mu.Lock()
		seen += len(batch)
		mu.Unlock()
		return nil
	}, 20, tel.Options()...)
	stop := runConsumer(t, c.Run)
	testenv.WaitFor(t, "50 messages in batches", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return seen == 50 })
	stop()
	links := 0
	for _, p := range tel.Named("process " + topic) {
		v, _ := testenv.Attr(p, "messaging.batch.message_count")
		if int(v.AsInt64()) != len(p.Links()) {
			t.Fatalf("batch of %d with %d links", v.AsInt64(), len(p.Links()))
		}
		links += len(p.Links())
	}
	if links != 50 {
		t.Fatalf("%d links over all batch spans, want 50", links)
	}
}

// A failed batch is tried again in place; each try's span links to the try
// before it, as single-message attempts do.
func TestBatchConsumerRetryLinksAttempts(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("batchretry")
	ensureTopics(t, addrs, topic)
	w := tbkafka.NewWriter(rawWriter(addrs, topic), tel.Options()...)
	if err := w.WriteMessages(context.Background(), kafkago.Message{Key: []byte("only")}); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	var mu sync.Mutex
	tries := 0
	c := tbkafka.NewBatchConsumer(groupReader(addrs, newTopic("g"), 0, topic), func(ctx context.Context, batch []kafkago.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if tries++; tries < 3 {
			return errors.New("downstream busy")
		}
		return nil
	}, 20, tel.Options(tracebridge.WithRetry(3, time.Millisecond, 5*time.Millisecond))...)
	stop := runConsumer(t, c.Run)
	testenv.WaitFor(t, "third try", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return tries == 3 })
	stop()
	spans := tel.Named("process " + topic)
	if len(spans) != 3 {
		t.Fatalf("%d batch process spans, want 3", len(spans))
	}
	for i, s := range spans {
		if v, _ := testenv.Attr(s, "tracebridge.attempt"); v.AsInt64() != int64(i+1) {
			t.Fatalf("span %d has attempt %d", i, v.AsInt64())
		}
		var prev []trace.SpanID
		for _, l := range s.Links() {
			if set := attribute.NewSet(l.Attributes...); set.HasValue("tracebridge.link.type") {
				if v, _ := set.Value("tracebridge.link.type"); v.AsString() != "previous_attempt" {
					continue
				}
				prev = append(prev, l.SpanContext.SpanID())
			}
		}
		switch {
		case i == 0 && len(prev) != 0:
			t.Fatalf("first try links a previous attempt")
		case i > 0 && (len(prev) != 1 || prev[0] != spans[i-1].SpanContext().SpanID()):
			t.Fatalf("try %d links %v, want try %d", i+1, prev, i)
		}
	}
}

// With WithParentBasedSampling, a batch written under an unsampled parent
// carries the parent's own context in every message, and the consumer
// hands each handler that context, without a span on either side; a
// sampled batch is traced as usual.
func TestParentBasedSamplingBatch(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	opts := tel.Options(tracebridge.WithParentBasedSampling())
	topic := newTopic("parentbased")
	ensureTopics(t, addrs, topic)
	w := tbkafka.NewWriter(rawWriter(addrs, topic), opts...)
	defer w.Close()

	unsampled, sampled := testenv.Parent(false), testenv.Parent(true)
	batch := func(prefix string) []kafkago.Message {
		msgs := make([]kafkago.Message, 10)
		for i := range msgs {
			msgs[i] = kafkago.Message{Key: []byte(fmt.Sprintf("%s-%d", prefix, i))}
		}
		return msgs
	}
	if err := w.WriteMessages(unsampled, batch("u")...); err != nil {
		t.Fatal(err)
	}
	if n := len(tel.Ended()); n != 0 {
		t.Fatalf("%d spans for a batch under an unsampled parent", n)
	}
	if err := w.WriteMessages(sampled, batch("s")...); err != nil {
		t.Fatal(err)
	}
	if c, s := len(tel.Named("create "+topic)), len(tel.Named("send "+topic)); c != 10 || s != 1 {
		t.Fatalf("sampled batch: %d create and %d send spans, want 10 and 1", c, s)
	}

	var mu sync.Mutex
	seen := map[string]trace.SpanContext{}
	done := make(chan struct{})
	c := tbkafka.NewConsumer(groupReader(addrs, newTopic("g"), 0, topic), func(ctx context.Context, m kafkago.Message) error {
		mu.Lock()
		defer mu.Unlock()
		seen[string(m.Key)] = trace.SpanContextFromContext(ctx)
		if len(seen) == 20 {
			close(done)
		}
		return nil
	}, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("messages not consumed")
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	parent := trace.SpanContextFromContext(unsampled)
	for i := range 10 {
		sc := seen[fmt.Sprintf("u-%d", i)]
		if sc.TraceID() != parent.TraceID() || sc.SpanID() != parent.SpanID() || sc.IsSampled() {
			t.Fatalf("unsampled message %d: handler context %v, want the parent %v itself", i, sc, parent)
		}
	}
	procs := tel.Named("process " + topic)
	if len(procs) != 10 {
		t.Fatalf("%d process spans, want 10: one per sampled message only", len(procs))
	}
	for _, p := range procs {
		if p.SpanContext().TraceID() != trace.SpanContextFromContext(sampled).TraceID() {
			t.Fatal("a process span is not on the sampled journey")
		}
	}
	if n, _ := tel.SumInt(t, "messaging.client.consumed.messages"); n != 20 {
		t.Fatalf("consumed.messages = %d, want 20", n)
	}
}
