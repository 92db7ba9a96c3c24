package nats

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

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

// DefaultAsyncAckTimeout bounds the wait of an async publish for its
// PubAck, so that neither its span nor anything the library started for it
// waits forever for an ack that never comes. A synchronous publish gives up
// after the JetStream's DefaultTimeout (5s by default); an async one is
// given longer, because it may queue behind thousands of others.
const DefaultAsyncAckTimeout = 30 * time.Second

// JetStream traces publishes to JetStream. It embeds the
// jetstream.JetStream, so stream and consumer management is called as
// usual; only the publish methods differ, by taking a context.
//
// An async publish whose PubAck never comes ends, span and future, with
// jetstream.ErrAsyncPublishTimeout after DefaultAsyncAckTimeout, with
// nats.ErrConnectionClosed when the connection is closed first (nats.go
// itself leaves such publishes pending), with nats.ErrDisconnected when the
// connection is lost, or with jetstream.ErrJetStreamPublisherClosed at
// CleanupPublisher. Nothing the library starts for a publish outlives the
// connection's Close.
type JetStream struct {
	jetstream.JetStream
	t    *msgtrace.Tracer
	host string
	port int
	// pending holds the spans of async publishes awaiting their ack when
	// the JetStream's own ack handlers end them (NewJetStream); nil when
	// each async publish waits on its future instead (WrapJetStream).
	pending *pendingSends
	// watch learns of the connection's close while publishes are pending.
	watch *closeWatch
	// ackTimeout bounds WrapJetStream's relays: DefaultAsyncAckTimeout,
	// shortened by tests.
	ackTimeout time.Duration
}

// WrapJetStream traces js's publishes. It reads WithTracerProvider,
// WithMeterProvider, WithPropagators and WithLogger.
//
// js's ack handlers cannot be hooked once it exists, so each async publish
// waits for its ack on a goroutine of its own, which ends with the ack, the
// error, DefaultAsyncAckTimeout (or a shorter
// jetstream.WithPublishAsyncTimeout set on js) or the connection's Close,
// whichever comes first. The publishes of a moment share one timer for
// the ack timeout (a timer per publish cost more than the publish's
// span), which therefore fires up to a sixteenth of it late. NewJetStream
// avoids the goroutine, and lets the ack timeout be longer, when you
// create the JetStream.
func WrapJetStream(js jetstream.JetStream, opts ...tracebridge.Option) *JetStream {
	j := &JetStream{JetStream: js, t: msgtrace.New("nats", opts), ackTimeout: DefaultAsyncAckTimeout}
	j.host, j.port = serverOf(js.Conn())
	j.watch = &closeWatch{nc: js.Conn(), closed: make(chan struct{})}
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
// The ack timeout is DefaultAsyncAckTimeout unless jsOpts sets
// jetstream.WithPublishAsyncTimeout (0 turns it off, leaving an unacked
// publish pending until a reconnect or Close). Closing the connection ends
// the spans of the publishes still pending; their futures, being nats.go's,
// then fail only at the ack timeout.
func NewJetStream(nc *natsgo.Conn, jsOpts []jetstream.JetStreamOpt, opts ...tracebridge.Option) (*JetStream, error) {
	p := &pendingSends{m: make(map[*natsgo.Msg]*pendingSend)}
	// The default timeout goes first, so a timeout in jsOpts replaces it.
	all := make([]jetstream.JetStreamOpt, 0, len(jsOpts)+3)
	all = append(all, jetstream.WithPublishAsyncTimeout(DefaultAsyncAckTimeout))
	all = append(all, jsOpts...)
	all = append(all, jetstream.WithPublishAsyncAckHandler(p.ack), jetstream.WithPublishAsyncErrHandler(p.fail))
	js, err := jetstream.New(nc, all...)
	if err != nil {
		return nil, fmt.Errorf("nats: new JetStream: %w", err)
	}
	j := WrapJetStream(js, opts...)
	j.pending = p
	p.watch = j.watch
	j.watch.onClose = p.failAll
	return j, nil
}

// closeWatch tells a JetStream's pending async publishes that the
// connection has closed: nats.go fails them on a reconnect, but at Close
// it leaves them pending forever. Its goroutine runs only while publishes
// are pending, so an idle JetStream costs none, and ends at the close. It
// also keeps the shared ack deadlines of WrapJetStream's relays, whose
// timers likewise live only while publishes are pending.
type closeWatch struct {
	nc *natsgo.Conn
	// onClose, when set, runs once when the connection has closed, before
	// closed is closed.
	onClose func()
	// closed is closed once the connection has closed.
	closed chan struct{}
	once   sync.Once

	mu sync.Mutex
	n  int // publishes pending
	// idle stops the running watcher when nothing is pending any more;
	// nil while none runs.
	idle chan struct{}
	// due is the ack deadline last handed out (see deadline), closed at
	// dueAt by one of timers, which close the deadlines still open.
	due    chan struct{}
	dueAt  time.Time
	timers []*time.Timer
}

// deadlineSlack divides an ack timeout into the slack a relay may wait
// beyond it: the publishes made within that slack of each other share one
// deadline, and its timer, instead of setting one each.
const deadlineSlack = 16

// deadline returns a channel that closes at least timeout from now and at
// most timeout/deadlineSlack later. Call it between begin and end: its
// timers live only while publishes are pending.
func (w *closeWatch) deadline(timeout time.Duration) <-chan struct{} {
	at := time.Now().Add(timeout)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.due != nil && !w.dueAt.Before(at) {
		return w.due
	}
	due := make(chan struct{})
	w.due, w.dueAt = due, at.Add(timeout/deadlineSlack)
	var t *time.Timer
	// The timer's function takes w.mu, so it sees t assigned.
	t = time.AfterFunc(time.Until(w.dueAt), func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		close(due)
		if i := slices.Index(w.timers, t); i >= 0 {
			w.timers = slices.Delete(w.timers, i, i+1)
		}
	})
	w.timers = append(w.timers, t)
	return due
}

