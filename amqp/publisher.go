package amqp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/amqpframe"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Publisher publishes messages with one PRODUCER "send" span each and the
// journey (trace context, baggage, session) in the message headers.
//
// With tracebridge.WithConfirms the publisher puts its channel into
// confirm mode and every publish waits for the broker: the span ends on the
// broker's ack or nack, and a nack, a returned mandatory message or a
// channel that closes before the answer is an error on the span and to the
// caller. A Publisher is safe for concurrent use.
//
// A message's properties and header table travel in one frame, which the
// connection's negotiated frame_max bounds (131,072 bytes by default on
// RabbitMQ); amqp091 would send a larger one anyway, and the broker then
// closes the whole connection, losing the message without an error when
// there are no confirms. The Publisher measures every message before it
// sends it, exactly and without encoding it. When the headers it added
// (baggage, tracestate, session-id: never the traceparent) are what does
// not fit, it drops them, largest first, and sends the message: the send
// span gets a tracebridge.headers_dropped event naming them, and the first
// drop is logged. When the caller's own properties and headers do not
// fit, the publish fails with an error wrapping ErrFrameTooLarge that names
// the size and the limit, nothing is sent, and the connection stays open.
type Publisher struct {
	t    *msgtrace.Tracer
	addr string
	port int

	// fixed is the wrapped channel of NewPublisher; nil for DialPublisher.
	fixed *pubChannel

	// The reconnecting state of DialPublisher.
	mu     sync.Mutex
	cur    *pubChannel   // nil while disconnected
	ready  chan struct{} // closed when cur is set again
	link   *link
	cancel context.CancelFunc
	done   chan struct{}

	dropLogged atomic.Bool // fit has logged a drop
}

// NewPublisher wraps ch, a channel you already have. It reads
// WithTracerProvider, WithMeterProvider, WithPropagators and WithConfirms.
// The publisher does not reconnect: once ch is closed, publishes fail with
// ErrDisconnected. Use DialPublisher for a publisher that reconnects.
//
// NewPublisher changes ch in ways AMQP cannot undo, for as long as ch is
// open: it registers a ch.NotifyReturn listener, served by a goroutine that
// ends when ch closes, to match returned mandatory messages to the publish
// they answer; and with WithConfirms it puts ch into confirm mode
// (ch.Confirm). Listeners of your own still get every return and confirm,
// because amqp091 hands each to every listener. Publish on ch through the
// Publisher, or give the Publisher a channel of its own.
func NewPublisher(ch *amqp091.Channel, opts ...tracebridge.Option) (*Publisher, error) {
	p := &Publisher{t: msgtrace.New("rabbitmq", opts)}
	if err := amqpframe.CheckNames(p.t.Carrier().Names()); err != nil {
		return nil, fmt.Errorf("amqp: new publisher: %w", err)
	}
	pc, err := newPubChannel(ch, p.t.Confirms, p.t.Carrier().Names().Traceparent, channelFrameMax(ch))
	if err != nil {
		return nil, err
	}
	p.fixed = pc
	return p, nil
}

// DialPublisher connects to url and returns a Publisher that owns its
// connection and reconnects with backoff when the connection or channel
// closes. While it is disconnected a publish fails at once with
// ErrDisconnected, or waits up to WithReconnectWait for the connection to
// come back. It reads the options NewPublisher reads and WithReconnectWait.
// Close it to stop reconnecting and close the connection.
func DialPublisher(url string, opts ...tracebridge.Option) (*Publisher, error) {
	p := &Publisher{t: msgtrace.New("rabbitmq", opts), link: newLink(url), ready: make(chan struct{})}
	p.addr, p.port = p.link.addr, p.link.port
	if err := amqpframe.CheckNames(p.t.Carrier().Names()); err != nil {
		return nil, fmt.Errorf("amqp: dial publisher: %w", err)
	}
	ch, frameMax, err := p.link.channel(context.Background())
	if err != nil {
		return nil, err
	}
	pc, err := newPubChannel(ch, p.t.Confirms, p.t.Carrier().Names().Traceparent, frameMax)
	if err != nil {
		p.link.close()
		return nil, err
	}
	p.cur = pc
	close(p.ready)
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go p.reconnect(ctx)
	return p, nil
}

