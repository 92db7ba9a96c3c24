package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"pgregory.net/rapid"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// outcome is what the state machine makes one handler call do.
type outcome int

const (
	succeed outcome = iota
	failTransient
	failPermanent
	panics
	// diesAfterWork does the work, and then the process dies before the
	// handler returns: the step crashes the consumer.
	diesAfterWork
)

var outcomes = []outcome{succeed, failTransient, failPermanent, panics, diesAfterWork}

func (o outcome) String() string {
	return [...]string{"succeed", "fail", "fail permanently", "panic", "die after its work"}[o]
}

// call is one handler call blocked until the state machine picks its
// outcome: a message, or a batch of one partition.
type call struct {
	partition   int
	first, last int64
	answer      chan outcome
	worked      chan struct{} // closed once a call told to die has done its work
}

// consumerRun is one Consumer.Run of the model, in its own process as far
// as the test can make it: a crash cancels it and fails every handler call
// it has blocked or will start.
type consumerRun struct {
	cancel  context.CancelFunc
	crashed chan struct{}
	done    <-chan error
}

// commitModel is a rapid state machine over a real Consumer or
// BatchConsumer on kfake. The state it keeps is the model: per partition,
// the offsets produced and the offsets that have been handled successfully
// (recorded by the handler before it returns) or dead-lettered (read back
// from the dead-letter topic). Its invariant, checked after every step: no
// partition's committed offset passes an offset outside that set, which is
// what makes a crash at any step lose nothing. Steps produce messages,
// finish a blocked handler call with a drawn outcome (success, error,
// permanent error, panic, or doing the work and then dying before the
// commit) in a drawn order across partitions, or crash the
// consumer and start a fresh one in the same group. At the end a consumer
// drains the topic: every message must have been handled or dead-lettered
// at least once, and everything committed.
type commitModel struct {
	addrs       []string
	admin       *kafkago.Client
	writer      *kafkago.Writer
	batch       bool
	partitions  int
	maxBatch    int
	commitEvery time.Duration
	opts        []tracebridge.Option
	topic, dlq  string
	group       string

	produced []int64 // per partition; message i of partition p has offset i
	dlqNext  int64
	dead     []map[int64]int // partition -> offset -> dead letters read back
	caughtUp bool            // at the last check, every produced message was committed
	dirty    bool            // something happened since the last check
	budget   int             // broker steps left in this run of the machine
	run      *consumerRun
	runs     int

	arrived  chan struct{} // a handler call started
	mu       sync.Mutex
	waiting  []*call
	handled  []map[int64]int // partition -> offset -> successful handler calls
	worked   []map[int64]int // partition -> offset -> calls that did the work and died
	calls    int
	problems []string
}

// modelStats adds up what every check of a model test did, for its log.
type modelStats struct {
	checks, runs, calls, messages, duplicates, deadLetters atomic.Int64
}

func newCommitModel(t *rapid.T, addrs []string, batch bool, budget int) *commitModel {
	m := &commitModel{
		addrs: addrs, batch: batch, budget: budget,
		partitions:  rapid.IntRange(1, 4).Draw(t, "partitions"),
		commitEvery: rapid.SampledFrom([]time.Duration{0, 10 * time.Millisecond}).Draw(t, "commitInterval"),
		topic:       newTopic("model"), dlq: newTopic("model-dlq"), group: newTopic("g"),
		arrived: make(chan struct{}, 1),
	}
	concurrency := rapid.IntRange(1, 4).Draw(t, "concurrency")
	attempts := rapid.IntRange(1, 3).Draw(t, "maxAttempts")
	if batch {
		m.maxBatch = rapid.IntRange(1, 4).Draw(t, "maxBatch")
	}
	m.opts = []tracebridge.Option{
		tracebridge.WithConcurrency(concurrency),
		tracebridge.WithRetry(attempts, time.Millisecond, 2*time.Millisecond),
		tracebridge.WithDeadLetter(m.dlq),
		tracebridge.WithLogger(slog.New(slog.DiscardHandler)),
	}
	m.produced = make([]int64, m.partitions)
	m.handled = make([]map[int64]int, m.partitions)
	m.worked = make([]map[int64]int, m.partitions)
	m.dead = make([]map[int64]int, m.partitions)
	for p := range m.partitions {
		m.handled[p], m.worked[p], m.dead[p] = make(map[int64]int), make(map[int64]int), make(map[int64]int)
	}
	var closeAdmin func()
	m.admin, closeAdmin = adminClient(addrs)
	t.Cleanup(closeAdmin)
	res, err := m.admin.CreateTopics(context.Background(), &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: m.topic, NumPartitions: m.partitions, ReplicationFactor: 1},
		{Topic: m.dlq, NumPartitions: 1, ReplicationFactor: 1}}})
	if err == nil {
		err = errors.Join(res.Errors[m.topic], res.Errors[m.dlq])
	}
	if err != nil {
		t.Fatalf("create topics %s, %s: %v", m.topic, m.dlq, err)
	}
	m.writer = rawWriter(addrs, m.topic)
	m.writer.Balancer, m.writer.Transport, m.writer.BatchTimeout = toPartition, m.admin.Transport, time.Millisecond
	t.Cleanup(func() { _ = m.writer.Close() })
	initial := make([]int, m.partitions)
	for p := range initial {
		initial[p] = rapid.IntRange(0, 5).Draw(t, fmt.Sprintf("initial%d", p))
	}
	m.produce(t, initial...)
	m.start()
	t.Cleanup(func() { m.stop(t) }) // also when a step failed: no handler is left blocked
	return m
}

