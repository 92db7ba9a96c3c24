package kafka

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// System is the messaging.system of every span this package records.
const System = "kafka"

// reservedHeaders is room for traceparent, tracestate, baggage and
// session-id, so injecting never grows a message's header slice.
const reservedHeaders = 4

// Writer is a *kafkago.Writer that records producer spans and writes each
// message's creation context into its headers. Replace
// `w := &kafka.Writer{...}` by `w := tbkafka.NewWriter(&kafka.Writer{...})`
// and the rest of the code stays as it is: the kafka-go Writer's fields and
// methods are still there.
//
// One message gives one PRODUCER "send" span. Several give one PRODUCER
// "create" span per message, each injected into its own message, and one
// CLIENT "send" span that links to them (WithoutCreateSpans turns the create
// spans off; the messages then carry the send span). A message that already
// has a valid traceparent keeps it. Per-message failures in
// kafkago.WriteErrors mark only the messages that failed.
type Writer struct {
	*kafkago.Writer
	t          *msgtrace.Tracer
	addr       string
	port       int
	completion func([]kafkago.Message, error) // the user's, for Async writers

	mu      sync.Mutex
	pending map[*kafkago.Header]pendingMsg // Async messages awaiting Completion
}

type pendingMsg struct {
	op    msgtrace.Op
	batch *asyncBatch // nil for a single message
}

// asyncBatch ends the batch's send span once the last of its messages has
// completed; Completion reports per partition, so that can take several calls.
type asyncBatch struct {
	send      msgtrace.Op
	remaining int
	err       error
}

// NewWriter wraps w. It reads WithTracerProvider, WithMeterProvider,
// WithPropagators and WithoutCreateSpans. For an Async writer it installs
// its own w.Completion, which ends the spans and then calls the one w had,
// so set Completion before calling NewWriter and do not change it after.
func NewWriter(w *kafkago.Writer, opts ...tracebridge.Option) *Writer {
	tw := &Writer{Writer: w, t: msgtrace.New(System, opts)}
	if w.Addr != nil {
		tw.addr, tw.port = splitAddr(w.Addr.String())
	}
	if w.Async {
		tw.pending = make(map[*kafkago.Header]pendingMsg)
		tw.completion = w.Completion
		w.Completion = tw.complete
	}
	return tw
}

