package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// adminClient returns a client with connections of its own, and the func
// that closes them: kafka-go's default transport keeps connections open
// process-wide, which the leak tests would see as someone else's.
func adminClient(addrs []string) (*kafkago.Client, func()) {
	tr := &kafkago.Transport{}
	return &kafkago.Client{Addr: kafkago.TCP(addrs...), Timeout: 10 * time.Second, Transport: tr}, tr.CloseIdleConnections
}

// createTopic creates topic with the given number of partitions.
func createTopic(t testing.TB, addrs []string, topic string, partitions int) {
	t.Helper()
	cl, done := adminClient(addrs)
	defer done()
	res, err := cl.CreateTopics(context.Background(), &kafkago.CreateTopicsRequest{
		Topics: []kafkago.TopicConfig{{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}}})
	if err != nil {
		t.Fatalf("create topic %q: %v", topic, err)
	}
	if err := res.Errors[topic]; err != nil {
		t.Fatalf("create topic %q: %v", topic, err)
	}
}

// partitionKey is the key of message i of partition p; toPartition sends a
// message to the partition its key names, so a test knows where each one is.
func partitionKey(p, i int) []byte { return fmt.Appendf(nil, "p%d/%05d", p, i) }

var toPartition = kafkago.BalancerFunc(func(m kafkago.Message, partitions ...int) int {
	p, _, _ := strings.Cut(strings.TrimPrefix(string(m.Key), "p"), "/")
	n, _ := strconv.Atoi(p)
	return partitions[n%len(partitions)]
})

// produceSpread writes perPartition messages to each of partitions
// partitions of topic, interleaved so that any fetch mixes partitions.
func produceSpread(t testing.TB, addrs []string, topic string, partitions, perPartition int) {
	t.Helper()
	w := rawWriter(addrs, topic)
	w.Balancer = toPartition
	tr := &kafkago.Transport{}
	w.Transport = tr
	defer tr.CloseIdleConnections()
	defer w.Close()
	msgs := make([]kafkago.Message, 0, partitions*perPartition)
	for i := range perPartition {
		for p := range partitions {
			msgs = append(msgs, kafkago.Message{Key: partitionKey(p, i), Value: []byte("v")})
		}
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatalf("produce to %q: %v", topic, err)
	}
}

// committedOffsets returns the group's committed offset of each of
// partitions partitions of topic (-1 where nothing is committed).
func committedOffsets(t testing.TB, addrs []string, group, topic string, partitions int) []int64 {
	t.Helper()
	out, err := fetchCommitted(addrs, group, topic, partitions)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fetchCommitted is committedOffsets for a goroutine that cannot fail a test.
func fetchCommitted(addrs []string, group, topic string, partitions int) ([]int64, error) {
	cl, done := adminClient(addrs)
	defer done()
	return fetchCommittedWith(cl, group, topic, partitions)
}

func fetchCommittedWith(cl *kafkago.Client, group, topic string, partitions int) ([]int64, error) {
	ids := make([]int, partitions)
	for i := range ids {
		ids[i] = i
	}
	res, err := cl.OffsetFetch(context.Background(), &kafkago.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err == nil && !errors.Is(res.Error, kafkago.GroupIdNotFound) { // no group yet: nothing committed
		err = res.Error
	}
	if err != nil {
		return nil, fmt.Errorf("offset fetch for group %s: %w", group, err)
	}
	out := make([]int64, partitions)
	for i := range out {
		out[i] = -1
	}
	for _, p := range res.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("offset fetch for group %s partition %d: %w", group, p.Partition, p.Error)
		}
		out[p.Partition] = p.CommittedOffset
	}
	return out, nil
}

// ledger records what handlers did, per partition and offset, and checks
// the batch and commit promises against it.
type ledger struct {
	mu       sync.Mutex
	handled  []map[int64]int // partition -> offset -> times handled
	bad      []string
	lastSeen []int64 // per partition, the last offset of the previous batch in this run
}

func newLedger(partitions int) *ledger {
	l := &ledger{handled: make([]map[int64]int, partitions)}
	for i := range l.handled {
		l.handled[i] = make(map[int64]int)
	}
	l.newRun()
	return l
}

// newRun forgets the per-run order: a new consumer starts again at the
// committed offset.
func (l *ledger) newRun() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastSeen = make([]int64, len(l.handled))
	for i := range l.lastSeen {
		l.lastSeen[i] = -1
	}
}

