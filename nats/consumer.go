package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Handler handles one JetStream message. Returning nil acks it; an error
// naks it with backoff, or moves it to the dead-letter subject when it is
// permanent (tracebridge.Permanent) or the last delivery. The handler must
// not settle the message itself.
type Handler func(ctx context.Context, msg jetstream.Msg) error

// BatchHandler handles a fetched batch as a whole. Its error applies to
// every message of the batch.
type BatchHandler func(ctx context.Context, msgs []jetstream.Msg) error

// Consumer runs handlers for a JetStream pull consumer, one CONSUMER
// "process" span per delivery attempt. It embeds the jetstream.Consumer, so
// Info and Next stay available; pass messages from Next to Handle.
type Consumer struct {
	jetstream.Consumer
	js    jetstream.JetStream
	t     *msgtrace.Tracer
	dest  string // batch spans' destination: the filter subject or stream
	group string
	ops   msgtrace.RedeliveryOps
	host  string
	port  int
}

// NewConsumer traces cons. js publishes dead letters; it may be nil without
// WithDeadLetter. It reads WithTracerProvider, WithMeterProvider,
// WithPropagators, WithTrust, WithParentPolicy, WithRetry (backoff, and the
// attempt count when the consumer has no MaxDeliver), WithDeadLetter,
// WithConcurrency, WithErrorOnEveryAttempt, WithSettleSpans and WithLogger.
//
// The consumer's MaxDeliver, when set, is the attempt limit: JetStream stops
// redelivering there whatever the client wants, so the last delivery is
// the one that must reach the dead-letter subject.
func NewConsumer(js jetstream.JetStream, cons jetstream.Consumer, opts ...tracebridge.Option) *Consumer {
	c := &Consumer{Consumer: cons, js: js, t: msgtrace.New("nats", opts)}
	c.ops = msgtrace.RedeliveryOps{Ack: "ack", Redeliver: "nak", GiveUp: "term", DeadLetter: c.t.DeadLetter != ""}
	if info := cons.CachedInfo(); info != nil {
		c.group = info.Name
		c.dest = info.Stream
		if info.Config.FilterSubject != "" {
			c.dest = info.Config.FilterSubject
		}
		if info.Config.MaxDeliver > 0 {
			c.ops.Limit = info.Config.MaxDeliver
		}
	}
	if js != nil {
		c.host, c.port = serverOf(js.Conn())
	}
	return c
}

// Consume runs h for each message, WithConcurrency at a time. Stop or Drain
// the returned context as usual; its Closed channel closes once the
// subscription is closed and every running handler has returned. Running
// handlers are not interrupted; a message whose handler has not returned
// is not acked, so if the connection is gone by then JetStream delivers it
// again after AckWait. Retries wait on the server (NakWithDelay), so no
// backoff timer of the consumer outlives the stop.
func (c *Consumer) Consume(h Handler, opts ...jetstream.PullConsumeOpt) (jetstream.ConsumeContext, error) {
	w := c.workers(context.Background(), h)
	cc, err := c.Consumer.Consume(w.run, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats: consume from %q: %w", c.group, err)
	}
	tc := &consumeContext{ConsumeContext: cc, closed: make(chan struct{})}
	go func() {
		<-cc.Closed()
		w.wait()
		close(tc.closed)
	}()
	return tc, nil
}

type consumeContext struct {
	jetstream.ConsumeContext
	closed chan struct{}
}

func (c *consumeContext) Closed() <-chan struct{} { return c.closed }