// reconnect replaces the channel whenever it closes, until Close.
func (p *Publisher) reconnect(ctx context.Context) {
	defer close(p.done)
	for {
		p.mu.Lock()
		pc := p.cur
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-pc.closed:
		}
		p.mu.Lock()
		p.cur, p.ready = nil, make(chan struct{})
		p.mu.Unlock()
		var next *pubChannel
		err := msgtrace.Redial(ctx, reconnectBackoff, reconnectMin, func(ctx context.Context) error {
			ch, frameMax, err := p.link.channel(ctx)
			if err != nil {
				return err
			}
			next, err = newPubChannel(ch, p.t.Confirms, p.t.Carrier().Names().Traceparent, frameMax)
			return err
		}, func(n int, err error) {
			if n == 1 || n%10 == 0 {
				p.t.Logger.Warn("tracebridge: RabbitMQ publisher reconnecting", "attempt", n, "error", err)
			}
		})
		if err != nil {
			return
		}
		p.mu.Lock()
		p.cur = next
		close(p.ready)
		p.mu.Unlock()
	}
}

// Close stops reconnecting and closes the connection of a Publisher made by
// DialPublisher; a redial in progress, even one stuck in the AMQP
// handshake, is abandoned. Confirmations still pending then end with
// ErrConfirmLost (the message may or may not have reached the queue), and
// publishes after Close fail with ErrDisconnected. Nothing the Publisher
// started outlives Close. It does not close a channel given to
// NewPublisher.
func (p *Publisher) Close() error {
	if p.link == nil {
		return nil
	}
	p.cancel()
	<-p.done
	return p.link.close()
}

// channel returns the open channel, waiting for a reconnect when allowed.
func (p *Publisher) channel(ctx context.Context) (*pubChannel, error) {
	if p.fixed != nil {
		if p.fixed.ch.IsClosed() {
			return nil, ErrDisconnected
		}
		return p.fixed, nil
	}
	p.mu.Lock()
	pc, ready := p.cur, p.ready
	p.mu.Unlock()
	if pc != nil && !pc.ch.IsClosed() {
		return pc, nil
	}
	if p.t.ReconnectWait <= 0 {
		return nil, ErrDisconnected
	}
	timer := time.NewTimer(p.t.ReconnectWait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrDisconnected, ctx.Err())
		case <-timer.C:
			return nil, fmt.Errorf("%w (waited %s for reconnect)", ErrDisconnected, p.t.ReconnectWait)
		case <-p.done:
			return nil, fmt.Errorf("%w: publisher closed", ErrDisconnected)
		case <-ready:
		}
		p.mu.Lock()
		pc, ready = p.cur, p.ready
		p.mu.Unlock()
		if pc != nil && !pc.ch.IsClosed() {
			return pc, nil
		}
	}
}

// PublishWithContext publishes msg like amqp091's Channel.PublishWithContext,
// inside a "send" span whose context becomes the message's creation
// context. msg.Headers is copied, never modified, so one Publishing can be
// sent concurrently. A message that already carries a valid traceparent is
// forwarded: it keeps it, and the span links to it. With WithConfirms it
// returns once the broker has confirmed the message.
func (p *Publisher) PublishWithContext(ctx context.Context, exchange, key string, mandatory, immediate bool, msg amqp091.Publishing) error {
	// The Confirmation lives only for this call, so it is not allocated:
	// without confirms there is no answer to wait for, and with them Wait
	// is called here.
	var c Confirmation
	if err := p.publish(ctx, &c, exchange, key, mandatory, immediate, msg); err != nil || c.dc == nil {
		return err
	}
	if err := c.await(ctx); err != nil {
		c.end(err)
		if c.mandatory {
			go c.pc.releaseWhenAnswered(c.dc, c.key)
		}
		return c.err
	}
	var ret *amqp091.Return
	if c.mandatory {
		ret = c.pc.returned(c.key) // no one else has c: once, without a sync.Once
	}
	c.end(c.verdict(ret))
	return c.err
}

// Confirmation is a publish whose broker confirmation is still to come.
// Wait for it exactly once or more; the send span ends at the first Wait
// that sees the answer.
type Confirmation struct {
	p         *Publisher
	pc        *pubChannel
	op        msgtrace.Op
	ctx       context.Context // the span's context, for its metrics
	dc        *amqp091.DeferredConfirmation
	key       returnKey
	mandatory bool
	// exchange and routingKey name the publish in errors.
	exchange, routingKey string

	once sync.Once // ends the span, with err
	err  error
	// retOnce looks up the broker's return once, for every Wait: a
	// lookup takes one of the returns recorded for c.key, and c.key is
	// not unique (a forwarded message keeps its traceparent), so a second
	// lookup would take another publish's return, and a concurrent Wait
	// that found none would report a returned message as delivered.
	retOnce sync.Once
	ret     *amqp091.Return
}

