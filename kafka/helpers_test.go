package kafka_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge/internal/testenv"
)

var topicSeq atomic.Int64

func newTopic(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e9, topicSeq.Add(1))
}

func rawWriter(addrs []string, topic string) *kafkago.Writer {
	return &kafkago.Writer{
		Addr:                   kafkago.TCP(addrs...),
		Topic:                  topic,
		Balancer:               &kafkago.Hash{},
		BatchSize:              1000,
		BatchTimeout:           2 * time.Millisecond,
		RequiredAcks:           kafkago.RequireOne,
		AllowAutoTopicCreation: true,
	}
}

func groupReader(addrs []string, group string, commitEvery time.Duration, topics ...string) *kafkago.Reader {
	return kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:               addrs,
		GroupID:               group,
		GroupTopics:           topics,
		StartOffset:           kafkago.FirstOffset,
		MinBytes:              1,
		MaxBytes:              10e6,
		MaxWait:               50 * time.Millisecond,
		CommitInterval:        commitEvery,
		HeartbeatInterval:     500 * time.Millisecond,
		SessionTimeout:        6 * time.Second,
		RebalanceTimeout:      2 * time.Second,
		JoinGroupBackoff:      200 * time.Millisecond,
		ReadBackoffMin:        10 * time.Millisecond,
		ReadBackoffMax:        50 * time.Millisecond,
		WatchPartitionChanges: false,
	})
}

// ensureTopics makes the broker create topics before a group reader looks
// them up, writing one throwaway message each would pollute the tests, so
// the topics are created explicitly.
func ensureTopics(t testing.TB, addrs []string, topics ...string) {
	t.Helper()
	testenv.CreateTopics(t, addrs, testenv.Topics(3, topics...)...)
}

// byKey indexes spans by their messaging.kafka.message.key.
func byKey(spans []sdktrace.ReadOnlySpan) map[string][]sdktrace.ReadOnlySpan {
	out := make(map[string][]sdktrace.ReadOnlySpan, len(spans))
	for _, s := range spans {
		if v, ok := testenv.Attr(s, "messaging.kafka.message.key"); ok {
			out[v.AsString()] = append(out[v.AsString()], s)
		}
	}
	return out
}

// runConsumer runs c until the returned stop is called, failing t if Run
// returns an error.
func runConsumer(t testing.TB, run func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var stopped atomic.Bool
	stop = func() {
		if stopped.Swap(true) {
			return
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("consumer Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("consumer did not shut down in 30s")
		}
	}
	t.Cleanup(stop)
	return stop
}

func headerCount(hs []kafkago.Header, key string) int {
	n := 0
	for _, h := range hs {
		if h.Key == key {
			n++
		}
	}
	return n
}

func headerValue(hs []kafkago.Header, key string) string {
	for _, h := range hs {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// benchTopic creates a topic for one benchmark round and returns a func
// that deletes it and collects garbage. kfake keeps every record in this
// process's memory, so without it each row would run against a heap grown
// by the rows before, and later rows would look slower than they are.
func benchTopic(b *testing.B, addrs []string, prefix string) (string, func()) {
	topic := newTopic(prefix)
	ensureTopics(b, addrs, topic)
	return topic, func() {
		cl := &kafkago.Client{Addr: kafkago.TCP(addrs...), Timeout: 10 * time.Second}
		if _, err := cl.DeleteTopics(context.Background(), &kafkago.DeleteTopicsRequest{Topics: []string{topic}}); err != nil {
			b.Logf("delete topic %q: %v", topic, err)
		}
		runtime.GC()
	}
}
