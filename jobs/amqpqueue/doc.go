// Package amqpqueue is a jobs.Queue on a durable RabbitMQ queue, so jobs
// enqueued by one process run in any process that opens the same queue,
// and each attempt stays on the enqueuer's journey.
//
// The journey travels in the message headers, written through the
// tracebridge amqp package's Carrier (string values), so a job message
// carries the same traceparent, baggage, session-id and retry-* headers as
// any other tracebridge message; the job's own fields travel in the
// jobs.Header* headers. The queue records no spans: the runner's send and
// process spans are the job's messaging spans.
//
// Delivery guarantees:
//   - Push publishes persistently on a confirm-mode channel and returns
//     after the broker's confirm.
//   - A job is acked only once it finished. A worker that dies leaves its
//     deliveries unacked; RabbitMQ requeues them when its connection
//     closes, and another worker runs them (the same attempt number again).
//   - Delayed jobs and retries wait in Queue+".retry", the amqp package's
//     delay-queue shape: a per-message TTL, then a dead-letter back to the
//     work queue. A retry is published (and confirmed) before the failed
//     delivery is acked. RabbitMQ expires messages only at a queue's head,
//     so a job can wait longer than its delay behind a longer one, never
//     shorter.
//
// The queue reconnects: when its connection drops (a broker restart, a
// network failure), Pop redials with backoff for as long as the runner
// runs, redeclares the queues and consumes again, and a publish waits up
// to Config.ReconnectWait for it. Nothing is lost meanwhile: RabbitMQ
// requeues what the old connection had taken and not acked, and those
// jobs run again (the same attempt number).
package amqpqueue