// spend takes one broker step from the budget. Past it, steps do nothing:
// rapid's step count is global, and a step that talks to the broker is
// what costs time.
func (m *commitModel) spend() bool {
	if m.budget == 0 {
		return false
	}
	m.budget--
	m.dirty = true
	return true
}

// produce writes n[p] messages to each partition p.
func (m *commitModel) produce(t *rapid.T, n ...int) {
	var msgs []kafkago.Message
	for p := range n {
		for i := range n[p] {
			msgs = append(msgs, kafkago.Message{Key: partitionKey(p, int(m.produced[p])+i), Value: []byte("v")})
		}
	}
	if len(msgs) == 0 {
		return
	}
	if err := m.writer.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatalf("produce %v: %v", n, err)
	}
	for p := range n {
		m.produced[p] += int64(n[p])
	}
}

func (m *commitModel) start() {
	r := groupReader(m.addrs, m.group, m.commitEvery, m.topic)
	crashed := make(chan struct{})
	var c *tbkafka.Consumer
	if m.batch {
		c = tbkafka.NewBatchConsumer(r, func(_ context.Context, msgs []kafkago.Message) error {
			return m.handle(crashed, msgs)
		}, m.maxBatch, m.opts...)
	} else {
		c = tbkafka.NewConsumer(r, func(_ context.Context, msg kafkago.Message) error {
			return m.handle(crashed, []kafkago.Message{msg})
		}, m.opts...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.run = &consumerRun{cancel: cancel, crashed: crashed, done: runAsync(ctx, c.Run)}
	m.runs++
}

// stop crashes the running consumer: its context is cancelled and every
// handler call it has blocked, or starts from now on, fails at once, as if
// the process died under it. Whatever it committed stays committed.
func (m *commitModel) stop(t *rapid.T) {
	r := m.run
	if r == nil {
		return
	}
	m.run = nil
	r.cancel()
	close(r.crashed)
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run after a crash: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("Run did not return within 15s of the crash")
	}
	m.mu.Lock()
	m.waiting = nil
	m.mu.Unlock()
}

// handle is the handler: it checks what it got, waits for the state
// machine's outcome, and records a success before returning it.
func (m *commitModel) handle(crashed <-chan struct{}, msgs []kafkago.Message) error {
	p := msgs[0].Partition
	m.mu.Lock()
	for i, msg := range msgs {
		kp, ki, _ := strings.Cut(strings.TrimPrefix(string(msg.Key), "p"), "/")
		kpn, _ := strconv.Atoi(kp)
		kin, _ := strconv.ParseInt(ki, 10, 64)
		switch {
		case msg.Partition != p:
			m.problems = append(m.problems, fmt.Sprintf("batch mixes partitions: %s", describe(msgs)))
		case i > 0 && msg.Offset <= msgs[i-1].Offset:
			m.problems = append(m.problems, fmt.Sprintf("batch out of offset order: %s", describe(msgs)))
		case kpn != msg.Partition || kin != msg.Offset:
			m.problems = append(m.problems, fmt.Sprintf("message %d/%d has key %s: the test's offsets are off", msg.Partition, msg.Offset, msg.Key))
		}
	}
	c := &call{partition: p, first: msgs[0].Offset, last: msgs[len(msgs)-1].Offset,
		answer: make(chan outcome, 1), worked: make(chan struct{})}
	m.waiting = append(m.waiting, c)
	m.calls++
	m.mu.Unlock()
	select {
	case m.arrived <- struct{}{}:
	default:
	}

	var o outcome
	select {
	case o = <-c.answer:
	case <-crashed:
		return errors.New("crashed mid-handler")
	}
	switch o {
	case succeed:
		m.mu.Lock()
		for _, msg := range msgs {
			m.handled[p][msg.Offset]++
		}
		m.mu.Unlock()
		return nil
	case failTransient:
		return errors.New("transient failure")
	case failPermanent:
		return tracebridge.Permanent(errors.New("permanent failure"))
	case diesAfterWork:
		// The work is done but the handler never succeeded: it is not in
		// the model's set, so committing past it still fails the check;
		// handling it again later is a duplicate, which is allowed.
		m.mu.Lock()
		for _, msg := range msgs {
			m.worked[p][msg.Offset]++
		}
		m.mu.Unlock()
		close(c.worked)
		<-crashed
		return errors.New("died after its work")
	default:
		panic("handler panic")
	}
}

// Produce appends messages to a partition while the consumer runs.
func (m *commitModel) Produce(t *rapid.T) {
	if !m.spend() {
		return
	}
	n := make([]int, m.partitions)
	n[rapid.IntRange(0, m.partitions-1).Draw(t, "partition")] = rapid.IntRange(1, 4).Draw(t, "messages")
	m.produce(t, n...)
	m.caughtUp = false
}

// Finish gives one blocked handler call a drawn outcome: the call of a
// drawn partition, or if that partition has none blocked, of the next one
// round that has. Which calls are blocked depends on the broker's timing,
// the invariant does not; the draws come before looking, so a seed replays
// the same choices whatever the timing.
func (m *commitModel) Finish(t *rapid.T) {
	if !m.spend() {
		return
	}
	want := rapid.IntRange(0, m.partitions-1).Draw(t, "partition")
	o := rapid.SampledFrom(outcomes).Draw(t, "outcome")
	c := m.await(t, want)
	if c == nil {
		return
	}
	c.answer <- o
	if o == diesAfterWork {
		<-c.worked
		m.stop(t)
		m.start()
	}
}

// await takes the blocked call of partition want, or, once calls have
// stopped arriving for a moment, the one of the next partition round that
// has one. It returns nil when nothing comes: the step then does nothing,
// rather than skip and have rapid draw another, which would make the
// draws that follow depend on timing.
func (m *commitModel) await(t *rapid.T, want int) *call {
	deadline := time.After(2 * time.Second)
	var quiet <-chan time.Time // started by the first blocked call, restarted by each arrival
	settled := false
	for {
		m.mu.Lock()
		best := -1
		round := func(c *call) int { return (c.partition - want + m.partitions) % m.partitions }
		for i, c := range m.waiting {
			// One call per partition at most: its messages go in order.
			if best < 0 || round(c) < round(m.waiting[best]) {
				best = i
			}
		}
		if best >= 0 && (round(m.waiting[best]) == 0 || settled) {
			c := m.waiting[best]
			m.waiting = slices.Delete(m.waiting, best, best+1)
			m.mu.Unlock()
			return c
		}
		m.mu.Unlock()
		switch {
		case best < 0 && m.caughtUp:
			return nil // nothing left to handle
		case best >= 0 && quiet == nil:
			quiet = time.After(5 * time.Millisecond)
		}
		select {
		case <-m.arrived:
			if quiet != nil {
				quiet = time.After(5 * time.Millisecond)
			}
		case <-quiet:
			settled = true
		case <-time.After(20 * time.Millisecond):
			// Maybe the last calls were committed since the last check.
			m.checkCommits(t)
		case <-deadline:
			return nil
		}
	}
}

// Crash stops the consumer abruptly between two steps and starts a fresh
// one in the same group.
func (m *commitModel) Crash(t *rapid.T) {
	if !m.spend() {
		return
	}
	m.stop(t)
	m.start()
}

// Check is the invariant, after every step.
func (m *commitModel) Check(t *rapid.T) {
	if !m.dirty {
		return
	}
	m.dirty = false
	m.checkCommits(t)
}

// checkCommits reads the committed offsets first and only then what was
// handled and dead-lettered: the consumer records both before it commits,
// so a correct one passes under any scheduling.
func (m *commitModel) checkCommits(t *rapid.T) []int64 {
	committed, err := fetchCommittedWith(m.admin, m.group, m.topic, m.partitions)
	if err != nil {
		t.Fatal(err)
	}
	m.readDeadLetters(t)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.problems) > 0 {
		t.Fatalf("%d bad handler calls; first: %s", len(m.problems), m.problems[0])
	}
	m.caughtUp = true
	for p, c := range committed {
		c = max(c, 0) // -1: nothing committed yet
		committed[p] = c
		if c > m.produced[p] {
			t.Fatalf("partition %d committed at %d, past the %d messages produced", p, c, m.produced[p])
		}
		for o := int64(0); o < c; o++ {
			if m.handled[p][o] == 0 && m.dead[p][o] == 0 {
				t.Fatalf("partition %d committed at %d, past offset %d, which was neither handled nor dead-lettered: a crash now loses it",
					p, c, o)
			}
		}
		m.caughtUp = m.caughtUp && c == m.produced[p]
	}
	return committed
}

