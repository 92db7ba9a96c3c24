// Package tracebridge keeps a user's journey whole across message brokers
// and background jobs.
//
// In a system of services talking over Kafka, RabbitMQ and NATS, the trace
// of a request falls apart at every queue: trace IDs are dropped, retries
// start fresh traces, and the log lines of one session cannot be found
// together. tracebridge wraps the clients you already use
// (segmentio/kafka-go, rabbitmq/amqp091-go, nats-io/nats.go) and adds a
// job runner, all sharing one header schema (package carrier): W3C
// traceparent and tracestate, W3C baggage and a session ID. Producers and
// consumers create OpenTelemetry spans by the messaging semantic
// conventions, and every retry attempt links to the one before it.
//
// This package holds what every component shares: the options (Option and
// the With* functions) and the error marks (Permanent, PanicError). The
// components live in the subpackages carrier, kafka, amqp, nats and jobs.
package tracebridge
