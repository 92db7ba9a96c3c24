// Package nats traces github.com/nats-io/nats.go: core NATS publish,
// subscribe and request-reply, and JetStream publish and consumption
// through the github.com/nats-io/nats.go/jetstream API. It follows the
// tracebridge contract: the journey (W3C trace context, baggage and the
// session ID) travels in lowercase message headers, every delivery attempt
// gets a CONSUMER "process" span on the producer's trace, redeliveries link
// to the attempt before, and a message that fails for good moves to its
// dead-letter subject with its journey before it is terminated.
//
// The wrappers keep nats.go's own types in their signatures, so adopting
// them changes one line per call site:
//
//	nc, _ := natsgo.Connect(url)
//	c := nats.Wrap(nc)                      // core: Publish, Subscribe, Request, Respond
//	js, _ := nats.NewJetStream(nc, nil)     // jetstream.New, traced; or nats.WrapJetStream(rawJS)
//	cons := nats.NewConsumer(js.JetStream, consumer, tracebridge.WithDeadLetter("orders.dlq"))
//	cons.Consume(func(ctx context.Context, m jetstream.Msg) error { ... })
//
// Core NATS has no redelivery, so a core handler returns nothing; a panic
// is recorded on its span and the subscription keeps running. JetStream
// handlers return an error: nil acks, an error naks with exponential
// backoff (full jitter), and tracebridge.Permanent or the consumer's last
// delivery (MaxDeliver) dead-letters and then terms. The term waits for the
// dead letter's PubAck; when that publish fails the message is naked and
// stays with the server.
//
// Headers are matched case-insensitively on read, because a header may
// have passed through code that capitalised it; a traceparent present
// under two spellings counts as duplicated and starts a new trace. On a
// connection whose server refuses headers, messages go out without them
// and only the send span records the publish.
package nats
