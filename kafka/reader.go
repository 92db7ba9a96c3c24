package kafka

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"

	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Reader is a *kafkago.Reader whose FetchMessage and ReadMessage also
// return a context that carries the message's journey (trace, baggage,
// session) under a started CONSUMER "process" span. Pass that context to
// the code that handles the message. The span covers the handling up to the
// settle: CommitMessages ends it with a commit event, Done ends it without
// one (a failed message, or one read with ReadMessage, which kafka-go
// commits on its own), and Close ends whatever is still open.
//
// Use Reader for your own fetch loop; Consumer runs the loop, retries and
// dead letters for you. The kafka-go Reader's other methods (Stats, Lag,
// SetOffset, Config) are still there.
type Reader struct {
	*kafkago.Reader
	t     *msgtrace.Tracer
	group string
	addr  string
	port  int

	// open holds the spans not yet ended, per partition in offset
	// order, so a commit finds the spans it covers as a prefix of one
	// lane, without looking at any other span.
	mu   sync.Mutex
	open map[partitionOf]*[]*Process
}

// NewReader wraps r. It reads WithTracerProvider, WithMeterProvider,
// WithPropagators, WithTrust, WithParentPolicy, WithErrorOnEveryAttempt and
// WithSettleSpans.
func NewReader(r *kafkago.Reader, opts ...tracebridge.Option) *Reader {
	return newReader(r, msgtrace.New(System, opts))
}

func newReader(r *kafkago.Reader, t *msgtrace.Tracer) *Reader {
	cfg := r.Config()
	tr := &Reader{Reader: r, t: t, group: cfg.GroupID, open: make(map[partitionOf]*[]*Process)}
	if len(cfg.Brokers) > 0 {
		tr.addr, tr.port = splitAddr(cfg.Brokers[0])
	}
	return tr
}

// Process is the process span of one message, started by
// Reader.StartProcess. It is safe for concurrent use, and ending it twice
// is harmless: the first end counts.
type Process struct {
	r    *Reader
	msg  kafkago.Message
	once sync.Once
	p    *msgtrace.Process
	ctx  context.Context
}

// Attempt is the delivery attempt the span records (tracebridge.attempt),
// from 1; retries republished by a Consumer carry theirs in retry-attempt,
// which a Reader believes only under Trusted and only up to the
// configured attempts (see the README on retries and trust).
func (p *Process) Attempt() int { return p.p.Attempt }

// Context returns the context StartProcess returned.
func (p *Process) Context() context.Context { return p.ctx }

// Commit commits the message through the Reader and ends the span with the
// commit's outcome. A failed commit is returned wrapped, naming the message.
func (p *Process) Commit(ctx context.Context) error {
	err := p.r.Reader.CommitMessages(ctx, p.msg)
	if err != nil {
		err = fmt.Errorf("tracebridge/kafka: commit %s: %w", describePos(&p.msg), err)
	}
	p.settle("commit", err, nil)
	return err
}

// End ends the span without committing. A non-nil err is recorded as the
// final failure of this message in this process.
func (p *Process) End(err error) { p.settle("", nil, err) }

func (p *Process) settle(op string, serr, herr error) {
	p.once.Do(func() {
		p.r.forget(&p.msg, p)
		if op != "" {
			p.p.Settle(p.ctx, op, serr)
		}
		p.p.End(p.ctx, herr, herr != nil)
	})
}

func describePos(m *kafkago.Message) string {
	return fmt.Sprintf("topic %q partition %d offset %d", m.Topic, m.Partition, m.Offset)
}

// delivery describes msg for msgtrace.
func (r *Reader) delivery(msg *kafkago.Message) msgtrace.Delivery {
	m := msgtrace.Message{
		Destination:   msg.Topic,
		Partition:     strconv.Itoa(msg.Partition),
		BodySize:      len(msg.Value),
		ConsumerGroup: r.group,
		ServerAddress: r.addr,
		ServerPort:    r.port,
	}
	m.Lazy = (*fetched)(msg)
	return msgtrace.Delivery{
		Message:     m,
		Carrier:     NewCarrier(&msg.Headers),
		Identity:    (*fetched)(msg),
		PublishedAt: msg.Time,
	}
}

// StartProcess starts the process span of msg under ctx and returns the
// context to handle it in: the span, the message's baggage and session,
// nothing of any other message. A span already in ctx (a poll loop's)
// becomes a link, not the parent. End the span with Process.Commit or
// Process.End, or through the Reader's CommitMessages and Done.
func (r *Reader) StartProcess(ctx context.Context, msg kafkago.Message) (context.Context, *Process) {
	// The span describes the Process's own copy of msg, so the message is
	// copied to the heap once.
	tp := &Process{r: r, msg: msg}
	tp.ctx, tp.p = r.t.StartProcess(ctx, r.delivery(&tp.msg))
	k := partitionOf{msg.Topic, msg.Partition}
	r.mu.Lock()
	lane := r.open[k]
	if lane == nil {
		lane = new([]*Process)
		r.open[k] = lane
	}
	// Fetches come in offset order, so this is an append but after a
	// rewind (SetOffset, a rebalance).
	i, found := slices.BinarySearchFunc(*lane, msg.Offset, byOffset)
	var old *Process
	if found {
		old = (*lane)[i] // the same message fetched again: its first span is over
		(*lane)[i] = tp
	} else {
		*lane = slices.Insert(*lane, i, tp)
	}
	r.mu.Unlock()
	if old != nil {
		old.End(nil)
	}
	return tp.ctx, tp
}

