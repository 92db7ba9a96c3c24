package nats

import (
	"context"
	"fmt"
	"sync"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Attributes of tracebridge's own for JetStream: semconv has no NATS
// attributes, and the stream sequence is what finds a message again.
const (
	StreamKey         = attribute.Key("tracebridge.nats.stream")
	StreamSequenceKey = attribute.Key("tracebridge.nats.stream.sequence")
	DuplicateKey      = attribute.Key("tracebridge.nats.duplicate")
	DeliveredKey      = attribute.Key("tracebridge.nats.num_delivered")
)

// JetStream traces publishes to JetStream. It embeds the
// jetstream.JetStream, so stream and consumer management is called as
// usual; only the publish methods differ, by taking a context.
type JetStream struct {
	jetstream.JetStream
	t    *msgtrace.Tracer
	host string
	port int
	// pending holds the spans of async publishes awaiting their ack when
	// the JetStream's own ack handlers end them (NewJetStream); nil when
	// each async publish waits on its future instead (WrapJetStream).
	pending *pendingSends
}

// WrapJetStream traces js's publishes. It reads WithTracerProvider,
// WithMeterProvider, WithPropagators and WithLogger. An async publish's
// span waits for its ack on a goroutine of its own; NewJetStream avoids
// that when you create the JetStream.
func WrapJetStream(js jetstream.JetStream, opts ...tracebridge.Option) *JetStream {
	j := &JetStream{JetStream: js, t: msgtrace.New("nats", opts)}
	j.host, j.port = serverOf(js.Conn())
	return j
}

// NewJetStream is jetstream.New(nc, jsOpts...) traced like WrapJetStream,
// for code that creates its JetStream: async publishes are then ended by
// the JetStream's own ack and error handlers, with no goroutine and no
// relayed future per message, and PublishAsync returns nats.go's future
// itself. It installs jetstream.WithPublishAsyncAckHandler and
// WithPublishAsyncErrHandler after jsOpts, so handlers of those kinds in
// jsOpts are not called: read acks from the futures, or use WrapJetStream.
//
// The spans end on nats.go's ack goroutine, which must not block: use a
// batching span processor, as production setups do, not a synchronous one.
// A publish whose ack never comes keeps its span open until the ack timeout
// (jetstream.WithPublishAsyncTimeout) or a reconnect fails it; closing the
// connection fails nothing, so set a timeout when that matters.
func NewJetStream(nc *natsgo.Conn, jsOpts []jetstream.JetStreamOpt, opts ...tracebridge.Option) (*JetStream, error) {
	p := &pendingSends{m: make(map[*natsgo.Msg]*pendingSend)}
	all := append(append([]jetstream.JetStreamOpt(nil), jsOpts...),
		jetstream.WithPublishAsyncAckHandler(p.ack), jetstream.WithPublishAsyncErrHandler(p.fail))
	js, err := jetstream.New(nc, all...)
	if err != nil {
		return nil, fmt.Errorf("nats: new JetStream: %w", err)
	}
	j := WrapJetStream(js, opts...)
	j.pending = p
	return j, nil
}

// pendingSends maps the messages of unacknowledged async publishes to
// their send spans. The handlers learn only the *nats.Msg, so a message
// published again while its first publish is pending queues behind it and
// the results are matched in publish order; that is exact for a retransmit
// to the same subject, and a guess for one message sent to two streams at
// once, which should be two messages.
type pendingSends struct {
	mu sync.Mutex
	m  map[*natsgo.Msg]*pendingSend
}

type pendingSend struct {
	ctx  context.Context
	op   msgtrace.Op
	next *pendingSend
}

func (p *pendingSends) add(m *natsgo.Msg, s *pendingSend) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if first := p.m[m]; first != nil {
		last := first
		for last.next != nil {
			last = last.next
		}
		last.next = s
		return
	}
	p.m[m] = s
}

func (p *pendingSends) take(m *natsgo.Msg) *pendingSend {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.m[m]
	switch {
	case s == nil:
	case s.next != nil:
		p.m[m] = s.next
	default:
		delete(p.m, m)
	}
	return s
}

// remove drops s, wherever it is in m's queue, and reports whether it was
// still there.
func (p *pendingSends) remove(m *natsgo.Msg, s *pendingSend) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	first := p.m[m]
	if first == s {
		if s.next != nil {
			p.m[m] = s.next
		} else {
			delete(p.m, m)
		}
		return true
	}
	for prev := first; prev != nil; prev = prev.next {
		if prev.next == s {
			prev.next = s.next
			return true
		}
	}
	return false
}