// readDeadLetters reads the dead-letter topic from where it left off.
func (m *commitModel) readDeadLetters(t *rapid.T) {
	for {
		res, err := m.admin.Fetch(context.Background(), &kafkago.FetchRequest{
			Topic: m.dlq, Offset: m.dlqNext, MinBytes: 0, MaxBytes: 1 << 20})
		if err == nil {
			err = res.Error
		}
		if err != nil {
			t.Fatalf("read dead letters at %d: %v", m.dlqNext, err)
		}
		for {
			rec, err := res.Records.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("read dead letters: %v", err)
			}
			if rec.Offset < m.dlqNext {
				continue
			}
			m.dlqNext = rec.Offset + 1
			key, _ := io.ReadAll(rec.Key)
			kp, ki, _ := strings.Cut(strings.TrimPrefix(string(key), "p"), "/")
			p, _ := strconv.Atoi(kp)
			o, _ := strconv.ParseInt(ki, 10, 64)
			if p < m.partitions {
				m.dead[p][o]++
			}
		}
		if m.dlqNext >= res.HighWatermark {
			return
		}
	}
}

// drain succeeds every handler call from now on until every message has
// been handled or dead-lettered and everything is committed, then stops
// the consumer: the at-least-once promise, after any history of crashes.
func (m *commitModel) drain(t *rapid.T, stats *modelStats) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		m.mu.Lock()
		for _, c := range m.waiting {
			c.answer <- succeed
		}
		m.waiting = nil
		m.mu.Unlock()
		if m.caughtUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not drained within 30s: %s", m.missing())
		}
		select {
		case <-m.arrived:
		case <-time.After(20 * time.Millisecond):
		}
		m.checkCommits(t)
	}
	m.stop(t)
	committed := m.checkCommits(t)
	if !slices.Equal(committed, m.produced) {
		t.Fatalf("after the drain, committed %v of %v", committed, m.produced)
	}
	if miss := m.missing(); miss != "" {
		t.Fatalf("committed everything, but %s", miss)
	}
	stats.checks.Add(1)
	stats.runs.Add(int64(m.runs))
	m.mu.Lock()
	defer m.mu.Unlock()
	stats.calls.Add(int64(m.calls))
	for p := range m.partitions {
		stats.messages.Add(m.produced[p])
		for o := range m.produced[p] {
			stats.duplicates.Add(int64(max(m.handled[p][o]+m.worked[p][o]+m.dead[p][o]-1, 0)))
			stats.deadLetters.Add(int64(m.dead[p][o]))
		}
	}
}

