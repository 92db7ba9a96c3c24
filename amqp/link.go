package amqp

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Reconnect pacing: quick enough that a broker restart costs little more
// than the restart, capped so a long outage does not become a dial storm.
var (
	reconnectBackoff = msgtrace.Backoff{Initial: 200 * time.Millisecond, Max: 5 * time.Second}
	reconnectMin     = 50 * time.Millisecond
)

// dialTimeout bounds the TCP connect and the AMQP handshake, as amqp091's
// default dialer does.
const dialTimeout = 30 * time.Second

// link owns one connection and opens channels on it, dialing again when the
// connection has closed.
type link struct {
	url  string
	addr string
	port int

	mu   sync.Mutex
	conn *amqp091.Connection
	shut bool
}

func newLink(url string) *link {
	l := &link{url: url}
	if u, err := amqp091.ParseURI(url); err == nil {
		l.addr, l.port = u.Host, u.Port
	}
	return l
}

// redacted names the broker in errors without its password.
func (l *link) redacted() string {
	if l.addr == "" {
		return "(unparsable AMQP URL)"
	}
	return net.JoinHostPort(l.addr, strconv.Itoa(l.port))
}

// channel opens a channel, dialing first when there is no open connection,
// and reports the connection's negotiated frame_max. A dial, the TCP
// connect and the AMQP handshake alike, is abandoned when ctx ends, so a
// Close or a stopped Run never waits out the handshake timeout of a broker
// that accepts connections and says nothing.
func (l *link) channel(ctx context.Context) (*amqp091.Channel, int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shut {
		return nil, 0, fmt.Errorf("amqp: connection to %s: %w", l.redacted(), amqp091.ErrClosed)
	}
	if l.conn == nil || l.conn.IsClosed() {
		c, err := dial(ctx, l.url)
		if err != nil {
			return nil, 0, fmt.Errorf("amqp: dial %s: %w", l.redacted(), err)
		}
		l.conn = c
	}
	ch, err := l.conn.Channel()
	if err != nil {
		return nil, 0, fmt.Errorf("amqp: open channel on %s: %w", l.redacted(), err)
	}
	return ch, l.conn.Config.FrameSize, nil
}

// server names the broker for span attributes.
func (l *link) server() (string, int) { return l.addr, l.port }

// dial connects to url, giving up when ctx ends.
func dial(ctx context.Context, url string) (*amqp091.Connection, error) {
	var stop func() bool
	c, err := amqp091.DialConfig(url, amqp091.Config{
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Properties: amqp091.Table{"product": "tracebridge"},
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// amqp091 clears the deadline once the handshake is done.
			if err := conn.SetDeadline(time.Now().Add(dialTimeout)); err != nil {
				_ = conn.Close()
				return nil, err
			}
			// The handshake takes no context: closing the socket when ctx
			// ends is what abandons it.
			stop = context.AfterFunc(ctx, func() { _ = conn.Close() })
			return conn, nil
		},
	})
	if stop != nil && !stop() {
		// ctx ended during the handshake, and the socket is closed.
		if c != nil {
			_ = c.Close()
		}
		return nil, fmt.Errorf("handshake abandoned: %w", ctx.Err())
	}
	return c, err
}

// close closes the connection; channel fails afterwards.
func (l *link) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.shut = true
	if l.conn == nil || l.conn.IsClosed() {
		return nil
	}
	return l.conn.Close()
}