func byOffset(p *Process, offset int64) int { return cmp.Compare(p.msg.Offset, offset) }

// forget removes p from the open spans, unless it is no longer there (a
// commit took it, or the message was fetched again).
func (r *Reader) forget(m *kafkago.Message, p *Process) {
	r.mu.Lock()
	if lane := r.open[partitionOf{m.Topic, m.Partition}]; lane != nil {
		if i, ok := slices.BinarySearchFunc(*lane, m.Offset, byOffset); ok && (*lane)[i] == p {
			*lane = slices.Delete(*lane, i, i+1)
		}
	}
	r.mu.Unlock()
}

// FetchMessage fetches the next message like kafkago.Reader.FetchMessage
// and starts its process span; the returned context carries it and the
// message's journey. CommitMessages (or Done) ends the span.
func (r *Reader) FetchMessage(ctx context.Context) (context.Context, kafkago.Message, error) {
	msg, err := r.Reader.FetchMessage(ctx)
	if err != nil {
		return ctx, msg, err
	}
	pctx, _ := r.StartProcess(ctx, msg)
	return pctx, msg, nil
}

// ReadMessage reads the next message like kafkago.Reader.ReadMessage, which
// commits it (for a consumer group) before returning, and starts its
// process span with a commit event. Call Done when the message is handled,
// so the span covers the handling.
func (r *Reader) ReadMessage(ctx context.Context) (context.Context, kafkago.Message, error) {
	msg, err := r.Reader.ReadMessage(ctx)
	if err != nil {
		return ctx, msg, err
	}
	pctx, p := r.StartProcess(ctx, msg)
	if r.group != "" {
		p.p.Settle(pctx, "commit", nil)
	}
	return pctx, msg, nil
}

// CommitMessages commits msgs like kafkago.Reader.CommitMessages and ends
// the process spans of the committed messages. Because a Kafka commit
// covers everything before the offset in its partition, the spans of
// earlier fetched messages in those partitions end too.
func (r *Reader) CommitMessages(ctx context.Context, msgs ...kafkago.Message) error {
	err := r.Reader.CommitMessages(ctx, msgs...)
	if err != nil {
		err = fmt.Errorf("tracebridge/kafka: commit %d messages: %w", len(msgs), err)
	}
	var buf [4]*Process // a loop commits one message, or a few, at a time
	for _, p := range r.covered(buf[:0], msgs) {
		p.settle("commit", err, nil)
	}
	return err
}

// covered removes the open spans at or before the offsets in msgs from the
// open spans and appends them to dst: in each lane, the prefix up to the
// message's offset.
func (r *Reader) covered(dst []*Process, msgs []kafkago.Message) []*Process {
	var lane *[]*Process
	r.mu.Lock()
	for i := range msgs {
		m := &msgs[i]
		if i == 0 || m.Partition != msgs[i-1].Partition || m.Topic != msgs[i-1].Topic {
			lane = r.open[partitionOf{m.Topic, m.Partition}]
		}
		if lane == nil {
			continue
		}
		n := 0
		for n < len(*lane) && (*lane)[n].msg.Offset <= m.Offset {
			n++
		}
		dst = append(dst, (*lane)[:n]...)
		*lane = slices.Delete(*lane, 0, n)
	}
	r.mu.Unlock()
	return dst
}

// Done ends the process span of msg without committing it. err, if not nil,
// is recorded as the message's failure. Use it for a message read with
// ReadMessage, or one you will not commit.
func (r *Reader) Done(msg kafkago.Message, err error) {
	var p *Process
	r.mu.Lock()
	if lane := r.open[partitionOf{msg.Topic, msg.Partition}]; lane != nil {
		if i, ok := slices.BinarySearchFunc(*lane, msg.Offset, byOffset); ok {
			p = (*lane)[i]
		}
	}
	r.mu.Unlock()
	if p != nil {
		p.End(err)
	}
}

// Close ends the spans still open and closes the kafka-go Reader.
func (r *Reader) Close() error {
	r.mu.Lock()
	var open []*Process
	for _, lane := range r.open {
		open = append(open, *lane...)
	}
	r.mu.Unlock()
	for _, p := range open {
		p.End(nil)
	}
	return r.Reader.Close()
}

// fetched is a fetched message as msgtrace asks about it: its offset and key
// for a recording span, and its position as its identity. Both are built
// only when asked for, from the message the caller already holds.
type fetched kafkago.Message

func (m *fetched) String() string {
	return m.Topic + "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10)
}

func (m *fetched) AppendAttrs(dst []attribute.KeyValue) []attribute.KeyValue {
	dst = append(dst, semconv.MessagingKafkaOffset(int(m.Offset)))
	if m.Key != nil {
		dst = append(dst, semconv.MessagingKafkaMessageKey(string(m.Key)))
	}
	return dst
}