// PublishWithDeferredConfirm publishes msg like PublishWithContext but does
// not wait for the broker: Wait on the Confirmation ends the span with the
// broker's answer. Without WithConfirms the Confirmation is already done.
func (p *Publisher) PublishWithDeferredConfirm(ctx context.Context, exchange, key string, mandatory, immediate bool, msg amqp091.Publishing) (*Confirmation, error) {
	c := new(Confirmation)
	if err := p.publish(ctx, c, exchange, key, mandatory, immediate, msg); err != nil {
		return nil, err
	}
	return c, nil
}

// publish sends msg with its send span into c. Without confirms, or when
// the publish fails, the span has ended when it returns; with confirms,
// c.Wait ends it. The header table amqp091 encodes is a pooled copy of
// msg.Headers (see pubHeaders), returned to the pool once amqp091 has
// encoded it.
func (p *Publisher) publish(ctx context.Context, c *Confirmation, exchange, key string, mandatory, immediate bool, msg amqp091.Publishing) error {
	user := msg.Headers
	ph := getPubHeaders(user)
	defer ph.put()
	msg.Headers = ph.h
	c.p, c.mandatory, c.exchange, c.routingKey = p, mandatory, exchange, key
	c.ctx, c.op = p.t.StartSend(ctx, ph, msgtrace.Message{Destination: destination(exchange, key), ID: msg.MessageId,
		BodySize: len(msg.Body), ServerAddress: p.addr, ServerPort: p.port, Attr: routingKeyAttr(key)})

	pc, err := p.channel(ctx)
	if err != nil {
		err = fmt.Errorf("amqp: publish to %s: %w", c.where(), err)
		c.end(err)
		return err
	}
	c.pc = pc
	if err := p.fit(c.op.Span, c.exchange, c.routingKey, &msg, user, pc.frameMax); err != nil {
		err = fmt.Errorf("amqp: publish to %s: %w", c.where(), err)
		c.end(err)
		return err
	}
	if !pc.confirms {
		err := pc.ch.PublishWithContext(ctx, exchange, key, mandatory, immediate, msg)
		c.end(p.publishErr(pc, c.exchange, c.routingKey, err))
		return c.err
	}
	if mandatory {
		c.key = newReturnKey(exchange, key, &msg, p.t.Carrier().Names().Traceparent)
		pc.expect(c.key)
	}
	c.dc, err = pc.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, mandatory, immediate, msg)
	if err != nil {
		if mandatory {
			pc.forget(c.key)
		}
		c.end(p.publishErr(pc, c.exchange, c.routingKey, err))
		return c.err
	}
	return nil
}

// destination is the messaging.destination.name of a publish.
func destination(exchange, key string) string {
	if exchange == "" {
		return key // the default exchange routes by queue name
	}
	return exchange
}

// fit makes msg's content header fit in one frame of frameMax bytes, the
// connection's frame_max: amqp091 would send a larger one, and the broker
// close the connection over it. When what the Publisher added to the
// caller's headers is what does not fit, that goes, largest first (with
// the default propagator: baggage, tracestate, session-id), but never the
// traceparent: tracing must not cost the caller the message. The send span
// records what went, in a tracebridge.headers_dropped event, and the first
// time a Publisher drops anything it logs a warning. When the caller's own
// properties and headers do not fit, nothing is sent and the error wraps
// ErrFrameTooLarge.
//
// fit also refuses, wrapping ErrShortStringTooLong, a message amqp091 would
// corrupt: an exchange, routing key, property or header key (at any depth)
// over 255 bytes, which amqp091 truncates to its length modulo 256 without
// an error. The same walk over the table finds them.
func (p *Publisher) fit(span trace.Span, exchange, key string, msg *amqp091.Publishing, user amqp091.Table, frameMax int) error {
	if err := amqpframe.ShortString("exchange", exchange); err != nil {
		return err
	}
	if err := amqpframe.ShortString("routing key", key); err != nil {
		return err
	}
	size, err := amqpframe.Size(msg)
	if err != nil || frameMax <= 0 || size <= frameMax {
		return err // the common case: one walk over the table, no allocation
	}
	tp := p.t.Carrier().Names().Traceparent
	var added []string
	for k := range msg.Headers {
		if _, ok := user[k]; !ok && k != tp {
			added = append(added, k)
		}
	}
	slices.SortFunc(added, func(a, b string) int {
		return cmp.Or(cmp.Compare(amqpframe.EntrySize(b, msg.Headers[b]), amqpframe.EntrySize(a, msg.Headers[a])), cmp.Compare(a, b))
	})
	dropped, err := amqpframe.Drop(msg, frameMax, added)
	if err != nil {
		return err
	}
	span.AddEvent("tracebridge.headers_dropped", trace.WithAttributes(
		droppedHeadersAttr.StringSlice(dropped), frameMaxAttr.Int(frameMax)))
	if !p.dropLogged.Swap(true) {
		p.t.Logger.Warn("tracebridge: RabbitMQ publisher dropped tracing headers to fit the message in one frame (logged once per publisher)",
			"dropped", dropped, "frame_max", frameMax, "exchange", exchange, "routing_key", key)
	}
	return nil
}

