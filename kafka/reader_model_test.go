package kafka_test

import (
	"context"
	"testing"

	kafkago "github.com/segmentio/kafka-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"pgregory.net/rapid"

	"github.com/tracebridge/tracebridge"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// TestReaderOpenSpansModel drives the Reader's bookkeeping of open process
// spans against a model: spans started for messages of random partitions
// and offsets (in order, rewound, or the same message again), ended by
// Done, by commits of one or several messages, and by Close. A commit ends
// exactly the open spans at or before its offsets in its partitions, with a
// settle event; Done ends only its message's span; a message started again
// ends its first span; every span ends once. The reader has no group, so
// kafka-go fails every commit without a broker, which settles the covered
// spans all the same (with the failure on the event).
func TestReaderOpenSpansModel(t *testing.T) {
	type pos struct {
		topic     string
		partition int
		offset    int64
	}
	parts := []struct {
		topic string
		id    int
	}{{"a", 0}, {"a", 1}, {"b", 0}}
	rapid.Check(t, func(t *rapid.T) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		r := tbkafka.NewReader(kafkago.NewReader(kafkago.ReaderConfig{Brokers: []string{"127.0.0.1:1"}, Topic: "a"}),
			tracebridge.WithTracerProvider(tp))
		open := map[pos]trace.SpanID{}  // the model: the span of each open message
		want := map[trace.SpanID]bool{} // ended spans: true if by a commit
		ctx := context.Background()
		msg := func(t *rapid.T) kafkago.Message {
			p := rapid.SampledFrom(parts).Draw(t, "partition")
			return kafkago.Message{Topic: p.topic, Partition: p.id, Offset: rapid.Int64Range(0, 8).Draw(t, "offset")}
		}
		check := func(t *rapid.T) {
			got := map[trace.SpanID]bool{}
			for _, s := range rec.Ended() {
				if _, dup := got[s.SpanContext().SpanID()]; dup {
					t.Fatalf("span %v ended twice", s.SpanContext().SpanID())
				}
				got[s.SpanContext().SpanID()] = len(s.Events()) > 0
			}
			if len(got) != len(want) {
				t.Fatalf("%d spans ended, want %d", len(got), len(want))
			}
			for id, committed := range want {
				if c, ok := got[id]; !ok || c != committed {
					t.Fatalf("span %v: ended %v, by commit %v; want ended by commit %v", id, ok, c, committed)
				}
			}
		}
		t.Repeat(map[string]func(*rapid.T){
			"start": func(t *rapid.T) {
				m := msg(t)
				k := pos{m.Topic, m.Partition, m.Offset}
				if old, ok := open[k]; ok {
					want[old] = false
				}
				pctx, _ := r.StartProcess(ctx, m)
				open[k] = trace.SpanContextFromContext(pctx).SpanID()
			},
			"done": func(t *rapid.T) {
				m := msg(t)
				k := pos{m.Topic, m.Partition, m.Offset}
				if id, ok := open[k]; ok {
					want[id] = false
					delete(open, k)
				}
				r.Done(m, nil)
			},
			"commit": func(t *rapid.T) {
				msgs := rapid.SliceOfN(rapid.Custom(msg), 1, 4).Draw(t, "msgs")
				for k, id := range open {
					for _, m := range msgs {
						if m.Topic == k.topic && m.Partition == k.partition && k.offset <= m.Offset {
							want[id] = true
							delete(open, k)
							break
						}
					}
				}
				if err := r.CommitMessages(ctx, msgs...); err == nil {
					t.Fatal("a commit without a group succeeded")
				}
			},
			"": check,
		})
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		for _, id := range open {
			want[id] = false
		}
		check(t)
	})
}
