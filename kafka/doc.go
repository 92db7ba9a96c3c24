// Package kafka traces github.com/segmentio/kafka-go: a drop-in Writer and
// Reader, a header Carrier, and a Consumer loop with retries, retry topics
// and dead letters. Every message carries its journey (W3C trace context,
// baggage and the session ID) in its record headers, so the consumer's
// process span joins the producer's trace and the handler sees the
// producer's session and baggage.
//
// Producing: wrap the writer, keep the rest.
//
//	w := kafka.NewWriter(&kafkago.Writer{Addr: kafkago.TCP(brokers...), Topic: "orders"})
//	err := w.WriteMessages(ctx, kafkago.Message{Key: k, Value: v})
//
// One message gives a PRODUCER "send orders" span; a batch gives a PRODUCER
// "create orders" span per message and one CLIENT "send orders" span that
// links to them. Failures that kafka-go reports per message
// (kafkago.WriteErrors, an Async writer's Completion) mark only those
// messages' spans.
//
// Consuming with your own loop: Reader.FetchMessage returns the message and
// a context carrying its process span and journey; CommitMessages ends the
// span, so it covers the handling up to the commit.
//
//	ctx, msg, err := r.FetchMessage(ctx)
//	handle(ctx, msg)
//	err = r.CommitMessages(ctx, msg)
//
// Consuming with Consumer: give it a group reader and a handler; it commits
// after success, retries failures with backoff (attempt N's span links to
// attempt N-1), republishes to a retry topic or moves the message to a
// dead-letter topic, commits those only after the write succeeded, and
// shuts down gracefully when Run's context ends.
//
// Header names, the trust policy and the span shapes are the ones every
// tracebridge package shares; the README documents them.
package kafka
