package kafka

import (
	"context"
	"fmt"
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

	mu   sync.Mutex
	open map[position]*Process
}

type position struct {
	topic     string
	partition int
	offset    int64
}

// NewReader wraps r. It reads WithTracerProvider, WithMeterProvider,
// WithPropagators, WithTrust, WithParentPolicy, WithErrorOnEveryAttempt and
// WithSettleSpans.
func NewReader(r *kafkago.Reader, opts ...tracebridge.Option) *Reader {
	return newReader(r, msgtrace.New(System, opts))
}

func newReader(r *kafkago.Reader, t *msgtrace.Tracer) *Reader {
	cfg := r.Config()
	tr := &Reader{Reader: r, t: t, group: cfg.GroupID, open: make(map[position]*Process)}
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
	pctx, p := r.t.StartProcess(ctx, r.delivery(&msg))
	tp := &Process{r: r, msg: msg, p: p, ctx: pctx}
	r.mu.Lock()
	if old := r.open[position{msg.Topic, msg.Partition, msg.Offset}]; old != nil {
		defer old.End(nil) // the same message fetched again: its first span is over
	}
	r.open[position{msg.Topic, msg.Partition, msg.Offset}] = tp
	r.mu.Unlock()
	return pctx, tp
}

func (r *Reader) forget(m *kafkago.Message, p *Process) {
	k := position{m.Topic, m.Partition, m.Offset}
	r.mu.Lock()
	if r.open[k] == p {
		delete(r.open, k)
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
	for _, p := range r.covered(msgs) {
		p.settle("commit", err, nil)
	}
	return err
}

// covered returns the open spans at or before the offsets in msgs.
func (r *Reader) covered(msgs []kafkago.Message) []*Process {
	type tp struct {
		topic     string
		partition int
	}
	upTo := make(map[tp]int64, 1)
	for i := range msgs {
		k := tp{msgs[i].Topic, msgs[i].Partition}
		if o, ok := upTo[k]; !ok || msgs[i].Offset > o {
			upTo[k] = msgs[i].Offset
		}
	}
	var out []*Process
	r.mu.Lock()
	for pos, p := range r.open {
		if o, ok := upTo[tp{pos.topic, pos.partition}]; ok && pos.offset <= o {
			out = append(out, p)
		}
	}
	r.mu.Unlock()
	return out
}

// Done ends the process span of msg without committing it. err, if not nil,
// is recorded as the message's failure. Use it for a message read with
// ReadMessage, or one you will not commit.
func (r *Reader) Done(msg kafkago.Message, err error) {
	r.mu.Lock()
	p := r.open[position{msg.Topic, msg.Partition, msg.Offset}]
	r.mu.Unlock()
	if p != nil {
		p.End(err)
	}
}

// Close ends the spans still open and closes the kafka-go Reader.
func (r *Reader) Close() error {
	r.mu.Lock()
	open := make([]*Process, 0, len(r.open))
	for _, p := range r.open {
		open = append(open, p)
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
