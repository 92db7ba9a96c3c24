package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// TestContinuity produces 10,000 messages under 100 sessions and checks
// that every process span joins its own producer's trace, as a child of
// the message's create span, and that every handler sees its own session
// and baggage while partitions are handled concurrently.
func TestContinuity(t *testing.T) {
	const sessions, perSession = 100, 100
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("continuity")
	ensureTopics(t, addrs, topic)

	w := tbkafka.NewWriter(rawWriter(addrs, topic), tel.Options()...)
	defer w.Close()
	var pwg sync.WaitGroup
	perr := make(chan error, sessions)
	sem := make(chan struct{}, 8)
	for s := range sessions {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			sid := fmt.Sprintf("sess-%03d", s)
			m, _ := baggage.NewMember("tenant", "tenant-"+strconv.Itoa(s))
			b, _ := baggage.New(m)
			ctx := baggage.ContextWithBaggage(carrier.ContextWithSession(context.Background(), sid), b)
			ctx, span := tel.TracerProvider.Tracer("test").Start(ctx, "request "+sid)
			defer span.End()
			msgs := make([]kafkago.Message, perSession)
			for i := range msgs {
				msgs[i] = kafkago.Message{Key: []byte(fmt.Sprintf("%s/%03d", sid, i)), Value: []byte("payload")}
			}
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				perr <- fmt.Errorf("session %s: %w", sid, err)
			}
		}()
	}
	pwg.Wait()
	close(perr)
	for err := range perr {
		t.Fatal(err)
	}

	var (
		mu       sync.Mutex
		seen     = make(map[string]bool, sessions*perSession)
		bad      atomic.Int64
		firstBad atomic.Value
	)
	c := tbkafka.NewConsumer(groupReader(addrs, newTopic("g"), 100*time.Millisecond, topic),
		func(ctx context.Context, msg kafkago.Message) error {
			key := string(msg.Key)
			sid, _, _ := strings.Cut(key, "/")
			n, _ := strconv.Atoi(strings.TrimPrefix(sid, "sess-"))
			got := carrier.SessionFromContext(ctx)
			tenant := baggage.FromContext(ctx).Member("tenant").Value()
			if got != sid || tenant != "tenant-"+strconv.Itoa(n) || !trace.SpanFromContext(ctx).SpanContext().IsValid() {
				if bad.Add(1) == 1 {
					firstBad.Store(fmt.Sprintf("message %s: session %q tenant %q", key, got, tenant))
				}
			}
			mu.Lock()
			seen[key] = true
			mu.Unlock()
			return nil
		}, append(tel.Options(), tracebridge.WithConcurrency(3))...)
	stop := runConsumer(t, c.Run)
	testenv.WaitFor(t, "10,000 messages handled", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == sessions*perSession
	})
	stop()
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d handlers saw the wrong journey; first: %v", n, firstBad.Load())
	}

	creates := byKey(tel.Named("create " + topic))
	requests := make(map[string]trace.SpanContext)
	for _, s := range tel.Ended() {
		if strings.HasPrefix(s.Name(), "request ") {
			requests[strings.TrimPrefix(s.Name(), "request ")] = s.SpanContext()
		}
	}
	procs := byKey(tel.Named("process " + topic))
	if len(procs) != sessions*perSession {
		t.Fatalf("process spans for %d messages, want %d", len(procs), sessions*perSession)
	}
	for key, ps := range procs {
		cs := creates[key]
		if len(cs) != 1 {
			t.Fatalf("message %s: %d create spans", key, len(cs))
		}
		sid, _, _ := strings.Cut(key, "/")
		if cs[0].Parent().SpanID() != requests[sid].SpanID() {
			t.Fatalf("message %s: create span not under its request span", key)
		}
		for _, p := range ps {
			if p.SpanContext().TraceID() != requests[sid].TraceID() {
				t.Fatalf("message %s: process span in trace %s, producer in %s", key, p.SpanContext().TraceID(), requests[sid].TraceID())
			}
			if p.Parent().SpanID() != cs[0].SpanContext().SpanID() {
				t.Fatalf("message %s: process span's parent is %s, want create span %s", key, p.Parent().SpanID(), cs[0].SpanContext().SpanID())
			}
			if v, _ := testenv.Attr(p, "session.id"); v.AsString() != sid {
				t.Fatalf("message %s: process span session.id %q", key, v.AsString())
			}
		}
	}
}

