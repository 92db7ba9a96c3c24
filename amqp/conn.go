package amqp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// channelSource opens the channels a Consumer consumes on: a link that dials
// a URL of its own (NewConsumer), or a connection the caller owns
// (NewConsumerOn).
type channelSource interface {
	// channel opens a channel, (re)connecting first when needed, and
	// reports its connection's negotiated frame_max.
	channel(ctx context.Context) (ch *amqp091.Channel, frameMax int, err error)
	// server names the broker for span attributes.
	server() (addr string, port int)
	// close stops channel from opening more channels.
	close() error
}

// errNoRedial is the end of a NewConsumerOn consumer whose connection closed
// without a way to get another.
var errNoRedial = fmt.Errorf("%w: the connection closed and no redial func was given", ErrDisconnected)

// NewConsumerOn returns a Consumer of queue over conn, a connection you
// already have, for programs that dial RabbitMQ themselves. It works like a
// Consumer from NewConsumer (same handler, setup, options, retries, dead
// letters and graceful stop) with one difference: the consumer never closes
// conn, nor a connection redial returns. They stay yours, to close after
// Run returns.
//
// The consumer opens a channel of its own on conn: it sets that channel's
// prefetch and puts it in confirm mode for its retry and dead-letter
// republishes, which it must not do to a channel of yours. That is why it
// takes a connection, not a channel.
//
// When only the channel closes (a channel exception), the consumer opens a
// new one on conn. When conn itself closes, the consumer calls redial for
// the next connection, with backoff while redial fails, and resumes; with a
// nil redial, Run returns an error wrapping ErrDisconnected instead, once
// the handlers in flight have finished (their unacked messages go back to
// the queue with the connection). redial typically dials and stores the new
// connection where the rest of your program finds it, or returns the
// connection your own reconnect logic keeps current. Its context ends when
// Run is stopped, so a dial in progress can be abandoned.
func NewConsumerOn(conn *amqp091.Connection, redial func(context.Context) (*amqp091.Connection, error), queue string, setup Setup, h Handler, opts ...tracebridge.Option) *Consumer {
	return &Consumer{t: msgtrace.New("rabbitmq", opts), link: &borrowed{conn: conn, redial: redial},
		queue: queue, setup: setup, h: h}
}

// borrowed is a channelSource over connections the caller owns.
type borrowed struct {
	redial func(context.Context) (*amqp091.Connection, error)

	mu   sync.Mutex
	conn *amqp091.Connection
	shut bool
}

func (b *borrowed) channel(ctx context.Context) (*amqp091.Channel, int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shut {
		return nil, 0, fmt.Errorf("amqp: consumer stopped: %w", amqp091.ErrClosed)
	}
	if b.conn == nil || b.conn.IsClosed() {
		if b.redial == nil {
			return nil, 0, errNoRedial
		}
		c, err := b.redial(ctx)
		if err == nil && c == nil {
			err = errors.New("redial returned no connection")
		}
		if err != nil {
			return nil, 0, fmt.Errorf("amqp: redial: %w", err)
		}
		b.conn = c
	}
	ch, err := b.conn.Channel()
	if err != nil {
		return nil, 0, fmt.Errorf("amqp: open channel on %s: %w", b.conn.RemoteAddr(), err)
	}
	return ch, b.conn.Config.FrameSize, nil
}

func (b *borrowed) server() (string, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil {
		return "", 0
	}
	if a, ok := b.conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String(), a.Port
	}
	return "", 0
}

// close stops opening channels; the connections stay open, as they are the
// caller's.
func (b *borrowed) close() error {
	b.mu.Lock()
	b.shut = true
	b.mu.Unlock()
	return nil
}

// redial runs the consumer's reconnect loop until a session is open, ctx
// ends, or the source says no connection will come (errNoRedial), which is
// returned.
func (c *Consumer) redial(ctx context.Context, open func() error) error {
	var final error
	err := msgtrace.Redial(ctx, reconnectBackoff, reconnectMin, func(context.Context) error {
		err := open()
		if errors.Is(err, errNoRedial) {
			final = err
			return nil // stop redialing: nothing will come back
		}
		return err
	}, func(n int, err error) {
		if n == 1 || n%10 == 0 {
			c.t.Logger.Warn("tracebridge: RabbitMQ consumer reconnecting", "queue", c.queue, "attempt", n, "error", err)
		}
	})
	if final != nil {
		return final
	}
	return err
}
