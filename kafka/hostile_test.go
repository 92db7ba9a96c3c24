package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// hostileSize is the largest header Kafka takes by default: a record batch
// holds at most message.max.bytes (1048588) bytes, and one record with
// ~1 MiB of headers and its batch overhead fit below it.
const hostileSize = 1<<20 - 512

// TestHostileHeadersBoundedRetention sends messages whose tracing headers
// are as large as the broker allows (~1 MiB) through a real consumer whose
// handler forwards each one twice with a wrapped writer, and checks that
// every handler gets the journey and that once the broker's copies are gone
// the messages left at most testenv.MaxRetainedPerHostileMessage each in
// the consumer and the writer (see testenv.CheckRetained).
func TestHostileHeadersBoundedRetention(t *testing.T) {
	// A cluster of the test's own, to trim its log afterwards: kfake keeps
	// every record in this process's heap.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	addrs := cluster.ListenAddrs()
	in, out := newTopic("hostile"), newTopic("hostile-fwd")
	createTrimmedTopics(t, addrs, in, out)
	opts := []tracebridge.Option{tracebridge.WithTracerProvider(sdktrace.NewTracerProvider())}

	fwd := tbkafka.NewWriter(rawWriter(addrs, out), opts...)
	defer fwd.Close()
	var (
		mu      sync.Mutex
		handled = map[int]bool{}
		bad     []string
	)
	// A fetch must start to answer within MaxWait (kafka-go's read
	// deadline), and kfake answering with several 1 MiB records under the
	// race detector can take longer than the 50 ms the other tests use.
	rd := kafkago.NewReader(kafkago.ReaderConfig{Brokers: addrs, GroupID: newTopic("g"), GroupTopics: []string{in},
		StartOffset: kafkago.FirstOffset, MinBytes: 1, MaxBytes: 2 << 20, MaxWait: time.Second,
		HeartbeatInterval: 500 * time.Millisecond, SessionTimeout: 6 * time.Second, RebalanceTimeout: 2 * time.Second,
		JoinGroupBackoff: 200 * time.Millisecond, ReadBackoffMin: 10 * time.Millisecond, ReadBackoffMax: 50 * time.Millisecond})
	c := tbkafka.NewConsumer(rd, func(ctx context.Context, msg kafkago.Message) error {
		var i int
		fmt.Sscan(string(msg.Value), &i)
		problem := testenv.CheckHostileContext(ctx, i)
		for range 2 {
			if err := fwd.WriteMessages(ctx, kafkago.Message{Value: []byte("fwd")}); err != nil {
				problem += "; forward: " + err.Error()
			}
		}
		mu.Lock()
		defer mu.Unlock()
		handled[i] = true
		if problem != "" {
			bad = append(bad, fmt.Sprintf("message %d: %s", i, problem))
		}
		return nil
	}, opts...)
	stop := runConsumer(t, c.Run)

	raw := rawWriter(addrs, in)
	raw.BatchSize, raw.BatchBytes = 1, 4<<20 // the broker, not the client, decides what is too large
	defer raw.Close()
	send := func(i, size int) error {
		var hs []kafkago.Header
		for k, v := range testenv.HostileHeaders(i, size) {
			hs = append(hs, kafkago.Header{Key: k, Value: []byte(v)})
		}
		return raw.WriteMessages(context.Background(), kafkago.Message{Value: []byte(fmt.Sprint(i)), Headers: hs})
	}
	waitHandled := func(n int) {
		testenv.WaitFor(t, fmt.Sprintf("%d messages handled", n), 60*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(handled) == n
		})
	}

	var werr kafkago.WriteErrors
	if err := send(-1, 1<<20+1024); !errors.As(err, &werr) || len(werr) != 1 || !errors.Is(werr[0], kafkago.MessageSizeTooLarge) {
		t.Fatalf("a header over 1 MiB: %v, want the broker's MessageSizeTooLarge", err)
	}
	if err := send(0, hostileSize); err != nil { // warm-up: buffers grow to size once
		t.Fatal(err)
	}
	waitHandled(1)
	var sample []kafkago.Header
	for k, v := range testenv.HostileHeaders(0, hostileSize) {
		sample = append(sample, kafkago.Header{Key: k, Value: []byte(v)})
	}
	t.Logf("extract of a %d-byte header: %v", hostileSize, testenv.TimeExtract(tbkafka.NewCarrier(&sample)))
	cluster.ApplyRetention()

	// Two windows of n messages, and the smaller growth is checked. kfake
	// serves from this heap: on a loaded machine a fetch can outlast its
	// read deadline, and the connection kafka-go opens in its place grows
	// its buffers (kfake's side and kafka-go's) to the message size, about
	// 1.5 MiB (3 of 24 windows with four copies of this test at once). The
	// once-only allowance covers one such reconnect, not two. A message
	// retaining its headers shows in both windows; a reconnect in one.
	const n = 64
	growth := make([]int64, 2)
	for w := range growth {
		before := testenv.HeapAfterGC()
		for i := w*n + 1; i <= (w+1)*n; i++ {
			if err := send(i, hostileSize); err != nil {
				t.Fatal(err)
			}
		}
		waitHandled((w+1)*n + 1)
		cluster.ApplyRetention()
		growth[w] = int64(testenv.HeapAfterGC()) - int64(before)
		t.Logf("window %d: %d messages retained %d bytes each", w+1, n, growth[w]/n)
	}
	testenv.CheckGrowth(t, min(growth[0], growth[1]), n, hostileSize)
	runtime.KeepAlive(c)
	stop()
	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad {
		t.Error(b)
	}
}

// createTrimmedTopics creates one-partition topics with retention.bytes 0,
// so that kfake's ApplyRetention drops every record in them.
func createTrimmedTopics(t *testing.T, addrs []string, topics ...string) {
	t.Helper()
	tcs := testenv.Topics(1, topics...)
	for i := range tcs {
		tcs[i].ConfigEntries = []kafkago.ConfigEntry{{ConfigName: "retention.bytes", ConfigValue: "0"}}
	}
	testenv.CreateTopics(t, addrs, tcs...)
}