// produceOne sends one message with a traced writer and returns its send
// span.
func produceOne(t *testing.T, addrs []string, topic, key string, tel *testenv.Telemetry) sdktrace.ReadOnlySpan {
	t.Helper()
	w := tbkafka.NewWriter(rawWriter(addrs, topic), tel.Options()...)
	defer w.Close()
	ctx := carrier.ContextWithSession(context.Background(), "sess-"+key)
	if err := w.WriteMessages(ctx, kafkago.Message{Key: []byte(key), Value: []byte("v")}); err != nil {
		t.Fatalf("write %s: %v", key, err)
	}
	sends := byKey(tel.Named("send " + topic))[key]
	if len(sends) != 1 {
		t.Fatalf("%d send spans for %s", len(sends), key)
	}
	return sends[0]
}

// checkAttemptChain asserts n process spans for key, attempts 1..n, each
// parented on the producer, attempt k linking to attempt k-1.
func checkAttemptChain(t *testing.T, procs []sdktrace.ReadOnlySpan, producer sdktrace.ReadOnlySpan, n int) {
	t.Helper()
	if len(procs) != n {
		t.Fatalf("%d process spans, want %d", len(procs), n)
	}
	byAttempt := make(map[int64]sdktrace.ReadOnlySpan)
	for _, p := range procs {
		v, _ := testenv.Attr(p, "tracebridge.attempt")
		byAttempt[v.AsInt64()] = p
	}
	for k := int64(1); k <= int64(n); k++ {
		p, ok := byAttempt[k]
		if !ok {
			t.Fatalf("no process span for attempt %d", k)
		}
		if p.Parent().SpanID() != producer.SpanContext().SpanID() || p.SpanContext().TraceID() != producer.SpanContext().TraceID() {
			t.Fatalf("attempt %d not parented on the producer", k)
		}
		var prev []trace.SpanID
		for _, l := range p.Links() {
			for _, a := range l.Attributes {
				if a.Key == "tracebridge.link.type" && a.Value.AsString() == "previous_attempt" {
					prev = append(prev, l.SpanContext.SpanID())
				}
			}
		}
		if k == 1 && len(prev) != 0 {
			t.Fatalf("attempt 1 links to a previous attempt")
		}
		if k > 1 && (len(prev) != 1 || prev[0] != byAttempt[k-1].SpanContext().SpanID()) {
			t.Fatalf("attempt %d links %v, want attempt %d (%s)", k, prev, k-1, byAttempt[k-1].SpanContext().SpanID())
		}
	}
}

func TestRetriesInPlace(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("retry-inplace")
	ensureTopics(t, addrs, topic)
	producer := produceOne(t, addrs, topic, "k1", tel)

	var calls atomic.Int64
	done := make(chan struct{})
	c := tbkafka.NewConsumer(groupReader(addrs, newTopic("g"), 0, topic), func(ctx context.Context, msg kafkago.Message) error {
		if carrier.SessionFromContext(ctx) != "sess-k1" {
			t.Errorf("attempt %d lost the session", calls.Load()+1)
		}
		if calls.Add(1) <= 2 {
			return errors.New("flaky dependency")
		}
		close(done)
		return nil
	}, append(tel.Options(), tracebridge.WithRetry(3, 5*time.Millisecond, 20*time.Millisecond))...)
	stop := runConsumer(t, c.Run)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("third attempt never ran")
	}
	stop()
	checkAttemptChain(t, byKey(tel.Named("process " + topic))["k1"], producer, 3)
	if calls.Load() != 3 {
		t.Fatalf("handler ran %d times", calls.Load())
	}
}

