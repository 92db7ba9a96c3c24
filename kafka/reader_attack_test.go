package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// readerSpans tracks the process spans a Reader started, by span ID, and
// checks which have ended and how.
type readerSpans struct {
	tel  *testenv.Telemetry
	name map[trace.SpanID]string // "p/offset", with "#2" for a refetch
}

func (rs *readerSpans) add(ctx context.Context, what string) {
	rs.name[trace.SpanContextFromContext(ctx).SpanID()] = what
}

// expect fails t unless exactly the spans in want have ended, each once;
// want maps a span's name to "commit" (a settle event), "error" (failure
// status, no event) or "end" (neither).
func (rs *readerSpans) expect(t *testing.T, step string, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, s := range rs.tel.Ended() {
		n, ok := rs.name[s.SpanContext().SpanID()]
		if !ok {
			continue
		}
		if _, dup := got[n]; dup {
			t.Errorf("%s: span %s ended twice", step, n)
		}
		how := "end"
		switch {
		case len(s.Events()) > 0 && s.Events()[0].Name == "settle":
			how = "commit"
		case s.Status().Code == codes.Error:
			how = "error"
		}
		got[n] = how
	}
	var diffs []string
	for n, how := range want {
		if got[n] != how {
			diffs = append(diffs, fmt.Sprintf("%s: %q, want %q", n, got[n], how))
		}
	}
	for n, how := range got {
		if _, ok := want[n]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: ended (%s) too early", n, how))
		}
	}
	sort.Strings(diffs)
	for _, d := range diffs {
		t.Errorf("%s: %s", step, d)
	}
}

