package kafka

import kafkago "github.com/segmentio/kafka-go"

// partitionOf names the partition a message was fetched from.
type partitionOf struct {
	topic string
	id    int
}

// lanes holds the messages a batch worker has taken off its queue, one
// FIFO lane per partition. A batch is cut from one lane, so it holds one
// partition in fetch order (which is offset order) by construction, and its
// commit covers exactly the messages the handler got. Partitions take turns
// round-robin, so a busy partition cannot starve another that shares the
// worker.
//
// The zero value is empty and ready to use. Not safe for concurrent use:
// each worker has its own.
type lanes struct {
	turns   []partitionOf // partitions with waiting messages, in turn order
	waiting map[partitionOf][]kafkago.Message
	n       int // messages waiting in all lanes
}

// len is how many messages are waiting.
func (l *lanes) len() int { return l.n }

// push appends m to its partition's lane.
func (l *lanes) push(m kafkago.Message) {
	if l.waiting == nil {
		l.waiting = make(map[partitionOf][]kafkago.Message)
	}
	k := partitionOf{m.Topic, m.Partition}
	lane, ok := l.waiting[k]
	if !ok {
		l.turns = append(l.turns, k)
	}
	l.waiting[k] = append(lane, m)
	l.n++
}

// next removes and returns up to limit messages from the front of the lane
// whose turn it is, or nil when nothing waits. The batch shares no spare
// capacity with the lane, so a handler that appends to it cannot overwrite
// messages still waiting.
func (l *lanes) next(limit int) []kafkago.Message {
	if l.n == 0 {
		return nil
	}
	k := l.turns[0]
	l.turns = l.turns[1:]
	lane := l.waiting[k]
	take := min(max(limit, 1), len(lane))
	batch, rest := lane[:take:take], lane[take:]
	if len(rest) == 0 {
		delete(l.waiting, k)
	} else {
		l.waiting[k] = rest
		l.turns = append(l.turns, k) // to the back of the round
	}
	l.n -= take
	return batch
}