// Messages iterates the consumer and runs h for each message until ctx
// ends, returning ctx's error, or the iterator fails. Running handlers
// finish first; they do not see ctx's cancellation.
func (c *Consumer) Messages(ctx context.Context, h Handler, opts ...jetstream.PullMessagesOpt) error {
	it, err := c.Consumer.Messages(opts...)
	if err != nil {
		return fmt.Errorf("nats: messages from %q: %w", c.group, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	w := c.workers(msgtrace.Detach(ctx), h)
	defer w.wait()
	for {
		m, err := it.Next()
		if err != nil {
			it.Stop()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("nats: next message from %q: %w", c.group, err)
		}
		w.run(m)
	}
}

// Fetch fetches up to batch messages and runs h for each, WithConcurrency
// at a time, returning once all are settled. ctx is the handlers' base
// context; bound the wait with jetstream.FetchMaxWait.
func (c *Consumer) Fetch(ctx context.Context, batch int, h Handler, opts ...jetstream.FetchOpt) error {
	b, err := c.Consumer.Fetch(batch, opts...)
	if err != nil {
		return fmt.Errorf("nats: fetch %d from %q: %w", batch, c.group, err)
	}
	w := c.workers(ctx, h)
	for m := range b.Messages() {
		w.run(m)
	}
	w.wait()
	if err := b.Error(); err != nil && !errors.Is(err, natsgo.ErrTimeout) {
		return fmt.Errorf("nats: fetch %d from %q: %w", batch, c.group, err)
	}
	return nil
}

// FetchBatch fetches up to batch messages and runs h once for all of them
// in one "process" span that links to each message's creation context.
// Each message's own journey is available to h through Extract. On error
// every message is naked with backoff, or dead-lettered when it was
// permanent or its last delivery.
func (c *Consumer) FetchBatch(ctx context.Context, batch int, h BatchHandler, opts ...jetstream.FetchOpt) error {
	b, err := c.Consumer.Fetch(batch, opts...)
	if err != nil {
		return fmt.Errorf("nats: fetch %d from %q: %w", batch, c.group, err)
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	if err := b.Error(); err != nil && !errors.Is(err, natsgo.ErrTimeout) && len(msgs) == 0 {
		return fmt.Errorf("nats: fetch %d from %q: %w", batch, c.group, err)
	}
	if len(msgs) == 0 {
		return nil
	}
	carriers := make([]propagation.TextMapCarrier, len(msgs))
	size := 0
	for i, m := range msgs {
		carriers[i] = readCarrier(m.Headers())
		size += len(m.Data())
	}
	desc := msgtrace.Message{Destination: c.dest, BodySize: size, ConsumerGroup: c.group, ServerAddress: c.host, ServerPort: c.port}
	bctx, p := c.t.StartBatchProcess(ctx, desc, carriers, 1, trace.SpanContext{})
	herr := msgtrace.Call(func() error { return h(bctx, msgs) })
	anyFinal := false
	for _, m := range msgs {
		if herr == nil {
			p.Settle(bctx, "ack", m.Ack())
			continue
		}
		attempt := 1
		if md, err := m.Metadata(); err == nil {
			attempt = int(md.NumDelivered)
		}
		final, delay := c.t.RetryDecision(attempt, herr, c.ops.Limit)
		if !final {
			p.Settle(bctx, "nak", m.NakWithDelay(delay))
			continue
		}
		anyFinal = true
		if c.t.DeadLetter != "" {
			dl := carrier.DeadLetter{Reason: herr.Error(), Attempts: attempt, Source: m.Subject()}
			if derr := c.deadLetter(bctx, m, p.SpanContext(), dl); derr != nil {
				p.Settle(bctx, "nak", m.NakWithDelay(c.t.Backoff.Delay(attempt)))
				continue
			}
		}
		p.Settle(bctx, "term", m.Term())
	}
	p.End(bctx, herr, anyFinal)
	return nil
}

// Extract returns ctx with msg's journey (trace parent, baggage, session),
// for a batch handler that works on one message of its batch.
func (c *Consumer) Extract(ctx context.Context, msg jetstream.Msg) context.Context {
	return c.t.Extract(ctx, readCarrier(msg.Headers()))
}

// Handle runs h for one message (from Next, say) in its process span and
// settles it as Consume would. The returned error is the handler's, or the
// settle's when that failed.
func (c *Consumer) Handle(ctx context.Context, msg jetstream.Msg, h Handler) error {
	return c.t.DeliverAttempt(ctx, c.delivery(msg), &attempt{c: c, msg: msg, h: h}, &c.ops)
}

// attempt is one delivery of msg as msgtrace settles it.
type attempt struct {
	c   *Consumer
	msg jetstream.Msg
	h   Handler
}

func (a *attempt) Handle(ctx context.Context) error { return a.h(ctx, a.msg) }
func (a *attempt) Ack(context.Context) error        { return a.msg.Ack() }
func (a *attempt) Redeliver(_ context.Context, delay time.Duration) error {
	return a.msg.NakWithDelay(delay)
}
func (a *attempt) GiveUp(context.Context, error) error { return a.msg.Term() }
func (a *attempt) DeadLetter(ctx context.Context, last trace.SpanContext, dl carrier.DeadLetter) error {
	return a.c.deadLetter(ctx, a.msg, last, dl)
}

func (c *Consumer) delivery(msg jetstream.Msg) msgtrace.Delivery {
	h := msg.Headers()
	d := msgtrace.Delivery{
		Message: msgtrace.Message{Destination: msg.Subject(), BodySize: len(msg.Data()), ConsumerGroup: c.group,
			ServerAddress: c.host, ServerPort: c.port},
		Carrier: readCarrier(h),
	}
	if h != nil {
		d.ID = h.Get(jetstream.MsgIDHeader)
	}
	if md, err := msg.Metadata(); err == nil {
		d.Deliveries = int(md.NumDelivered)
		d.Identity = (*streamPos)(md)
		d.PublishedAt = md.Timestamp
		d.Lazy = (*streamPos)(md)
	}
	return d
}

// RepublishHeader copies a JetStream message's headers for publishing it
// again elsewhere (a dead letter): the journey and the application's
// headers stay, the server's Nats-* headers go, because an expected-stream
// or expected-sequence header would fail the publish and a message ID would
// be deduplicated against unrelated messages. The copy has room for the
// dead-letter headers.
func RepublishHeader(orig natsgo.Header) natsgo.Header {
	hdr := make(natsgo.Header, len(orig)+4)
	for k, v := range orig {
		if len(k) >= 5 && strings.EqualFold(k[:5], "nats-") {
			continue
		}
		hdr[k] = append([]string(nil), v...)
	}
	return hdr
}

// deadLetter publishes msg to the dead-letter subject with its original
// headers (so it keeps its creation context: same journey), retry-previous
// naming the attempt that gave it up, and the dead-letter-* headers, and
// waits for the PubAck. The server's own Nats-* headers are left out: an
// expected-stream or expected-sequence header would make the publish fail,
// and a message ID would be deduplicated against unrelated messages.
func (c *Consumer) deadLetter(ctx context.Context, msg jetstream.Msg, last trace.SpanContext, dl carrier.DeadLetter) error {
	if c.js == nil {
		return errors.New("nats: WithDeadLetter needs the JetStream passed to NewConsumer")
	}
	hdr := RepublishHeader(msg.Headers())
	hc := HeaderCarrier(hdr)
	prop := c.t.Carrier()
	prop.InjectDeadLetter(hc, dl)
	if last.IsValid() {
		hc.Set(prop.Names().RetryPrevious, carrier.FormatTraceparent(last))
	}
	dm := &natsgo.Msg{Subject: c.t.DeadLetter, Data: msg.Data(), Header: hdr}
	sctx, op := c.t.StartSend(ctx, hc, msgtrace.Message{Destination: dm.Subject, BodySize: len(dm.Data),
		ServerAddress: c.host, ServerPort: c.port})
	ack, err := c.js.PublishMsg(sctx, dm)
	if err != nil {
		err = fmt.Errorf("nats: dead-letter publish of %q to %q: %w", msg.Subject(), dm.Subject, err)
	} else {
		setAck(op.Span, ack)
	}
	op.End(sctx, err)
	return err
}

// workers runs handlers on up to Concurrency goroutines; with 1 it runs
// them inline, keeping JetStream's own ordering and adding no goroutine.
type workers struct {
	c    *Consumer
	base context.Context
	h    Handler
	sem  chan struct{}
	wg   sync.WaitGroup
}

func (c *Consumer) workers(base context.Context, h Handler) *workers {
	w := &workers{c: c, base: base, h: h}
	if c.t.Concurrency > 1 {
		w.sem = make(chan struct{}, c.t.Concurrency)
	}
	return w
}

func (w *workers) run(m jetstream.Msg) {
	if w.sem == nil {
		w.handle(m)
		return
	}
	w.sem <- struct{}{}
	w.wg.Add(1)
	go func() {
		defer func() { <-w.sem; w.wg.Done() }()
		w.handle(m)
	}()
}

func (w *workers) handle(m jetstream.Msg) {
	// The error is on the span and settled; a consumer loop has no one to
	// return it to.
	_ = w.c.Handle(w.base, m, w.h)
}

func (w *workers) wait() { w.wg.Wait() }

// streamPos is a JetStream message's position: attributes of a recording
// span, and the message's identity. The metadata is already on the heap, so
// carrying it costs nothing, and neither is built unless asked for.
type streamPos jetstream.MsgMetadata

func (md *streamPos) String() string {
	return md.Stream + "/" + strconv.FormatUint(md.Sequence.Stream, 10)
}

func (md *streamPos) AppendAttrs(dst []attribute.KeyValue) []attribute.KeyValue {
	return append(dst, StreamKey.String(md.Stream), StreamSequenceKey.Int64(int64(md.Sequence.Stream)),
		DeliveredKey.Int64(int64(md.NumDelivered)))
}