// batch checks that msgs is one partition in strictly increasing offsets,
// after the batch before it, and records them as handled.
func (l *ledger) batch(msgs []kafkago.Message) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := msgs[0].Partition
	for i, m := range msgs {
		if m.Partition != p {
			l.bad = append(l.bad, fmt.Sprintf("batch of %d mixes partitions %d and %d (%s)", len(msgs), p, m.Partition, describe(msgs)))
			break
		}
		if i > 0 && m.Offset <= msgs[i-1].Offset {
			l.bad = append(l.bad, fmt.Sprintf("batch out of offset order: %s", describe(msgs)))
			break
		}
	}
	for _, m := range msgs {
		if m.Partition == p && m.Offset <= l.lastSeen[p] {
			l.bad = append(l.bad, fmt.Sprintf("partition %d: offset %d after %d in one run", p, m.Offset, l.lastSeen[p]))
		}
		l.handled[m.Partition][m.Offset]++
		l.lastSeen[m.Partition] = max(l.lastSeen[m.Partition], m.Offset)
	}
}

func describe(msgs []kafkago.Message) string {
	var b strings.Builder
	for i, m := range msgs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d/%d", m.Partition, m.Offset)
	}
	return b.String()
}

// unhandledBelow returns, per partition, the offsets below the committed
// one whose handler never ran: what a crash right now would lose.
func (l *ledger) unhandledBelow(committed []int64) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var lost []string
	for p, c := range committed {
		for o := int64(0); o < c; o++ {
			if l.handled[p][o] == 0 {
				lost = append(lost, fmt.Sprintf("%d/%d", p, o))
			}
		}
	}
	return lost
}

// crashPoint records as a problem every offset a crash right now would
// lose: below the group's committed offset, never handled. The offsets are
// read before the handled set, and a handler records before its commit, so
// a correct consumer passes under any scheduling.
func (l *ledger) crashPoint(addrs []string, group, topic string) {
	c, err := fetchCommitted(addrs, group, topic, len(l.handled))
	if err == nil {
		if lost := l.unhandledBelow(c); len(lost) > 0 {
			err = fmt.Errorf("committed %v past %d offsets whose handler never ran: %v", c, len(lost), lost)
		}
	}
	if err != nil {
		l.mu.Lock()
		l.bad = append(l.bad, err.Error())
		l.mu.Unlock()
	}
}

func (l *ledger) count() (distinct, calls int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.handled {
		distinct += len(h)
		for _, n := range h {
			calls += n
		}
	}
	return distinct, calls
}

// check fails t with the first problem of each kind the ledger saw.
func (l *ledger) check(t testing.TB) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	first := make(map[string]string)
	var kinds []string
	for _, b := range l.bad {
		kind, _, _ := strings.Cut(b, " ")
		if _, ok := first[kind]; !ok {
			first[kind] = b
			kinds = append(kinds, kind)
		}
	}
	for _, k := range kinds {
		t.Errorf("%s", first[k])
	}
	if len(l.bad) > 0 {
		t.Fatalf("%d problems in all", len(l.bad))
	}
}

// TestBatchConsumerBatchesOnePartitionInOrder reads a topic of four
// partitions, produced interleaved, through one batch worker, so every
// fetch mixes partitions: each batch the handler gets must hold one
// partition in increasing offsets, and follow that partition's batch
// before it.
func TestBatchConsumerBatchesOnePartitionInOrder(t *testing.T) {
	const partitions, perPartition = 4, 150
	addrs := testenv.Kafka(t)
	topic, group := newTopic("batch-order"), newTopic("g")
	createTopic(t, addrs, topic, partitions)
	produceSpread(t, addrs, topic, partitions, perPartition)

	l := newLedger(partitions)
	c := tbkafka.NewBatchConsumer(groupReader(addrs, group, 0, topic), func(_ context.Context, msgs []kafkago.Message) error {
		l.batch(msgs)
		time.Sleep(time.Millisecond) // let the queue fill, so batches are cut from mixed input
		return nil
	}, 32, tracebridge.WithConcurrency(1))
	stop := runConsumer(t, c.Run)
	testenv.WaitFor(t, "every message handled", 60*time.Second, func() bool {
		n, _ := l.count()
		return n == partitions*perPartition
	})
	stop()
	l.check(t)
	if lost := l.unhandledBelow(committedOffsets(t, addrs, group, topic, partitions)); len(lost) > 0 {
		t.Fatalf("committed past %d offsets whose handler never ran: %v", len(lost), lost)
	}
}

