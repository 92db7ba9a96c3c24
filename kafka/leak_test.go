package kafka_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// noLeaks captures the goroutines running now (the broker's among them)
// and returns a check that fails t if any goroutine started since is still
// running. Connections close asynchronously on both ends, so it waits up to
// 10 s for them before goleak gives its verdict.
func noLeaks(t *testing.T) func() {
	t.Helper()
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	return func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for goleak.Find(opts...) != nil && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		goleak.VerifyNone(t, opts...)
	}
}

// runAsync runs run(ctx) in a goroutine and returns its result channel.
func runAsync(ctx context.Context, run func(context.Context) error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	return done
}

// waitRun fails t unless done reports a nil error within d, and returns
// how long it took.
func waitRun(t *testing.T, what string, done <-chan error, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: Run: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s: Run did not return within %s of the stop", what, d)
	}
	return time.Since(start)
}

// TestConsumerStopWithHandlersInFlight stops a Consumer and a
// BatchConsumer while handlers are blocked mid-message and a permanent
// failure has gone through the Consumer's own dead-letter writer. Run must
// wait for the blocked handlers (shutdown does not abort them), return
// soon after they finish, commit what they finished, and leave no
// goroutine behind: not its workers, not the reader's, not the writer's
// connections.
func TestConsumerStopWithHandlersInFlight(t *testing.T) {
	for _, batch := range []bool{false, true} {
		name := "Consumer"
		if batch {
			name = "BatchConsumer"
		}
		t.Run(name, func(t *testing.T) {
			const partitions, perPartition = 3, 10
			addrs := testenv.Kafka(t)
			topic, dlq, group := newTopic("leak"), newTopic("leak-dlq"), newTopic("g")
			createTopic(t, addrs, topic, partitions)
			createTopic(t, addrs, dlq, 1)
			produceSpread(t, addrs, topic, partitions, perPartition)
			verify := noLeaks(t)

			release := make(chan struct{})
			var (
				mu      sync.Mutex
				running = make(map[int]int64) // partition -> highest offset handed to a blocked handler
			)
			handle := func(msgs []kafkago.Message) error {
				if msgs[0].Offset == 0 {
					// Goes through the Consumer's own dead-letter writer. A
					// worker's first batch starts at some partition's offset
					// 0, so every worker dead-letters before it blocks.
					return tracebridge.Permanent(errors.New("poison"))
				}
				last := msgs[len(msgs)-1]
				mu.Lock()
				running[last.Partition] = max(running[last.Partition], last.Offset)
				mu.Unlock()
				<-release
				return nil
			}
			opts := []tracebridge.Option{tracebridge.WithConcurrency(partitions), tracebridge.WithDeadLetter(dlq)}
			var c *tbkafka.Consumer
			if batch {
				c = tbkafka.NewBatchConsumer(groupReader(addrs, group, 0, topic), func(_ context.Context, msgs []kafkago.Message) error {
					return handle(msgs)
				}, 4, opts...)
			} else {
				c = tbkafka.NewConsumer(groupReader(addrs, group, 0, topic), func(_ context.Context, msg kafkago.Message) error {
					return handle([]kafkago.Message{msg})
				}, opts...)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := runAsync(ctx, c.Run)
			testenv.WaitFor(t, "a handler blocked after a dead letter", 30*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(running) >= 1 && slices.Max(committedOffsets(t, addrs, group, topic, partitions)) >= 1
			})
			time.Sleep(50 * time.Millisecond) // let every worker reach its handler
			cancel()
			select {
			case err := <-done:
				t.Fatalf("Run returned (%v) while handlers were still running", err)
			case <-time.After(300 * time.Millisecond):
			}
			mu.Lock()
			inFlight := make(map[int]int64, len(running))
			for p, o := range running {
				inFlight[p] = o
			}
			mu.Unlock()
			close(release)
			took := waitRun(t, name, done, 10*time.Second)
			got := committedOffsets(t, addrs, group, topic, partitions)
			for p, o := range inFlight {
				if got[p] < o+1 {
					t.Errorf("partition %d committed at %d: the handler of offset %d finished during shutdown but was not committed", p, got[p], o)
				}
			}
			t.Logf("Run returned %s after the handlers were released; committed %v", took, got)
			verify()
		})
	}
}

// TestConsumerStopInterruptsWaits stops a Consumer while its message
// waits out a one-minute retry backoff, and one while its message retries
// the dead letter against a broker that is not there: Run must return
// within seconds, not after the backoff, leave the message uncommitted,
// and leave no goroutine behind.
func TestConsumerStopInterruptsWaits(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"backoff", errors.New("transient")},
		{"dead-letter retries", tracebridge.Permanent(errors.New("poison"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addrs := testenv.Kafka(t)
			topic, group := newTopic("stopwait"), newTopic("g")
			createTopic(t, addrs, topic, 1)
			produceSpread(t, addrs, topic, 1, 1)
			verify := noLeaks(t)

			var attempts atomic.Int64
			c := tbkafka.NewConsumer(groupReader(addrs, group, 0, topic), func(context.Context, kafkago.Message) error {
				attempts.Add(1)
				return tc.err
			}, tracebridge.WithRetry(5, time.Minute, time.Minute), tracebridge.WithDeadLetter("nowhere"))
			tr := &kafkago.Transport{}
			c.SetPublisher(&kafkago.Writer{Addr: kafkago.TCP("127.0.0.1:1"), MaxAttempts: 1, BatchSize: 1, Transport: tr})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := runAsync(ctx, c.Run)
			testenv.WaitFor(t, "the first attempt", 30*time.Second, func() bool { return attempts.Load() >= 1 })
			time.Sleep(100 * time.Millisecond) // into the backoff or the dead-letter retries
			cancel()
			took := waitRun(t, "Consumer", done, 5*time.Second)
			tr.CloseIdleConnections() // the test's publisher: the Consumer does not close it
			if got := committedOffsets(t, addrs, group, topic, 1); got[0] > 0 {
				t.Fatalf("committed at %d although the message was neither handled nor dead-lettered", got[0])
			}
			if n := attempts.Load(); n != 1 {
				t.Fatalf("%d attempts, want 1 before the stop", n)
			}
			t.Logf("Run returned %s after the stop (backoff 1m)", took)
			verify()
		})
	}
}