// missing describes the messages neither handled nor dead-lettered.
func (m *commitModel) missing() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var miss []string
	for p := range m.partitions {
		for o := range m.produced[p] {
			if m.handled[p][o] == 0 && m.dead[p][o] == 0 {
				miss = append(miss, fmt.Sprintf("%d/%d", p, o))
			}
		}
	}
	if len(miss) == 0 {
		return ""
	}
	return fmt.Sprintf("%d messages neither handled nor dead-lettered: %v", len(miss), miss)
}

// modelBudget is how many broker steps one check takes at most; with
// rapid's 100 checks it keeps each model test to seconds under -race.
const modelBudget = 10

func testCommitModel(t *testing.T, batch bool) {
	addrs := testenv.Kafka(t)
	var stats modelStats
	start := time.Now()
	rapid.Check(t, func(rt *rapid.T) {
		m := newCommitModel(rt, addrs, batch, modelBudget)
		rt.Repeat(map[string]func(*rapid.T){
			"Produce": m.Produce,
			"Finish":  m.Finish,
			"Finish2": m.Finish, // twice as likely: the interleavings are the point
			"Crash":   m.Crash,
			"":        m.Check,
		})
		m.drain(rt, &stats)
	})
	t.Logf("%d checks in %s: %d consumer runs, %d messages, %d handler calls, %d handled or dead-lettered more than once (at least once is the promise), %d dead letters",
		stats.checks.Load(), time.Since(start).Round(time.Millisecond), stats.runs.Load(), stats.messages.Load(),
		stats.calls.Load(), stats.duplicates.Load(), stats.deadLetters.Load())
}

// TestConsumerCommitModel drives a Consumer (one message per handler call,
// WithConcurrency 1-4) through the commit model.
func TestConsumerCommitModel(t *testing.T) { testCommitModel(t, false) }

// TestBatchConsumerCommitModel drives a BatchConsumer (batches of 1-4,
// WithConcurrency 1-4) through the commit model; its handler also checks
// that every batch is one partition in offset order.
func TestBatchConsumerCommitModel(t *testing.T) { testCommitModel(t, true) }
