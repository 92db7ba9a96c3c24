// Package natsqueue is a jobs.Queue on a NATS JetStream work-queue stream,
// so jobs enqueued by one process run in any process that opens the same
// stream, and each attempt stays on the enqueuer's journey.
//
// The journey travels in the message headers, written through the
// tracebridge nats package's HeaderCarrier, so a job message carries the
// same traceparent, baggage, session-id and retry-* headers as any other
// tracebridge message; the job's own fields travel in the jobs.Header*
// headers. The queue records no spans: the runner's send and process spans
// are the job's messaging spans.
//
// Delivery guarantees:
//   - Push returns after JetStream's PubAck, in a file-backed stream.
//   - A job is acked (with a server confirmation) only once it finished.
//     While it runs, the queue signals progress every third of AckWait; a
//     worker that dies stops signalling and JetStream redelivers the job
//     to another worker after AckWait. Such a redelivery repeats the same
//     attempt number.
//   - A retry is re-published with its retry headers and a not-before
//     time, then the failed delivery is acked. A job that is not due when
//     pulled is handed back with NakWithDelay, so it waits on the server.
package natsqueue