// TestWriterCloseWithBatchesInFlight closes an Async writer holding
// unsent batches and a synchronous writer whose WriteMessages waits for
// its batch to fill: Close must flush them well before the batch timeout,
// end every span (through Completion for the Async one), and leave no
// goroutine of the wrapper behind.
func TestWriterCloseWithBatchesInFlight(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("wclose")
	createTopic(t, addrs, topic, 3)
	verify := noLeaks(t)

	const batchTimeout = time.Minute
	transport := &kafkago.Transport{} // the writers' own: kafka-go's default one is process-wide
	var completed atomic.Int64
	async := rawWriter(addrs, topic)
	async.Async, async.BatchTimeout, async.Transport = true, batchTimeout, transport
	async.Completion = func(msgs []kafkago.Message, err error) {
		if err == nil {
			completed.Add(int64(len(msgs)))
		}
	}
	aw := tbkafka.NewWriter(async, tel.Options()...)
	sync := rawWriter(addrs, topic)
	sync.BatchTimeout, sync.Transport = batchTimeout, transport
	sw := tbkafka.NewWriter(sync, tel.Options()...)

	const n = 20
	msgs := make([]kafkago.Message, n)
	for i := range msgs {
		msgs[i] = kafkago.Message{Key: partitionKey(i%3, i), Value: []byte("v")}
	}
	if err := aw.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatalf("async write: %v", err)
	}
	syncDone := make(chan error, 1)
	go func() { syncDone <- sw.WriteMessages(context.Background(), msgs[0]) }()
	time.Sleep(100 * time.Millisecond) // the sync write is waiting for its batch

	start := time.Now()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_ = aw.Close()
		_ = sw.Close()
	}()
	select {
	case <-closed:
	case <-time.After(batchTimeout / 6):
		t.Fatalf("Close did not return within %s (batch timeout %s)", batchTimeout/6, batchTimeout)
	}
	took := time.Since(start)
	if err := <-syncDone; err != nil {
		t.Fatalf("sync write in flight at Close: %v", err)
	}
	transport.CloseIdleConnections()
	if got := completed.Load(); got != n {
		t.Fatalf("Completion reported %d of %d async messages", got, n)
	}
	if creates, sends := len(tel.Named("create "+topic)), len(tel.Named("send "+topic)); creates != n || sends != 2 {
		t.Fatalf("ended spans: %d create (want %d), %d send (want 2)", creates, n, sends)
	}
	t.Logf("Close returned in %s with batches in flight (batch timeout %s)", took, batchTimeout)
	verify()
}

// TestConsumerStopWithBrokerGone kills the broker while a handler is
// running and lets the handler finish once the reader has noticed: its
// commit can never succeed. Whether the Consumer is then stopped, or its
// reader gives up on the group by itself, Run must return, within the
// reader's rebalance timeout (the longest a healthy group keeps a commit
// waiting) plus the reader's own shutdown, instead of waiting for the
// broker forever, and leave no goroutine behind.
func TestConsumerStopWithBrokerGone(t *testing.T) {
	for _, stop := range []bool{true, false} {
		name := "stopped"
		if !stop {
			name = "reader fails"
		}
		t.Run(name, func(t *testing.T) {
			addrs, stopBroker, err := testenv.StartKafka()
			if err != nil {
				t.Fatalf("start a broker of this test's own: %v", err)
			}
			defer stopBroker()
			topic := newTopic("gone")
			createTopic(t, addrs, topic, 1)
			produceSpread(t, addrs, topic, 1, 3)
			verify := noLeaks(t)
			entered := make(chan struct{}, 3)
			release := make(chan struct{})
			r := groupReader(addrs, newTopic("g"), 0, topic)
			c := tbkafka.NewConsumer(r, func(context.Context, kafkago.Message) error {
				entered <- struct{}{}
				<-release
				return nil
			}, tracebridge.WithLogger(slog.New(slog.DiscardHandler)))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := runAsync(ctx, c.Run)
			select {
			case <-entered:
			case <-time.After(30 * time.Second):
				t.Fatal("no message handled")
			}
			stopBroker()
			if stop {
				cancel()
			}
			// Let the reader notice (heartbeats every 500ms) and end its
			// generation: from then on a commit waits for the next one.
			time.Sleep(4 * r.Config().HeartbeatInterval)
			close(release)
			bound := 10 * r.Config().RebalanceTimeout
			start := time.Now()
			select {
			case err = <-done:
			case <-time.After(bound):
				t.Fatalf("Run did not return within %s of the handler's end with the broker gone", bound)
			}
			if stop && err != nil {
				t.Fatalf("Run after a stop: %v", err)
			}
			if !stop && err == nil {
				t.Fatal("Run returned nil although the reader failed and nobody stopped it")
			}
			t.Logf("Run returned %s after the handler's end with the broker gone (rebalance timeout %s): %v",
				time.Since(start), r.Config().RebalanceTimeout, err)
			verify()
		})
	}
}