// TestBatchConsumerAtLeastOnceRestart is the outside tester's scenario:
// a batch consumer is stopped a third of the way through 600 messages on
// four partitions and a new one takes over in the same group. At every
// batch the first consumer starts, and after it stopped, no committed
// offset may pass a message whose handler did not run (a crash there would
// lose it), and after the restart every message has been handled.
func TestBatchConsumerAtLeastOnceRestart(t *testing.T) {
	const partitions, perPartition = 4, 150
	const total = partitions * perPartition
	addrs := testenv.Kafka(t)
	topic, group := newTopic("batch-alo"), newTopic("g")
	createTopic(t, addrs, topic, partitions)
	produceSpread(t, addrs, topic, partitions, perPartition)

	l := newLedger(partitions)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := tbkafka.NewBatchConsumer(groupReader(addrs, group, 0, topic), func(_ context.Context, msgs []kafkago.Message) error {
		l.crashPoint(addrs, group, topic) // a kill -9 could come now
		l.batch(msgs)
		if n, _ := l.count(); n >= total/3 {
			cancel() // killed mid-stream
		}
		time.Sleep(time.Millisecond)
		return nil
	}, 16, tracebridge.WithConcurrency(2))
	if err := first.Run(ctx); err != nil {
		t.Fatalf("first consumer: %v", err)
	}
	afterFirst, _ := l.count()
	if afterFirst >= total {
		t.Fatalf("first consumer handled everything (%d); the restart proves nothing", afterFirst)
	}
	if lost := l.unhandledBelow(committedOffsets(t, addrs, group, topic, partitions)); len(lost) > 0 {
		t.Fatalf("after the stop, committed past %d offsets whose handler never ran: %v", len(lost), lost)
	}

	l.newRun()
	second := tbkafka.NewBatchConsumer(groupReader(addrs, group, 0, topic), func(_ context.Context, msgs []kafkago.Message) error {
		l.batch(msgs)
		return nil
	}, 16, tracebridge.WithConcurrency(2))
	stop := runConsumer(t, second.Run)
	testenv.WaitFor(t, "every message after the restart", 60*time.Second, func() bool {
		n, _ := l.count()
		return n == total
	})
	stop()
	l.check(t)
	_, calls := l.count()
	t.Logf("first consumer handled %d of %d; %d handler calls in all, %d duplicates", afterFirst, total, calls, calls-total)
}

// TestConsumerConcurrencyReachesEveryPartition gives a Consumer as many
// workers as its topic has partitions, with handlers that wait until every
// partition has one running: WithConcurrency(n) over n partitions must
// handle all n at once, not queue some behind others on a shared worker.
func TestConsumerConcurrencyReachesEveryPartition(t *testing.T) {
	const partitions = 8
	addrs := testenv.Kafka(t)
	topic := newTopic("spread")
	createTopic(t, addrs, topic, partitions)
	produceSpread(t, addrs, topic, partitions, 1)

	var (
		mu      sync.Mutex
		running = make(map[int]bool)
		all     = make(chan struct{})
	)
	c := tbkafka.NewConsumer(groupReader(addrs, newTopic("g"), 0, topic), func(_ context.Context, msg kafkago.Message) error {
		mu.Lock()
		running[msg.Partition] = true
		if len(running) == partitions {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
			return nil
		case <-time.After(5 * time.Second):
			return errors.New("not every partition got a worker")
		}
	}, tracebridge.WithConcurrency(partitions))
	stop := runConsumer(t, c.Run)
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("WithConcurrency(%d) over %d partitions: only %d handlers ran at once", partitions, partitions, len(running))
	}
	stop()
}

// TestBatchConsumerStartsNothingAfterStop stops a BatchConsumer while
// its handler runs a batch cut from a queue that holds every partition's
// messages: once the running batch finishes, no other batch may start,
// not even of the messages it had already taken off its queue. Fetched
// messages it did not start stay uncommitted for the next consumer.
func TestBatchConsumerStartsNothingAfterStop(t *testing.T) {
	const partitions, perPartition = 3, 10
	addrs := testenv.Kafka(t)
	topic, group := newTopic("batch-stop"), newTopic("g")
	createTopic(t, addrs, topic, partitions)
	produceSpread(t, addrs, topic, partitions, perPartition)

	var (
		calls    atomic.Int64
		stopped  atomic.Bool
		late     atomic.Int64
		blocked  = make(chan struct{})
		release  = make(chan struct{})
		inFlight []kafkago.Message
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := tbkafka.NewBatchConsumer(groupReader(addrs, group, 0, topic), func(_ context.Context, msgs []kafkago.Message) error {
		if stopped.Load() {
			late.Add(1)
			return nil
		}
		switch calls.Add(1) {
		case 1:
			time.Sleep(200 * time.Millisecond) // every partition's messages reach the queue
		case 2:
			inFlight = slices.Clone(msgs)
			close(blocked)
			<-release
		}
		return nil
	}, 100, tracebridge.WithConcurrency(1))
	done := runAsync(ctx, c.Run)
	select {
	case <-blocked:
	case <-time.After(30 * time.Second):
		t.Fatal("no second batch")
	}
	stopped.Store(true)
	cancel()
	close(release)
	waitRun(t, "BatchConsumer", done, 30*time.Second)
	if n := late.Load(); n > 0 {
		t.Fatalf("%d batches started after the stop", n)
	}
	got := committedOffsets(t, addrs, group, topic, partitions)
	last := inFlight[len(inFlight)-1]
	if got[last.Partition] != last.Offset+1 {
		t.Fatalf("partition %d committed at %d, want %d: the batch running at the stop finishes and commits", last.Partition, got[last.Partition], last.Offset+1)
	}
	t.Logf("batch at the stop: %s; committed %v", describe(inFlight), got)
}