func TestRetriesViaRetryTopic(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic, retry := newTopic("retry-main"), newTopic("retry-topic")
	ensureTopics(t, addrs, topic, retry)
	producer := produceOne(t, addrs, topic, "k1", tel)
	origTP := ""

	var calls atomic.Int64
	done := make(chan struct{})
	var hdrErr atomic.Value
	c := tbkafka.NewConsumer(groupReader(addrs, newTopic("g"), 0, topic, retry), func(ctx context.Context, msg kafkago.Message) error {
		n := calls.Add(1)
		tp := headerValue(msg.Headers, "traceparent")
		if n == 1 {
			origTP = tp
		} else if msg.Topic != retry || tp != origTP || headerCount(msg.Headers, "traceparent") != 1 ||
			headerCount(msg.Headers, "retry-attempt") != 1 || headerValue(msg.Headers, "retry-attempt") != strconv.Itoa(int(n)) ||
			headerCount(msg.Headers, "retry-previous") != 1 || carrier.SessionFromContext(ctx) != "sess-k1" {
			hdrErr.Store(fmt.Sprintf("attempt %d on %s: headers %v", n, msg.Topic, msg.Headers))
		}
		if n <= 2 {
			return errors.New("flaky dependency")
		}
		close(done)
		return nil
	}, append(tel.Options(), tracebridge.WithRetry(3, 5*time.Millisecond, 20*time.Millisecond),
		tracebridge.WithRetryDestination(retry))...)
	stop := runConsumer(t, c.Run)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("third attempt never ran")
	}
	stop()
	if v := hdrErr.Load(); v != nil {
		t.Fatal(v)
	}
	procs := append(byKey(tel.Named("process " + topic))["k1"], byKey(tel.Named("process " + retry))["k1"]...)
	checkAttemptChain(t, procs, producer, 3)
}

// committed returns the group's committed offsets for topic's partitions.
func committed(t *testing.T, addrs []string, group, topic string) map[int]int64 {
	t.Helper()
	cl := &kafkago.Client{Addr: kafkago.TCP(addrs...), Timeout: 10 * time.Second}
	res, err := cl.OffsetFetch(context.Background(), &kafkago.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0, 1, 2}}})
	if err != nil {
		t.Fatalf("offset fetch for group %s: %v", group, err)
	}
	out := make(map[int]int64)
	for _, p := range res.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

func readOne(t *testing.T, addrs []string, topic string) kafkago.Message {
	t.Helper()
	r := groupReader(addrs, newTopic("inspect"), 0, topic)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := r.FetchMessage(ctx)
	if err != nil {
		t.Fatalf("read %s: %v", topic, err)
	}
	return m
}

