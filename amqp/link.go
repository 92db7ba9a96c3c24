package amqp

import (
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

// channel opens a channel, dialing first when there is no open connection.
func (l *link) channel() (*amqp091.Channel, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shut {
		return nil, fmt.Errorf("amqp: connection to %s: %w", l.redacted(), amqp091.ErrClosed)
	}
	if l.conn == nil || l.conn.IsClosed() {
		c, err := amqp091.DialConfig(l.url, amqp091.Config{
			Heartbeat:  10 * time.Second,
			Locale:     "en_US",
			Properties: amqp091.Table{"product": "tracebridge"},
		})
		if err != nil {
			return nil, fmt.Errorf("amqp: dial %s: %w", l.redacted(), err)
		}
		l.conn = c
	}
	ch, err := l.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp: open channel on %s: %w", l.redacted(), err)
	}
	return ch, nil
}

// server names the broker for span attributes.
func (l *link) server() (string, int) { return l.addr, l.port }

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