// begin counts a pending publish, starting the watcher for the first.
func (w *closeWatch) begin() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n++; w.n == 1 && w.nc != nil { // a JetStream without a connection never closes one
		w.idle = make(chan struct{})
		go w.run(w.nc.StatusChanged(natsgo.CLOSED), w.idle)
	}
}

// end counts a publish settled, stopping the watcher after the last.
func (w *closeWatch) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n--; w.n != 0 {
		return
	}
	if w.idle != nil {
		close(w.idle)
		w.idle = nil
	}
	// Nobody waits for a deadline any more.
	for _, t := range w.timers {
		t.Stop()
	}
	w.timers, w.due = nil, nil
}

func (w *closeWatch) run(status chan natsgo.Status, idle chan struct{}) {
	defer w.nc.RemoveStatusListener(status)
	// A connection closed before the listener was registered sends it
	// nothing.
	if !w.nc.IsClosed() {
		select {
		case <-status: // the only status listened for is CLOSED
		case <-idle:
			return
		}
	}
	w.once.Do(func() {
		if w.onClose != nil {
			w.onClose()
		}
		close(w.closed)
	})
}

// pendingSends maps the messages of unacknowledged async publishes to
// their send spans. The handlers learn only the *nats.Msg, so a message
// published again while its first publish is pending queues behind it and
// the results are matched in publish order; that is exact for a retransmit
// to the same subject, and a guess for one message sent to two streams at
// once, which should be two messages.
type pendingSends struct {
	watch *closeWatch

	mu sync.Mutex
	m  map[*natsgo.Msg]*pendingSend
}

type pendingSend struct {
	ctx  context.Context
	op   msgtrace.Op
	next *pendingSend
}

func (p *pendingSends) add(m *natsgo.Msg, s *pendingSend) {
	p.watch.begin()
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
	s := p.m[m]
	switch {
	case s == nil:
	case s.next != nil:
		p.m[m] = s.next
	default:
		delete(p.m, m)
	}
	p.mu.Unlock()
	if s != nil {
		p.watch.end()
	}
	return s
}

// remove drops s, wherever it is in m's queue, and reports whether it was
// still there.
func (p *pendingSends) remove(m *natsgo.Msg, s *pendingSend) bool {
	p.mu.Lock()
	found := false
	first := p.m[m]
	if first == s {
		if s.next != nil {
			p.m[m] = s.next
		} else {
			delete(p.m, m)
		}
		found = true
	}
	for prev := first; !found && prev != nil; prev = prev.next {
		if prev.next == s {
			prev.next = s.next
			found = true
		}
	}
	p.mu.Unlock()
	if found {
		p.watch.end()
	}
	return found
}