func TestDeadLetter(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic, dlq := newTopic("dl-main"), newTopic("dl-dlq")
	ensureTopics(t, addrs, topic, dlq)
	producer := produceOne(t, addrs, topic, "k1", tel)
	group := newTopic("g")
	opts := append(tel.Options(), tracebridge.WithRetry(2, time.Millisecond, 5*time.Millisecond), tracebridge.WithDeadLetter(dlq))

	// First a consumer whose dead-letter writes fail: the message must stay
	// uncommitted however long it tries.
	var tries atomic.Int64
	failing := tbkafka.NewConsumer(groupReader(addrs, group, 0, topic), func(context.Context, kafkago.Message) error {
		tries.Add(1)
		return errors.New("cannot process")
	}, opts...)
	failing.SetPublisher(&kafkago.Writer{Addr: kafkago.TCP("127.0.0.1:1"), MaxAttempts: 1, BatchSize: 1})
	stop := runConsumer(t, failing.Run)
	testenv.WaitFor(t, "both attempts", 30*time.Second, func() bool { return tries.Load() >= 2 })
	time.Sleep(300 * time.Millisecond) // several dead-letter writes fail meanwhile
	stop()
	for p, off := range committed(t, addrs, group, topic) {
		if off > 0 {
			t.Fatalf("partition %d committed at %d although the dead letter was never written", p, off)
		}
	}
	if tries.Load() != 2 {
		t.Fatalf("handler ran %d times while the dead letter could not be written, want 2", tries.Load())
	}

	// Then a consumer in the same group whose writes work: the message comes
	// back, is dead-lettered, and only then committed.
	var tries2 atomic.Int64
	ok := tbkafka.NewConsumer(groupReader(addrs, group, 0, topic), func(context.Context, kafkago.Message) error {
		tries2.Add(1)
		return errors.New("cannot process")
	}, opts...)
	stop = runConsumer(t, ok.Run)
	dead := readOne(t, addrs, dlq)
	testenv.WaitFor(t, "commit after the dead letter", 30*time.Second, func() bool {
		for _, off := range committed(t, addrs, group, topic) {
			if off == 1 {
				return true
			}
		}
		return false
	})
	stop()
	if tries2.Load() != 2 {
		t.Fatalf("redelivered message attempted %d times, want 2", tries2.Load())
	}
	if string(dead.Key) != "k1" || headerValue(dead.Headers, "dead-letter-reason") != "cannot process" ||
		headerValue(dead.Headers, "dead-letter-attempts") != "2" || headerValue(dead.Headers, "dead-letter-source") != topic ||
		headerValue(dead.Headers, "session-id") != "sess-k1" || headerCount(dead.Headers, "traceparent") != 1 {
		t.Fatalf("dead letter headers: %v", dead.Headers)
	}
	sc, ok2 := carrier.ParseTraceparent(headerValue(dead.Headers, "traceparent"))
	if !ok2 || sc.SpanID() != producer.SpanContext().SpanID() {
		t.Fatalf("dead letter lost the journey: traceparent %q", headerValue(dead.Headers, "traceparent"))
	}
	prev, _ := carrier.ParseTraceparent(headerValue(dead.Headers, "retry-previous"))
	var last sdktrace.ReadOnlySpan
	for _, p := range byKey(tel.Named("process " + topic))["k1"] {
		if v, _ := testenv.Attr(p, "tracebridge.retry.final"); v.AsBool() && p.EndTime().After(time.Time{}) {
			last = p
		}
	}
	if last == nil || prev.SpanID() != last.SpanContext().SpanID() {
		t.Fatalf("retry-previous %s does not name the final attempt", headerValue(dead.Headers, "retry-previous"))
	}
}

// TestAtLeastOnceRestart stops a consumer in the middle of a topic and
// starts a new one in the same group: every message is handled at least
// once, and every process span joins its producer's trace.
func TestAtLeastOnceRestart(t *testing.T) {
	const total = 600
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic, group := newTopic("alo"), newTopic("g")
	ensureTopics(t, addrs, topic)
	w := tbkafka.NewWriter(rawWriter(addrs, topic), tel.Options()...)
	msgs := make([]kafkago.Message, total)
	for i := range msgs {
		msgs[i] = kafkago.Message{Key: []byte(fmt.Sprintf("m%04d", i)), Value: []byte("v")}
	}
	for i := 0; i < total; i += 100 {
		if err := w.WriteMessages(context.Background(), msgs[i:i+100]...); err != nil {
			t.Fatal(err)
		}
	}
	_ = w.Close()

	var mu sync.Mutex
	seen := make(map[string]int)
	handler := func(ctx context.Context, msg kafkago.Message) error {
		mu.Lock()
		seen[string(msg.Key)]++
		mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	var handled atomic.Int64
	first := tbkafka.NewConsumer(groupReader(addrs, group, 20*time.Millisecond, topic), func(c context.Context, msg kafkago.Message) error {
		if handled.Add(1) == total/3 {
			cancel() // killed mid-batch: queued messages are never started
		}
		time.Sleep(time.Millisecond)
		return handler(c, msg)
	}, append(tel.Options(), tracebridge.WithConcurrency(3))...)
	if err := first.Run(ctx); err != nil {
		t.Fatalf("first consumer: %v", err)
	}
	mu.Lock()
	afterFirst := len(seen)
	mu.Unlock()
	if afterFirst >= total {
		t.Fatalf("first consumer handled everything (%d); the restart proves nothing", afterFirst)
	}

	second := tbkafka.NewConsumer(groupReader(addrs, group, 20*time.Millisecond, topic), handler,
		append(tel.Options(), tracebridge.WithConcurrency(3))...)
	stop := runConsumer(t, second.Run)
	testenv.WaitFor(t, "every message after the restart", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == total
	})
	stop()

	creates := byKey(tel.Named("create " + topic))
	procs := tel.Named("process " + topic)
	if len(procs) < total {
		t.Fatalf("%d process spans for %d messages", len(procs), total)
	}
	for key, ps := range byKey(procs) {
		for _, p := range ps {
			if p.Parent().SpanID() != creates[key][0].SpanContext().SpanID() {
				t.Fatalf("message %s: process span not parented on its create span", key)
			}
		}
	}
	t.Logf("first consumer handled %d, %d redelivered", afterFirst, len(procs)-total)
}

