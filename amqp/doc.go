// Package amqp traces RabbitMQ messaging with github.com/rabbitmq/amqp091-go:
// a Publisher whose PublishWithContext has amqp091's signature, a Consumer
// that runs a handler over a queue with retries, dead letters and
// reconnects (on a connection of its own with NewConsumer, or on yours with
// NewConsumerOn), and a low-level Tracer.StartProcess for delivery loops of
// your own. Switching an existing publisher is one line: ch.PublishWithContext
// becomes p.PublishWithContext.
//
// # Headers
//
// The journey travels in Publishing.Headers as the tracebridge header
// schema (traceparent, tracestate, baggage, session-id, retry-attempt,
// retry-previous, dead-letter-*), written as strings. Headers are read
// when they are strings or byte arrays; values of any other type are
// ignored, never an error, and keys are case-sensitive. The Publisher
// copies the caller's header table, so a Publishing can be reused.
//
// # Spans
//
// Each publish is a PRODUCER "send {destination}" span, where the
// destination is the exchange, or the routing key for the default
// exchange; the routing key and message ID are attributes. With
// tracebridge.WithConfirms the span ends on the broker's ack or nack, and
// a nack (ErrNacked), a returned mandatory message (*ReturnedError) or a
// channel lost before the answer (ErrConfirmLost) is an error on the span
// and to the caller. PublishWithDeferredConfirm returns a Confirmation
// whose Wait ends the span.
//
// Each delivery attempt is a CONSUMER "process {queue}" span, parented on
// the message's creation context by default, with the attempt number and
// a link to the previous attempt. It covers the handler up to the ack.
// retry-attempt, x-delivery-count (on a redelivery) and x-death counts are
// claims a publisher can forge: under Trusted they raise the number shown,
// but only the attempts the consumer counted itself make a failure final
// (see the README on retries and trust).
//
// # Retries and dead letters
//
// A failed message is republished to the delay queue queue+".retry" with a
// per-message TTL of its backoff; RabbitMQ dead-letters it back to the
// work queue when the TTL runs out. After the last attempt it goes to the
// tracebridge.WithDeadLetter queue with its original headers plus
// retry-previous and dead-letter-*. The original is acked only after the
// broker confirmed that publish; if it cannot be published the message is
// requeued, never lost. A message's properties and headers must fit in one
// frame (frame_max): a dead letter that would not is trimmed (the removed
// header keys listed in dead-letter-dropped-headers), and a retry that
// would not is settled as a final failure at once, since it never will
// (see ErrFrameTooLarge and the README).
//
// # Reconnects
//
// Consumer.Run and DialPublisher redial with jittered backoff when the
// connection or channel closes (a NewConsumerOn consumer gets its next
// connection from the redial func it was given, or stops without one). The Consumer calls its Setup function on
// every connect to redeclare the topology, then resumes consuming. A
// DialPublisher returns ErrDisconnected while it is down, or waits up to
// tracebridge.WithReconnectWait for it to return.
package amqp
