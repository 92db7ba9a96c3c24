package kafka

import (
	"fmt"
	"testing"

	kafkago "github.com/segmentio/kafka-go"
	"pgregory.net/rapid"
)

// TestLanesModel drives lanes, the batch worker's bookkeeping, against a
// model of one FIFO per partition: messages pushed in fetch order from
// random partitions, batches cut with random limits, and a handler that
// appends to and overwrites every batch it gets. Every batch must be one
// partition, the front of that partition's waiting messages in offset
// order, no longer than the limit; nothing lost or repeated; and a
// partition with waiting messages must get a batch before any other
// partition gets a second one.
func TestLanesModel(t *testing.T) {
	keys := []partitionOf{{"a", 0}, {"a", 1}, {"a", 2}, {"b", 0}}
	rapid.Check(t, func(t *rapid.T) {
		var l lanes
		waiting := make(map[partitionOf][]int64) // the model
		next := make(map[partitionOf]int64)      // next offset to fetch
		passed := make(map[partitionOf]int)      // batches others got while it waited
		total := 0
		t.Repeat(map[string]func(*rapid.T){
			"push": func(t *rapid.T) {
				k := rapid.SampledFrom(keys).Draw(t, "partition")
				l.push(kafkago.Message{Topic: k.topic, Partition: k.id, Offset: next[k], Value: []byte("v")})
				waiting[k] = append(waiting[k], next[k])
				next[k]++
				total++
			},
			"next": func(t *rapid.T) {
				limit := rapid.IntRange(-1, 5).Draw(t, "limit")
				b := l.next(limit)
				if total == 0 {
					if b != nil {
						t.Fatalf("batch %v from empty lanes", b)
					}
					return
				}
				if len(b) == 0 || len(b) > max(limit, 1) {
					t.Fatalf("batch of %d with limit %d and %d waiting", len(b), limit, total)
				}
				k := partitionOf{b[0].Topic, b[0].Partition}
				want := waiting[k][:min(len(b), len(waiting[k]))]
				for i, m := range b {
					if m.Topic != k.topic || m.Partition != k.id {
						t.Fatalf("batch mixes partitions: %v then %s/%d", k, m.Topic, m.Partition)
					}
					if i >= len(want) || m.Offset != want[i] {
						t.Fatalf("batch %v of %v: offset %d at %d, want the front of %v", offsets(b), k, m.Offset, i, waiting[k])
					}
				}
				if n := passed[k]; n >= len(keys) {
					t.Fatalf("%v waited while %d batches of other partitions went", k, n)
				}
				waiting[k] = waiting[k][len(b):]
				total -= len(b)
				passed[k] = 0
				for o := range waiting {
					if o != k && len(waiting[o]) > 0 {
						passed[o]++
					}
				}
				if rapid.Bool().Draw(t, "handler scribbles") {
					// A handler may keep, append to and edit its batch:
					// none of it may reach messages still waiting.
					b = append(b, kafkago.Message{Topic: "x", Offset: -1}, kafkago.Message{Topic: "x", Offset: -2})
					for i := range b {
						b[i].Offset, b[i].Partition = -7, 99
					}
				}
			},
			"": func(t *rapid.T) {
				if l.len() != total {
					t.Fatalf("lanes hold %d, model %d", l.len(), total)
				}
			},
		})
	})
}

func offsets(b []kafkago.Message) string {
	s := ""
	for _, m := range b {
		s += fmt.Sprintf(" %d", m.Offset)
	}
	return s
}