// TestAttackReaderCommitsAgainstBroker fetches ten messages from each of two
// partitions through a group Reader and settles them the hard way:
// a commit, then a commit of an earlier offset, Done with an error, one
// commit of several messages of both partitions out of order, a commit
// of a message already Done, a commit of an offset never fetched, and Close
// with spans still open. After every step exactly the spans a Kafka commit
// covers have ended, each once, none early.
func TestAttackReaderCommitsAgainstBroker(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("atkreader")
	createTopic(t, addrs, topic, 2)
	produceSpread(t, addrs, topic, 2, 10)
	r := tbkafka.NewReader(groupReader(addrs, newTopic("g"), 0, topic), tracebridge.WithTracerProvider(tel.TracerProvider))
	rs := &readerSpans{tel: tel, name: map[trace.SpanID]string{}}
	msgs := map[string]kafkago.Message{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for range 20 {
		mctx, m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := fmt.Sprintf("%d/%d", m.Partition, m.Offset)
		rs.add(mctx, n)
		msgs[n] = m
	}
	if len(msgs) != 20 {
		t.Fatalf("fetched %d distinct messages, want 20", len(msgs))
	}
	want := map[string]string{}
	commit := func(step string, ms ...string) {
		t.Helper()
		var batch []kafkago.Message
		for _, n := range ms {
			m, ok := msgs[n]
			if !ok {
				var p, o int
				fmt.Sscanf(n, "%d/%d", &p, &o)
				m = kafkago.Message{Topic: topic, Partition: p, Offset: int64(o)}
			}
			batch = append(batch, m)
		}
		if err := r.CommitMessages(ctx, batch...); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	commit("commit 0/5", "0/5")
	for o := 0; o <= 5; o++ {
		want[fmt.Sprintf("0/%d", o)] = "commit"
	}
	rs.expect(t, "commit 0/5", want)

	commit("commit 0/2 again", "0/2")
	rs.expect(t, "commit 0/2 after 0/5", want)

	r.Done(msgs["0/7"], errors.New("handler failed"))
	want["0/7"] = "error"
	rs.expect(t, "Done 0/7", want)

	commit("mixed", "1/3", "0/8", "1/1")
	for o := 0; o <= 3; o++ {
		want[fmt.Sprintf("1/%d", o)] = "commit"
	}
	want["0/6"], want["0/8"] = "commit", "commit"
	rs.expect(t, "commit 1/3 0/8 1/1", want)

	commit("after Done", "0/7")
	rs.expect(t, "commit 0/7 after Done", want)

	// An offset never fetched covers every fetched one before it.
	commit("never fetched", "1/7")
	for o := 4; o <= 7; o++ {
		want[fmt.Sprintf("1/%d", o)] = "commit"
	}
	rs.expect(t, "commit of an unfetched-looking 1/7", want)

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	want["0/9"], want["1/8"], want["1/9"] = "end", "end", "end"
	rs.expect(t, "Close", want)
	r.Done(msgs["0/9"], nil)
	// kafka-go waits for ctx on a commit after Close; either way no span
	// may end twice.
	short, stop := context.WithTimeout(ctx, 200*time.Millisecond)
	_ = r.CommitMessages(short, msgs["1/9"])
	stop()
	rs.expect(t, "after Close", want)
}

// TestAttackReaderRewind reads a partition, rewinds it with SetOffset and
// reads part of it again: a message fetched again ends its first span
// (without a settle event) when its second starts, and the second span is
// the one Done and commits end. The reader has no group, so its commits
// fail, and settle the spans with the failure all the same.
func TestAttackReaderRewind(t *testing.T) {
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("atkrewind")
	createTopic(t, addrs, topic, 1)
	produceSpread(t, addrs, topic, 1, 6)
	r := tbkafka.NewReader(kafkago.NewReader(kafkago.ReaderConfig{Brokers: addrs, Topic: topic, Partition: 0,
		MaxWait: 50 * time.Millisecond}), tracebridge.WithTracerProvider(tel.TracerProvider))
	rs := &readerSpans{tel: tel, name: map[trace.SpanID]string{}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fetch := func(suffix string) kafkago.Message {
		t.Helper()
		mctx, m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rs.add(mctx, fmt.Sprintf("0/%d%s", m.Offset, suffix))
		return m
	}
	for range 5 {
		fetch("")
	}
	want := map[string]string{}
	rs.expect(t, "first reads", want)
	if err := r.SetOffset(2); err != nil {
		t.Fatal(err)
	}
	var again []kafkago.Message
	for i := range 3 {
		m := fetch("#2")
		if m.Offset != int64(2+i) {
			t.Fatalf("after rewind read offset %d, want %d", m.Offset, 2+i)
		}
		again = append(again, m)
		want[fmt.Sprintf("0/%d", m.Offset)] = "end"
		rs.expect(t, fmt.Sprintf("refetch %d", m.Offset), want)
	}
	r.Done(again[1], nil) // offset 3
	want["0/3#2"] = "end"
	rs.expect(t, "Done 0/3", want)
	if err := r.CommitMessages(ctx, again[2]); err == nil {
		t.Fatal("a commit without a group succeeded")
	}
	want["0/0"], want["0/1"], want["0/2#2"], want["0/4#2"] = "commit", "commit", "commit", "commit"
	rs.expect(t, "commit 0/4", want)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	rs.expect(t, "Close", want)
}

// TestAttackReaderConcurrentSettles fetches on one goroutine and settles on
// several: CommitMessages of one message or of a few, Done with and
// without an error, all at once and out of order, then Close. Every span
// ends exactly once, under the race detector.
func TestAttackReaderConcurrentSettles(t *testing.T) {
	const partitions, each, workers = 3, 40, 4
	addrs := testenv.Kafka(t)
	tel := testenv.NewTelemetry(t)
	topic := newTopic("atkconc")
	createTopic(t, addrs, topic, partitions)
	produceSpread(t, addrs, topic, partitions, each)
	r := tbkafka.NewReader(groupReader(addrs, newTopic("g"), 0, topic), tracebridge.WithTracerProvider(tel.TracerProvider))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	work := make(chan kafkago.Message)
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			var held []kafkago.Message
			for m := range work {
				switch (int(m.Offset) + w) % 4 {
				case 0:
					r.Done(m, errors.New("failed"))
				case 1:
					r.Done(m, nil)
				case 2:
					held = append(held, m)
					if len(held) == 3 {
						// Newest first: the commit must still cover all three.
						if err := r.CommitMessages(ctx, held[2], held[0], held[1]); err != nil {
							errs <- err
							return
						}
						held = held[:0]
					}
				default:
					if err := r.CommitMessages(ctx, m); err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	ids := map[trace.SpanID]bool{}
	for range partitions * each {
		mctx, m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids[trace.SpanContextFromContext(mctx).SpanID()] = true
		work <- m
	}
	close(work)
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	ended := map[trace.SpanID]int{}
	for _, s := range tel.Ended() {
		if ids[s.SpanContext().SpanID()] {
			ended[s.SpanContext().SpanID()]++
		}
	}
	if len(ids) != partitions*each || len(ended) != len(ids) {
		t.Errorf("%d spans started, %d ended, want %d", len(ids), len(ended), partitions*each)
	}
	for id, n := range ended {
		if n != 1 {
			t.Errorf("span %s ended %d times", id, n)
		}
	}
}
