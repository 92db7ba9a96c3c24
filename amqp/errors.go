package amqp

import (
	"errors"
	"fmt"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/tracebridge/tracebridge/internal/amqpframe"
)

// ErrDisconnected is returned (wrapped) by a publish while the publisher
// has no open channel: the broker restarted, the network dropped, or the
// channel was closed by a channel-level error. A Publisher made by
// DialPublisher reconnects on its own; retry the publish, or let it wait
// with tracebridge.WithReconnectWait.
var ErrDisconnected = errors.New("amqp: not connected to RabbitMQ")

// ErrNacked is returned (wrapped) when the broker rejects a message with a
// publisher-confirm nack: it was not stored and will not be delivered.
var ErrNacked = errors.New("amqp: broker nacked the message")

// ErrConfirmLost is returned (wrapped) when the channel closed before the
// broker confirmed a message: it may or may not have been stored.
var ErrConfirmLost = errors.New("amqp: channel closed before the broker confirmed the message")

// ErrFrameTooLarge is returned (wrapped, with the sizes) by a publish
// whose properties and header table do not fit in one frame of the
// connection (its negotiated frame_max, 131,072 bytes by default on
// RabbitMQ). AMQP cannot split a message's header over frames; sent anyway,
// the broker would close the whole connection. Nothing was sent, and the
// connection stays open.
var ErrFrameTooLarge = amqpframe.ErrTooLarge

// ErrShortStringTooLong is returned (wrapped, naming the field and its
// length) by a publish, retry or dead letter with an AMQP short string
// longer than 255 bytes: a property (MessageId, CorrelationId, ReplyTo,
// Type, AppId, UserId, ContentType, ContentEncoding, Expiration), a header
// key at any depth, the exchange or the routing key. AMQP writes their
// length in one octet; amqp091 does not refuse a longer one but sends its
// length modulo 256 bytes of it, so it would arrive corrupted. Nothing was
// sent, and the connection stays open. Publishers and consumers also
// refuse to start with a header name (carrier.Names) or queue name that
// long.
var ErrShortStringTooLong = amqpframe.ErrShortStringTooLong

// ReturnedError is returned when the broker returned a mandatory message
// because no queue was bound to take it.
type ReturnedError struct {
	Return amqp091.Return
}

// Error names the destination and the broker's reason.
func (e *ReturnedError) Error() string {
	return fmt.Sprintf("amqp: message returned by broker: %d %s (exchange %q, routing key %q)",
		e.Return.ReplyCode, e.Return.ReplyText, e.Return.Exchange, e.Return.RoutingKey)
}
