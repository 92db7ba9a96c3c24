// Package kafkaqueue is a jobs.Queue on a Kafka topic read by a consumer
// group, so jobs enqueued by one process run in any process that joins
// the group, and each attempt stays on the enqueuer's journey.
//
// The journey travels in the record headers, written through the
// tracebridge kafka package's Carrier (which replaces rather than repeats
// keys), so a job record carries the same traceparent, baggage, session-id
// and retry-* headers as any other tracebridge message; the job's own
// fields travel in the jobs.Header* headers. The queue records no spans:
// the runner's send and process spans are the job's messaging spans.
//
// Delivery guarantees:
//   - Push returns after the write was acknowledged by every in-sync
//     replica (RequiredAcks all).
//   - A job's offset is committed only once it finished, and never past a
//     job of the same partition that is still running, because a Kafka
//     commit is a position. A worker that dies leaves its offsets
//     uncommitted; after the group's session timeout its partitions go to
//     another worker, which runs those jobs again (same attempt number).
//   - Kafka cannot delay a record, so delays and retries are written with
//     a not-before header and the worker that fetches one waits until it is
//     due. A retry is written before the failed attempt is committed.
//     Prefer short delays with this queue; long ones hold a worker each.
//
// Released jobs (Shutdown) stay uncommitted and are delivered again once
// the process has left the group.
package kafkaqueue