// failAll ends the spans of every pending publish: the connection closed,
// so their acks will never come.
func (p *pendingSends) failAll() {
	p.mu.Lock()
	all := p.m
	p.m = make(map[*natsgo.Msg]*pendingSend)
	p.mu.Unlock()
	for m, s := range all {
		for ; s != nil; s = s.next {
			s.op.End(s.ctx, fmt.Errorf("nats: JetStream async publish to %q: no PubAck before the connection closed: %w",
				m.Subject, natsgo.ErrConnectionClosed))
			p.watch.end()
		}
	}
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

// PublishMsgAsync is PublishAsync for a prepared message. A publish whose
// ack never comes ends as the JetStream's documentation says: at the ack
// timeout or when the connection closes.
func (j *JetStream) PublishMsgAsync(ctx context.Context, m *natsgo.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	ctx, op := j.startSend(ctx, m)
	if j.pending != nil && op.Inert() {
		// Nothing to end at the ack (an unsampled message, no metrics):
		// nothing to keep for it either.
		f, err := j.JetStream.PublishMsgAsync(m, opts...)
		if err != nil {
			return nil, fmt.Errorf("nats: JetStream async publish to %q: %w", m.Subject, err)
		}
		return f, nil
	}
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
	tf := &pubAckFuture{inner: f}
	j.watch.begin()
	go j.relay(ctx, op, m.Subject, f, tf, j.watch.deadline(j.ackTimeout))
	return tf, nil
}

// relay waits for f's outcome, bounded by the ack deadline and the
// connection's close, ends the span with it and hands it on to tf.
func (j *JetStream) relay(ctx context.Context, op msgtrace.Op, subj string, f jetstream.PubAckFuture, tf *pubAckFuture, deadline <-chan struct{}) {
	defer j.watch.end()
	var ack *jetstream.PubAck
	var err, gaveUp error
	select {
	case ack = <-f.Ok():
	case err = <-f.Err():
	case <-deadline:
		gaveUp = fmt.Errorf("no PubAck within %v: %w", j.ackTimeout, jetstream.ErrAsyncPublishTimeout)
	case <-j.watch.closed:
		gaveUp = fmt.Errorf("no PubAck before the connection closed: %w", natsgo.ErrConnectionClosed)
	}
	if gaveUp != nil {
		// An outcome that arrived together with the timeout or the close
		// wins over giving up.
		select {
		case ack = <-f.Ok():
		case err = <-f.Err():
		default:
			err = gaveUp
		}
	}
	if err != nil {
		op.End(ctx, fmt.Errorf("nats: JetStream async publish to %q: %w", subj, err))
	} else {
		setAck(op.Span, ack)
		op.End(ctx, nil)
	}
	tf.settle(ack, err)
}

// pubAckFuture is the future WrapJetStream hands out, told by the relay
// once the span has ended. Like nats.go's own, it makes its channels when
// first asked for them: a publisher that waits with PublishAsyncComplete
// and never reads its futures pays for none.
type pubAckFuture struct {
	inner jetstream.PubAckFuture

	mu   sync.Mutex
	ack  *jetstream.PubAck
	err  error
	ok   chan *jetstream.PubAck
	errc chan error
}

// settle records the outcome and hands it to the channel asked for so far.
func (f *pubAckFuture) settle(ack *jetstream.PubAck, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ack, f.err = ack, err
	if err == nil && f.ok != nil {
		f.ok <- ack
	}
	if err != nil && f.errc != nil {
		f.errc <- err
	}
}

func (f *pubAckFuture) Ok() <-chan *jetstream.PubAck {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ok == nil {
		f.ok = make(chan *jetstream.PubAck, 1)
		if f.ack != nil && f.err == nil {
			f.ok <- f.ack
		}
	}
	return f.ok
}

func (f *pubAckFuture) Err() <-chan error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.errc == nil {
		f.errc = make(chan error, 1)
		if f.err != nil {
			f.errc <- f.err
		}
	}
	return f.errc
}

func (f *pubAckFuture) Msg() *natsgo.Msg { return f.inner.Msg() }
