package nats

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Conn is a core NATS connection whose publishes, subscriptions and
// requests are traced. It embeds the *nats.Conn, so everything the wrapper
// does not trace (Flush, Drain, Close, status) is called as usual.
type Conn struct {
	*natsgo.Conn
	t    *msgtrace.Tracer
	host string
	port int
}

// MsgHandler handles one core NATS message. ctx carries the message's
// process span, baggage and session, and nothing of any other message.
type MsgHandler func(ctx context.Context, msg *natsgo.Msg)

// Wrap traces nc. It reads WithTracerProvider, WithMeterProvider,
// WithPropagators, WithTrust, WithParentPolicy, WithConcurrency (workers of
// ChanSubscribe) and WithLogger.
func Wrap(nc *natsgo.Conn, opts ...tracebridge.Option) *Conn {
	c := &Conn{Conn: nc, t: msgtrace.New("nats", opts)}
	c.host, c.port = serverOf(nc)
	return c
}

// serverOf reads server.address and server.port once: the connection may
// later reconnect elsewhere, but resolving it on every message would cost
// a lock and an allocation on the hot path.
func serverOf(nc *natsgo.Conn) (string, int) {
	if nc == nil {
		return "", 0
	}
	u, err := url.Parse(nc.ConnectedUrl())
	if err != nil {
		return "", 0
	}
	port, _ := strconv.Atoi(u.Port())
	return u.Hostname(), port
}

func (c *Conn) describe(subject string, size int) msgtrace.Message {
	return msgtrace.Message{Destination: subject, BodySize: size, ServerAddress: c.host, ServerPort: c.port}
}

// Publish publishes data to subj in a PRODUCER "send" span whose context
// travels in the message headers.
func (c *Conn) Publish(ctx context.Context, subj string, data []byte) error {
	if c.Conn == nil || !c.Conn.HeadersSupported() {
		return c.PublishMsg(ctx, &natsgo.Msg{Subject: subj, Data: data})
	}
	// The message never leaves this call and nats.go encodes its headers
	// into its own buffer before PublishMsg returns, so the header map and
	// value slab can be reused: a fresh map costs two allocations.
	in := injectors.Get().(*injector)
	err := c.publish(ctx, &natsgo.Msg{Subject: subj, Data: data, Header: natsgo.Header(in.h)}, in)
	in.reset()
	injectors.Put(in)
	return err
}

// PublishMsg publishes m in a PRODUCER "send" span and writes the journey
// into m.Header (creating it if nil). A message that already carries a
// valid traceparent is forwarded: its creation context is kept and the
// send span links to it. On a connection without header support the
// message goes out without headers and only the send span records it.
func (c *Conn) PublishMsg(ctx context.Context, m *natsgo.Msg) error {
	return c.publish(ctx, m, headerCarrier(c.Conn, m))
}

func (c *Conn) publish(ctx context.Context, m *natsgo.Msg, hc propagation.TextMapCarrier) error {
	ctx, op := c.t.StartSend(ctx, hc, c.describe(m.Subject, len(m.Data)))
	err := c.Conn.PublishMsg(m)
	if err != nil {
		err = fmt.Errorf("nats: publish to %q: %w", m.Subject, err)
	}
	op.End(ctx, err)
	return err
}

// discard is the carrier for connections that cannot send headers.
type discard struct{}

func (discard) Get(string) string  { return "" }
func (discard) Set(string, string) {}
func (discard) Keys() []string     { return nil }

// headerCarrier returns where to inject m's journey: the message's own
// headers, or nowhere when the server refuses headers (publishing them
// would fail the message, and tracing must never do that).
func headerCarrier(nc *natsgo.Conn, m *natsgo.Msg) propagation.TextMapCarrier {
	if nc != nil && !nc.HeadersSupported() {
		return discard{}
	}
	if m.Header == nil {
		m.Header = make(natsgo.Header, 4)
	}
	return &injector{h: HeaderCarrier(m.Header)}
}