func (p *pendingSends) ack(_ jetstream.JetStream, m *natsgo.Msg, ack *jetstream.PubAck) {
	if s := p.take(m); s != nil {
		setAck(s.op.Span, ack)
		s.op.End(s.ctx, nil)
	}
}

func (p *pendingSends) fail(_ jetstream.JetStream, m *natsgo.Msg, err error) {
	if s := p.take(m); s != nil {
		s.op.End(s.ctx, fmt.Errorf("nats: JetStream async publish to %q: %w", m.Subject, err))
	}
}

// Publish publishes data to subj in a PRODUCER "send" span that ends with
// the PubAck, whose stream and sequence it records.
func (j *JetStream) Publish(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return j.PublishMsg(ctx, &natsgo.Msg{Subject: subj, Data: data}, opts...)
}

// PublishMsg is Publish for a prepared message; the journey is written into
// m.Header, keeping a creation context m already carries.
func (j *JetStream) PublishMsg(ctx context.Context, m *natsgo.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ctx, op := j.startSend(ctx, m)
	ack, err := j.JetStream.PublishMsg(ctx, m, opts...)
	if err != nil {
		err = fmt.Errorf("nats: JetStream publish to %q: %w", m.Subject, err)
	} else {
		setAck(op.Span, ack)
	}
	op.End(ctx, err)
	return ack, err
}

func (j *JetStream) startSend(ctx context.Context, m *natsgo.Msg) (context.Context, msgtrace.Op) {
	d := msgtrace.Message{Destination: m.Subject, BodySize: len(m.Data), ServerAddress: j.host, ServerPort: j.port}
	if m.Header != nil {
		d.ID = m.Header.Get(jetstream.MsgIDHeader)
	}
	return j.t.StartSend(ctx, headerCarrier(j.Conn(), m), d)
}

func setAck(span trace.Span, ack *jetstream.PubAck) {
	if ack == nil || !span.IsRecording() {
		return
	}
	span.SetAttributes(StreamKey.String(ack.Stream), StreamSequenceKey.Int64(int64(ack.Sequence)))
	if ack.Duplicate {
		span.SetAttributes(DuplicateKey.Bool(true))
	}
}

// PublishAsync publishes without waiting. The send span ends when the
// PubAck or the error arrives, so it measures the round trip; read the
// result from the returned future as usual.
func (j *JetStream) PublishAsync(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	return j.PublishMsgAsync(ctx, &natsgo.Msg{Subject: subj, Data: data}, opts...)
}

// PublishMsgAsync is PublishAsync for a prepared message. A future whose
// ack never arrives keeps its span open; set jetstream.WithPublishAsyncTimeout
// on the JetStream context to bound that.
func (j *JetStream) PublishMsgAsync(ctx context.Context, m *natsgo.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	ctx, op := j.startSend(ctx, m)
	if j.pending != nil {
		// Registered first: the ack can arrive before PublishMsgAsync
		// returns.
		s := &pendingSend{ctx: ctx, op: op}
		j.pending.add(m, s)
		f, err := j.JetStream.PublishMsgAsync(m, opts...)
		if err != nil {
			err = fmt.Errorf("nats: JetStream async publish to %q: %w", m.Subject, err)
			// A publish that fails at once is normally not reported to the
			// handlers, but an ack timeout or a reconnect can have reported
			// it meanwhile; the span ends once, by whoever took it.
			if j.pending.remove(m, s) {
				op.End(ctx, err)
			}
			return nil, err
		}
		return f, nil
	}
	f, err := j.JetStream.PublishMsgAsync(m, opts...)
	if err != nil {
		err = fmt.Errorf("nats: JetStream async publish to %q: %w", m.Subject, err)
		op.End(ctx, err)
		return nil, err
	}
	// The inner future hands its result out once; this one takes it to
	// end the span and hands it on.
	tf := &pubAckFuture{inner: f, ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
	go func() {
		select {
		case ack := <-f.Ok():
			setAck(op.Span, ack)
			op.End(ctx, nil)
			tf.ok <- ack
		case e := <-f.Err():
			op.End(ctx, fmt.Errorf("nats: JetStream async publish to %q: %w", m.Subject, e))
			tf.err <- e
		}
	}()
	return tf, nil
}

type pubAckFuture struct {
	inner jetstream.PubAckFuture
	ok    chan *jetstream.PubAck
	err   chan error
}

func (f *pubAckFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *pubAckFuture) Err() <-chan error            { return f.err }
func (f *pubAckFuture) Msg() *natsgo.Msg             { return f.inner.Msg() }