func TestBadInputReachesHandler(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("bad")
	ensureTopics(t, addrs, topic)
	const validTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	const otherTP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	var bigBag strings.Builder
	for i := range 200 {
		if i > 0 {
			bigBag.WriteByte(',')
		}
		fmt.Fprintf(&bigBag, "k%03d=%s", i, strings.Repeat("v", 100))
	}
	garbage := []byte{0x00, 0xff, 0xfe, '\n', 0x7f, 0xc3, 0x28}
	cases := map[string][]kafkago.Header{
		"malformed": {{Key: "traceparent", Value: []byte("00-xyz-zz-01")}, {Key: "tracestate", Value: []byte("a=b")}},
		"duplicate": {{Key: "traceparent", Value: []byte(validTP)}, {Key: "traceparent", Value: []byte(otherTP)}},
		"bigbag":    {{Key: "traceparent", Value: []byte(validTP)}, {Key: "baggage", Value: []byte(bigBag.String())}},
		"garbage":   {{Key: "traceparent", Value: garbage}, {Key: "baggage", Value: garbage}, {Key: "session-id", Value: garbage}, {Key: string(garbage), Value: garbage}},
		"none":      nil,
		"valid":     {{Key: "traceparent", Value: []byte(validTP)}},
	}
	raw := rawWriter(addrs, topic)
	for k, h := range cases {
		if err := raw.WriteMessages(context.Background(), kafkago.Message{Key: []byte(k), Value: garbage, Headers: h}); err != nil {
			t.Fatal(err)
		}
	}
	_ = raw.Close()

	var mu sync.Mutex
	got := make(map[string]context.Context)
	c := tbkafka.NewConsumer(groupReader(addrs, newTopic("g"), 0, topic), func(ctx context.Context, msg kafkago.Message) error {
		mu.Lock()
		got[string(msg.Key)] = ctx
		mu.Unlock()
		return nil
	}, tel.Options()...)
	stop := runConsumer(t, c.Run)
	testenv.WaitFor(t, "every bad message at the handler", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == len(cases)
	})
	stop()

	procs := byKey(tel.Named("process " + topic))
	valid, _ := carrier.ParseTraceparent(validTP)
	other, _ := carrier.ParseTraceparent(otherTP)
	for k := range cases {
		ps := procs[k]
		if len(ps) != 1 {
			t.Fatalf("%s: %d process spans", k, len(ps))
		}
		p := ps[0]
		wantParent := k == "valid" || k == "bigbag"
		if wantParent {
			if p.Parent().SpanID() != valid.SpanID() || p.SpanContext().TraceID() != valid.TraceID() {
				t.Fatalf("%s: not parented on its valid traceparent", k)
			}
		} else if p.Parent().IsValid() || p.SpanContext().TraceID() == valid.TraceID() || p.SpanContext().TraceID() == other.TraceID() {
			t.Fatalf("%s: want a new trace, got parent %v in trace %s", k, p.Parent(), p.SpanContext().TraceID())
		}
	}
	b := baggage.FromContext(got["bigbag"])
	if n := b.Len(); n == 0 || n > 64 || len(b.String()) > 8192 {
		t.Fatalf("oversized baggage not capped: %d members, %d bytes", n, len(b.String()))
	}
	if s := carrier.SessionFromContext(got["garbage"]); s != "" {
		t.Fatalf("binary session ID kept: %q", s)
	}
}