// Request sends a request in a CLIENT "request" span and waits up to
// timeout for the reply. The responder's process span is a child of it,
// and when the reply carries the responder's context (see Respond) the
// span links to it.
func (c *Conn) Request(ctx context.Context, subj string, data []byte, timeout time.Duration) (*natsgo.Msg, error) {
	if c.Conn == nil || !c.Conn.HeadersSupported() {
		return c.RequestMsg(ctx, &natsgo.Msg{Subject: subj, Data: data}, timeout)
	}
	// As in Publish: nats.go encodes the request's headers before sending
	// it and keeps nothing of the message, so the header map is reused.
	in := injectors.Get().(*injector)
	reply, err := c.requestMsg(ctx, &natsgo.Msg{Subject: subj, Data: data, Header: natsgo.Header(in.h)}, in, timeout)
	in.reset()
	injectors.Put(in)
	return reply, err
}

// RequestMsg is Request for a prepared message; the journey is written into
// m.Header. ctx's cancellation also ends the wait.
func (c *Conn) RequestMsg(ctx context.Context, m *natsgo.Msg, timeout time.Duration) (*natsgo.Msg, error) {
	return c.requestMsg(ctx, m, headerCarrier(c.Conn, m), timeout)
}

func (c *Conn) requestMsg(ctx context.Context, m *natsgo.Msg, hc propagation.TextMapCarrier, timeout time.Duration) (*natsgo.Msg, error) {
	ctx, op := c.t.StartClient(ctx, hc, "request", c.describe(m.Subject, len(m.Data)))
	reply, err := c.request(ctx, m, timeout)
	if err != nil {
		err = fmt.Errorf("nats: request to %q: %w", m.Subject, err)
	} else if sc, ok := carrier.ParseTraceparent(HeaderCarrier(reply.Header).Get(c.t.Carrier().Names().Traceparent)); ok {
		op.Span.AddLink(trace.Link{SpanContext: sc,
			Attributes: []attribute.KeyValue{msgtrace.LinkTypeKey.String(msgtrace.LinkReply)}})
	}
	op.End(ctx, err)
	return reply, err
}

