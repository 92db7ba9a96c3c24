package jobs

import "context"

// Queue stores jobs between Enqueue and a worker. The in-memory queue
// (NewMemoryQueue) is the default; a broker-backed queue plugs in through
// Config.Queue.
//
// A Queue moves envelopes and settles deliveries; it never creates spans
// or reads the journey. Everything the journey needs is in
// Envelope.Headers, written with the header names every tracebridge broker
// package uses, so a worker in another process that pops an envelope from
// the same broker continues the journey from the headers alone. A
// broker-backed queue therefore only has to:
//   - encode ID, Kind, Payload, Attempt, EnqueuedAt, NotBefore and the
//     per-job overrides in the message (body or headers) and send Headers as
//     message headers;
//   - on Pop, decode them back and keep its delivery handle in Receipt;
//   - settle: Ack when the job is finished (succeeded or dead), Retry to
//     schedule the next attempt and settle the current one, Release to hand
//     a delivery back unfinished (shutdown), so the broker redelivers it.
//
// The runner calls Push from Enqueue (concurrently), Pop from each worker,
// and the settle methods once per popped envelope. Implementations must be
// safe for concurrent use.
type Queue interface {
	// System is the messaging.system recorded on job spans: "nats",
	// "rabbitmq" or "kafka" for a broker-backed queue.
	System() string
	// Name is the destination recorded on job spans ("send jobs",
	// "process jobs"): the queue, stream or topic.
	Name() string
	// Push stores a new job. When the queue is full it waits for room
	// while block is true and ctx lasts, and returns ErrQueueFull at once
	// otherwise. A queue that cannot be full ignores block.
	Push(ctx context.Context, e *Envelope, block bool) error
	// Pop returns the next job whose NotBefore has passed, waiting until
	// there is one or ctx ends (then it returns ctx's error). It must
	// return promptly once ctx ends: Shutdown waits for the Pop calls of
	// an in-process queue before it takes its report.
	Pop(ctx context.Context) (*Envelope, error)
	// Ack settles a popped job that is finished: it succeeded or is dead.
	Ack(ctx context.Context, e *Envelope) error
	// Retry settles the popped delivery prev and schedules next, its next
	// attempt (Attempt+1, NotBefore set, retry headers written). It must
	// not wait for room: the workers that call it are the queue's
	// consumers, so waiting could deadlock them. A broker-backed queue
	// publishes next before it acks prev, so a crash in between repeats
	// an attempt rather than losing the job. An error means the job can
	// be neither retried nor handed back, and the runner gives it up as
	// dead; a queue that could only hand prev back to its broker (the
	// attempt runs again with the same number) returns nil. An in-process
	// queue's Retry must not block at all: Shutdown waits for it before
	// Drain, so the retry is reported rather than lost.
	Retry(ctx context.Context, prev, next *Envelope) error
	// Release hands back a popped job that did not run to completion (its
	// attempt was interrupted or abandoned at Shutdown's deadline, or it was
	// delivered as Shutdown began), so a broker delivers it again later, to
	// this process or another. An in-process queue, whose unfinished jobs
	// Shutdown reports, does nothing.
	Release(ctx context.Context, e *Envelope) error
	// Drain removes and returns the jobs this queue holds in this process
	// and that no worker has taken, for Shutdown to report. A broker-backed
	// queue, whose jobs stay safe with the broker, returns none.
	Drain(ctx context.Context) ([]*Envelope, error)
	// Len is how many jobs wait, for the queue-depth metric; -1 if unknown.
	Len() int
	// Close releases the queue's resources; Push fails with ErrClosed
	// afterwards.
	Close() error
}

// RemoteQueue is implemented by a broker-backed queue, whose jobs live
// with the broker and may run in any process. The runner then waits at
// Shutdown only for the jobs its own workers took, not for every job it
// enqueued, and stops taking jobs as soon as Shutdown begins. Unique keys
// only merge jobs pending in the enqueuing process until the broker
// confirmed them.
type RemoteQueue interface {
	Queue
	// Remote reports whether the jobs live outside this process.
	Remote() bool
}

func isRemote(q Queue) bool {
	rq, ok := q.(RemoteQueue)
	return ok && rq.Remote()
}