// Attributes of the tracebridge.headers_dropped event.
const (
	droppedHeadersAttr = attribute.Key("tracebridge.dropped_headers")
	frameMaxAttr       = attribute.Key("tracebridge.frame_max")
)

// defaultFrameMax is RabbitMQ's default frame_max, which channelFrameMax
// assumes when it cannot read the connection's.
const defaultFrameMax = 131072

// channelFrameMax returns the frame_max ch's connection negotiated.
// amqp091 keeps it in the exported Connection.Config.FrameSize, but a
// Channel has no exported way to its Connection, so it is read through
// reflection: read-only, no unsafe, and only once per channel. An amqp091
// whose Channel no longer has that field gets RabbitMQ's default, and
// TestNewPublisherFrameMaxIsTheConnections fails, so an upgrade that moved
// it cannot go unnoticed.
func channelFrameMax(ch *amqp091.Channel) int {
	if ch == nil {
		return defaultFrameMax
	}
	conn := reflect.ValueOf(ch).Elem().FieldByName("connection")
	if !conn.IsValid() || conn.Type() != reflect.TypeFor[*amqp091.Connection]() || conn.IsNil() {
		return defaultFrameMax
	}
	return int(conn.Elem().FieldByName("Config").FieldByName("FrameSize").Int())
}

func (p *Publisher) publishErr(pc *pubChannel, exchange, key string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, amqp091.ErrClosed) || pc.ch.IsClosed() {
		return fmt.Errorf("amqp: publish to %s: %w: %w", where(exchange, key), ErrDisconnected, err)
	}
	return fmt.Errorf("amqp: publish to %s: %w", where(exchange, key), err)
}

// where names a publish for an error. Only a failed publish needs it, so
// it is not formatted for every message.
func where(exchange, key string) string {
	return fmt.Sprintf("exchange %q routing key %q", exchange, key)
}

// where names the publish for an error.
func (c *Confirmation) where() string { return where(c.exchange, c.routingKey) }

// routingKeyAttr is the routing-key attribute of a send span; none for an
// empty key.
func routingKeyAttr(key string) attribute.KeyValue {
	if key == "" {
		return attribute.KeyValue{}
	}
	return semconv.MessagingRabbitMQDestinationRoutingKey(key)
}