// request waits up to timeout for m's reply, or until ctx ends. A context
// that can never end (no Done channel, as under context.Background) needs
// no context of its own for the timeout: nats.go's timed RequestMsg takes a
// pooled timer, where WithTimeout costs a context, a channel and a timer
// per request. Its timeout error is reported as the context's would be,
// so both ways fail alike.
func (c *Conn) request(ctx context.Context, m *natsgo.Msg, timeout time.Duration) (*natsgo.Msg, error) {
	if ctx.Done() == nil && timeout > 0 {
		reply, err := c.Conn.RequestMsg(m, timeout)
		if errors.Is(err, natsgo.ErrTimeout) {
			err = context.DeadlineExceeded
		}
		return reply, err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return c.Conn.RequestMsgWithContext(rctx, m)
}

// Respond replies to req with data and carries ctx's span (the responder's
// process span, when ctx is the handler's) back to the requester, whose
// request span links to it.
func (c *Conn) Respond(ctx context.Context, req *natsgo.Msg, data []byte) error {
	return c.RespondMsg(ctx, req, &natsgo.Msg{Data: data})
}

// RespondMsg is Respond for a prepared reply; its subject is set to req's
// reply subject.
func (c *Conn) RespondMsg(ctx context.Context, req, reply *natsgo.Msg) error {
	c.t.Inject(ctx, headerCarrier(c.Conn, reply))
	if err := req.RespondMsg(reply); err != nil {
		return fmt.Errorf("nats: respond to %q: %w", req.Subject, err)
	}
	return nil
}

// Subscribe runs h for every message on subj, each in a CONSUMER "process"
// span. A wildcard subject becomes messaging.destination.template and the
// span name, keeping names low-cardinality.
func (c *Conn) Subscribe(subj string, h MsgHandler) (*natsgo.Subscription, error) {
	sub, err := c.Conn.Subscribe(subj, c.callback(context.Background(), subj, "", h))
	if err != nil {
		return nil, fmt.Errorf("nats: subscribe %q: %w", subj, err)
	}
	return sub, nil
}

// QueueSubscribe is Subscribe as a member of queue group queue, which is
// recorded as messaging.consumer.group.name.
func (c *Conn) QueueSubscribe(subj, queue string, h MsgHandler) (*natsgo.Subscription, error) {
	sub, err := c.Conn.QueueSubscribe(subj, queue, c.callback(context.Background(), subj, queue, h))
	if err != nil {
		return nil, fmt.Errorf("nats: queue subscribe %q group %q: %w", subj, queue, err)
	}
	return sub, nil
}

// ChanSubscribe delivers subj's messages into ch and runs h on them with
// WithConcurrency workers, so handlers run in parallel (a Subscribe callback
// runs one at a time). ctx is the handlers' base context. The workers stop
// after the message in hand when ctx ends or ch is closed; when the
// subscription closes (Unsubscribe, a finished Drain, the connection's
// Close) they first handle what ch already holds, since nothing more can
// arrive. Nothing of the subscription outlives the connection's Close but
// handlers still running: they are not interrupted.
func (c *Conn) ChanSubscribe(ctx context.Context, subj string, ch chan *natsgo.Msg, h MsgHandler) (*natsgo.Subscription, error) {
	return c.ChanQueueSubscribe(ctx, subj, "", ch, h)
}

// ChanQueueSubscribe is ChanSubscribe as a member of queue group queue.
func (c *Conn) ChanQueueSubscribe(ctx context.Context, subj, queue string, ch chan *natsgo.Msg, h MsgHandler) (*natsgo.Subscription, error) {
	var sub *natsgo.Subscription
	var err error
	if queue == "" {
		sub, err = c.Conn.ChanSubscribe(subj, ch)
	} else {
		sub, err = c.Conn.ChanQueueSubscribe(subj, queue, ch)
	}
	if err != nil {
		return nil, fmt.Errorf("nats: chan subscribe %q group %q: %w", subj, queue, err)
	}
	stop := c.watchSub(ctx, sub)
	run := c.callback(ctx, subj, queue, h)
	for range c.t.Concurrency {
		go func() {
			for {
				select {
				case <-stop:
					if ctx.Err() == nil {
						drain(ch, run)
					}
					return
				case m, ok := <-ch:
					if !ok {
						return
					}
					run(m)
				}
			}
		}()
	}
	return sub, nil
}

// watchSub returns a channel closed when ctx ends or sub closes. nats.go
// tells a subscription's status listeners of an Unsubscribe or Drain but
// not of the connection's Close, so the connection is watched too.
func (c *Conn) watchSub(ctx context.Context, sub *natsgo.Subscription) <-chan struct{} {
	stop := make(chan struct{})
	subClosed := sub.StatusChanged(natsgo.SubscriptionClosed)
	connClosed := c.Conn.StatusChanged(natsgo.CLOSED)
	go func() {
		defer close(stop)
		defer c.Conn.RemoveStatusListener(connClosed)
		if c.Conn.IsClosed() { // closed before the listener was registered
			return
		}
		select {
		case <-ctx.Done():
		case <-subClosed:
		case <-connClosed:
		}
	}()
	return stop
}

// drain handles the messages ch holds, without waiting for more.
func drain(ch chan *natsgo.Msg, run natsgo.MsgHandler) {
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				return
			}
			run(m)
		default:
			return
		}
	}
}

func (c *Conn) callback(base context.Context, subj, queue string, h MsgHandler) natsgo.MsgHandler {
	tmpl := ""
	if isWildcard(subj) {
		tmpl = subj
	}
	return func(m *natsgo.Msg) {
		d := msgtrace.Delivery{Message: c.describe(m.Subject, len(m.Data)), Carrier: readCarrier(m.Header)}
		d.DestinationTemplate, d.ConsumerGroup = tmpl, queue
		ctx, p := c.t.StartProcess(base, d)
		err := msgtrace.Call(func() error { h(ctx, m); return nil })
		if err != nil {
			// Core NATS has no redelivery: the panic is recorded as final
			// and logged, and the subscription keeps running.
			c.t.Logger.ErrorContext(ctx, "tracebridge: NATS handler panicked", "subject", m.Subject, "error", err)
		}
		p.End(ctx, err, err != nil)
	}
}

// isWildcard reports whether subj has a * or > token.
func isWildcard(subj string) bool {
	for tok := range strings.SplitSeq(subj, ".") {
		if tok == "*" || tok == ">" {
			return true
		}
	}
	return false
}