// splitAddr turns kafka-go's address list "host:port,host:port" into the
// first broker's server.address and server.port.
func splitAddr(s string) (string, int) {
	s, _, _ = strings.Cut(s, ",")
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return s, 0
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

func (w *Writer) describe(m *kafkago.Message) msgtrace.Message {
	topic := m.Topic
	if topic == "" {
		topic = w.Topic
	}
	return msgtrace.Message{Destination: topic, BodySize: len(m.Value), ServerAddress: w.addr, ServerPort: w.port,
		Lazy: (*writtenAttrs)(m)}
}

// writtenAttrs adds the key of a message being written; m is the writer's
// own copy, already on the heap, so the interface costs nothing.
type writtenAttrs kafkago.Message

func (m *writtenAttrs) AppendAttrs(dst []attribute.KeyValue) []attribute.KeyValue {
	if m.Key == nil {
		return dst
	}
	return append(dst, semconv.MessagingKafkaMessageKey(string(m.Key)))
}

// WriteMessages traces and writes msgs like kafkago.Writer.WriteMessages.
// The caller's messages are not modified: the headers are written into
// copies. For an Async writer the spans end when Completion reports the
// messages' partition batch.
func (w *Writer) WriteMessages(ctx context.Context, msgs ...kafkago.Message) error {
	if len(msgs) == 0 {
		return w.Writer.WriteMessages(ctx)
	}
	out, ops := w.prepare(msgs)
	if len(msgs) == 1 {
		var op msgtrace.Op
		_, op = w.t.StartSend(ctx, NewCarrier(&out[0].Headers), w.describe(&out[0]))
		ops[0] = op
		return w.write(ctx, out, ops, nil)
	}

	creations := make([]trace.SpanContext, len(out))
	if w.t.NoCreateSpans {
		// The send span is every message's creation context.
		m := w.describe(&out[0])
		m.Destination = w.batchTopic(out)
		sctx, send := w.t.StartBatchSend(ctx, m, len(out), nil)
		for i := range out {
			c := NewCarrier(&out[i].Headers)
			if _, ok := w.t.HasTraceparent(c); !ok {
				w.t.Inject(sctx, c)
			}
		}
		return w.write(ctx, out, nil, &asyncBatch{send: send})
	}
	for i := range out {
		_, ops[i] = w.t.StartCreate(ctx, NewCarrier(&out[i].Headers), w.describe(&out[i]))
		creations[i] = ops[i].Span.SpanContext()
	}
	m := msgtrace.Message{Destination: w.batchTopic(out), BodySize: -1, ServerAddress: w.addr, ServerPort: w.port}
	_, send := w.t.StartBatchSend(ctx, m, len(out), creations)
	return w.write(ctx, out, ops, &asyncBatch{send: send})
}

// batchTopic is the destination of a batch's send span: the topic when all
// messages share one, "" otherwise.
func (w *Writer) batchTopic(msgs []kafkago.Message) string {
	topic := msgs[0].Topic
	for i := range msgs {
		if msgs[i].Topic != topic {
			return w.Topic
		}
	}
	if topic == "" {
		return w.Topic
	}
	return topic
}

// prepare copies msgs and gives each copy its own header slice with room
// for the injected headers, all from one allocation. Distinct backing
// arrays matter twice: injecting must not edit headers the caller shares
// between messages, and Completion hands back copies of the messages whose
// Headers still point at them, which is how an Async write finds its spans.
func (w *Writer) prepare(msgs []kafkago.Message) ([]kafkago.Message, []msgtrace.Op) {
	n := 0
	for i := range msgs {
		n += len(msgs[i].Headers) + reservedHeaders
	}
	slab := make([]kafkago.Header, n)
	out := make([]kafkago.Message, len(msgs))
	copy(out, msgs)
	for i := range out {
		k := len(out[i].Headers)
		h := slab[: k : k+reservedHeaders]
		copy(h, out[i].Headers)
		out[i].Headers = h
		slab = slab[k+reservedHeaders:]
	}
	return out, make([]msgtrace.Op, len(out))
}

func (w *Writer) write(ctx context.Context, out []kafkago.Message, ops []msgtrace.Op, batch *asyncBatch) error {
	if w.Async {
		w.mu.Lock()
		for i := range out {
			pm := pendingMsg{batch: batch}
			if ops != nil {
				pm.op = ops[i]
			}
			w.pending[unsafe.SliceData(out[i].Headers)] = pm
		}
		if batch != nil {
			batch.remaining = len(out)
		}
		w.mu.Unlock()
	}
	err := w.Writer.WriteMessages(ctx, out...)
	if w.Async && err == nil {
		return nil // Completion ends the spans
	}
	if w.Async {
		// Nothing was queued: kafka-go fails an async write only before
		// handing any message to a partition writer.
		w.mu.Lock()
		for i := range out {
			delete(w.pending, unsafe.SliceData(out[i].Headers))
		}
		w.mu.Unlock()
	}
	var werrs kafkago.WriteErrors
	perMessage := errors.As(err, &werrs) && len(werrs) == len(out)
	for i := range ops {
		merr := err
		if perMessage {
			merr = werrs[i]
		}
		ops[i].End(ctx, merr)
	}
	if batch != nil {
		batch.send.End(ctx, err)
	}
	return err
}

// complete is the Completion of an Async writer: it ends the spans of the
// messages kafka-go reports, then calls the user's Completion.
func (w *Writer) complete(msgs []kafkago.Message, err error) {
	ctx := context.Background()
	for i := range msgs {
		m := &msgs[i]
		key := unsafe.SliceData(m.Headers)
		w.mu.Lock()
		pm, ok := w.pending[key]
		if ok {
			delete(w.pending, key)
		}
		var sendDone bool
		if ok && pm.batch != nil {
			pm.batch.remaining--
			if err != nil && pm.batch.err == nil {
				pm.batch.err = err
			}
			sendDone = pm.batch.remaining == 0
		}
		w.mu.Unlock()
		if !ok {
			continue // not written through this wrapper
		}
		if pm.op.Span != nil {
			if err == nil {
				pm.op.Span.SetAttributes(semconv.MessagingDestinationPartitionID(strconv.Itoa(m.Partition)),
					semconv.MessagingKafkaOffset(int(m.Offset)))
			}
			pm.op.End(ctx, err)
		}
		if sendDone {
			pm.batch.send.End(ctx, pm.batch.err)
		}
	}
	if w.completion != nil {
		w.completion(msgs, err)
	}
}