// Done is closed when the broker has answered (or the channel closed).
func (c *Confirmation) Done() <-chan struct{} {
	if c.dc == nil {
		return closedChan
	}
	return c.dc.Done()
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Wait waits for the broker's answer or for ctx, ends the send span, and
// returns nil for an ack, an error wrapping ErrNacked for a nack, a
// *ReturnedError for a returned mandatory message, ErrConfirmLost when the
// channel closed first, or ctx's error. After ctx ends the span ends with
// ctx's error, and the message's fate is unknown.
func (c *Confirmation) Wait(ctx context.Context) error {
	if c.dc == nil {
		return c.err
	}
	if err := c.await(ctx); err != nil {
		c.once.Do(func() { c.end(err) })
		if c.mandatory {
			// The outcome is now c.err for every Wait, so no Wait needs
			// the return; the channel still expects it, and would keep
			// it for as long as it lives if the Confirmation is dropped.
			// The span ended first, so a Wait that sees retOnce done
			// without c.ret never decides the outcome.
			c.retOnce.Do(func() { go c.pc.releaseWhenAnswered(c.dc, c.key) })
		}
		return c.err
	}
	if c.mandatory {
		c.retOnce.Do(func() { c.ret = c.pc.returned(c.key) })
	}
	err := c.verdict(c.ret)
	c.once.Do(func() { c.end(err) })
	return c.err
}

// await waits for the broker's answer to c or for ctx, and returns ctx's
// error, wrapped, when ctx ended first.
func (c *Confirmation) await(ctx context.Context) error {
	select {
	case <-c.dc.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("amqp: publish to %s: waiting for confirm: %w", c.where(), ctx.Err())
	}
}

// verdict is the publish's error once the broker has answered (nil for an
// ack), given the return the broker sent for it, if any. It ends nothing.
func (c *Confirmation) verdict(ret *amqp091.Return) error {
	switch {
	case ret != nil:
		return &ReturnedError{Return: *ret}
	case c.dc.Acked():
		return nil
	case c.pc.ch.IsClosed():
		return fmt.Errorf("amqp: publish to %s: %w", c.where(), ErrConfirmLost)
	}
	return fmt.Errorf("amqp: publish to %s: %w", c.where(), ErrNacked)
}

// end records err as the publish's outcome and ends the send span. Only
// one goroutine may call it, once: publish, on a Confirmation no one else
// has yet; Wait, under c.once; or PublishWithContext, on its own. It is not
// behind a sync.Once itself because a Once (its mutex) would make every
// Confirmation escape to the heap, even PublishWithContext's, which is
// never shared.
func (c *Confirmation) end(err error) {
	c.err = err
	c.op.End(c.ctx, err)
}

// returnKey identifies a mandatory message well enough to match the
// broker's basic.return to the publish it answers; AMQP returns carry no
// delivery tag. Two publishes with the same key go to the same
// destination, so they are routable or unroutable alike and counting them
// is exact.
type returnKey struct {
	exchange, key, id, traceparent string
}

func newReturnKey(exchange, key string, msg *amqp091.Publishing, tp string) returnKey {
	return returnKey{exchange, key, msg.MessageId, Carrier(msg.Headers).Get(tp)}
}

// pubChannel is a channel with the bookkeeping that matches returned
// mandatory messages to their confirmations.
type pubChannel struct {
	ch       *amqp091.Channel
	confirms bool
	frameMax int // the connection's negotiated frame_max; 0 for none

	mu       sync.Mutex
	pending  map[returnKey]int
	returns  map[returnKey][]amqp091.Return
	syncReq  chan chan struct{}
	closed   chan struct{} // closed when the channel has closed
	traceKey string
}

func newPubChannel(ch *amqp091.Channel, confirms bool, traceKey string, frameMax int) (*pubChannel, error) {
	if confirms {
		if err := ch.Confirm(false); err != nil {
			_ = ch.Close()
			return nil, fmt.Errorf("amqp: enable publisher confirms: %w", err)
		}
	}
	pc := &pubChannel{ch: ch, confirms: confirms, frameMax: frameMax, pending: map[returnKey]int{},
		returns: map[returnKey][]amqp091.Return{}, syncReq: make(chan chan struct{}), closed: make(chan struct{}),
		traceKey: traceKey}
	// Unbuffered on purpose: the client's reader hands a return over before
	// it processes the ack that follows it, and the goroutine below records
	// the return before it answers a sync request, so a confirmation that
	// has arrived implies its return (if any) is visible after sync.
	rets := ch.NotifyReturn(make(chan amqp091.Return))
	go pc.collect(rets)
	return pc, nil
}

func (pc *pubChannel) collect(rets <-chan amqp091.Return) {
	defer close(pc.closed)
	for {
		select {
		case r, ok := <-rets:
			if !ok {
				return
			}
			k := returnKey{r.Exchange, r.RoutingKey, r.MessageId, Carrier(r.Headers).Get(pc.traceKey)}
			pc.mu.Lock()
			if pc.pending[k] > len(pc.returns[k]) {
				pc.returns[k] = append(pc.returns[k], r)
			}
			pc.mu.Unlock()
		case reply := <-pc.syncReq:
			close(reply)
		}
	}
}

func (pc *pubChannel) expect(k returnKey) {
	pc.mu.Lock()
	pc.pending[k]++
	pc.mu.Unlock()
}

func (pc *pubChannel) forget(k returnKey) {
	pc.mu.Lock()
	pc.release(k)
	pc.mu.Unlock()
}

func (pc *pubChannel) release(k returnKey) {
	if pc.pending[k]--; pc.pending[k] <= 0 {
		delete(pc.pending, k)
		delete(pc.returns, k)
	}
}

// releaseWhenAnswered looks up, and forgets, the return for k once the
// broker has answered dc or the channel has closed, for a publish no one
// waits for any more. It ends with the channel at the latest.
func (pc *pubChannel) releaseWhenAnswered(dc *amqp091.DeferredConfirmation, k returnKey) {
	select {
	case <-dc.Done():
	case <-pc.closed:
	}
	pc.returned(k)
}

// returned reports the return for k, if the broker sent one, once the
// confirmation for k has arrived.
func (pc *pubChannel) returned(k returnKey) *amqp091.Return {
	reply := make(chan struct{})
	select {
	case pc.syncReq <- reply:
		<-reply
	case <-pc.closed:
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	var r *amqp091.Return
	if rs := pc.returns[k]; len(rs) > 0 {
		r = &rs[0]
		pc.returns[k] = rs[1:]
	}
	pc.release(k)
	return r
}
