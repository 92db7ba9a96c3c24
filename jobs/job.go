package jobs

import (
	"context"
	"errors"
	"maps"
	"time"
)

// Errors the runner returns. Test them with errors.Is: the runner wraps
// them with the kind or job they concern.
var (
	// ErrQueueFull is returned by Enqueue when the queue is full and the
	// runner was configured to fail fast (Config.FailFast).
	ErrQueueFull = errors.New("jobs: queue full")
	// ErrClosed is returned by Enqueue, Go and Register once Shutdown has
	// begun, and by a Queue after Close.
	ErrClosed = errors.New("jobs: runner shut down")
	// ErrUnknownKind is returned by Enqueue for a kind no handler was
	// registered for, and is the (permanent) failure of a job whose kind
	// this runner cannot run.
	ErrUnknownKind = errors.New("jobs: unknown job kind")
	// ErrDuplicate is returned by Enqueue, together with the pending job's
	// ID, when a job with the same unique key is pending and the new one
	// was dropped or merged into it. It reports an outcome, not a failure.
	ErrDuplicate = errors.New("jobs: duplicate of a pending job")
)

// Handler runs one attempt of a job. ctx carries the journey of the code
// that enqueued it (trace, baggage, session) and the attempt's timeout, and
// is cancelled when Shutdown gives up waiting. Return a
// tracebridge.Permanent error for a job that can never succeed, so it is
// not retried.
type Handler func(ctx context.Context, job *Job) error

// DeadJobHandler receives a job that failed its last attempt, or failed
// permanently, with err from that attempt. ctx carries the job's journey
// and the final attempt's span, so what the handler records (an alert, a
// row in a dead-job table) stays on the journey.
type DeadJobHandler func(ctx context.Context, job *Job, err error)

// Job is what a handler sees of one attempt of a job.
type Job struct {
	ID          string
	Kind        string
	Payload     []byte
	Attempt     int // this attempt's number, from 1
	MaxAttempts int // attempts in all; the job is dead after this one fails
	EnqueuedAt  time.Time
}

// Envelope is a job as a Queue moves it: everything a worker, in this
// process or another, needs to run it and to continue its journey. It is
// plain data (strings, bytes, numbers and a string map) so a broker-backed
// queue can encode it in a message body and headers.
type Envelope struct {
	ID      string
	Kind    string
	Payload []byte
	// Headers carry the journey as tracebridge writes it on every broker
	// (traceparent, tracestate, baggage, session-id) and, from attempt 2
	// on, retry-attempt and retry-previous. A broker-backed queue sends
	// them as message headers unchanged.
	Headers map[string]string
	// Attempt is the number of the attempt this delivery is for, from 1.
	Attempt    int
	EnqueuedAt time.Time
	// NotBefore is the earliest time the attempt may start (a delay or a
	// backoff); zero means now.
	NotBefore time.Time
	// Per-job overrides of the worker's kind settings; zero means "use the
	// worker's". They travel with the job so a remote worker honours them.
	MaxAttempts    int
	Timeout        time.Duration
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// Receipt is the queue's own handle on this delivery (a delivery tag,
	// a JetStream message, a partition offset), opaque to the runner.
	Receipt any

	uniqueKey string // the runner's pending-job key, "" if not unique
}

// clone copies e for its next attempt; the headers are copied because the
// retry headers are rewritten while the previous delivery may still be
// referenced by its queue.
func (e *Envelope) clone() *Envelope {
	c := *e
	c.Headers = maps.Clone(e.Headers)
	c.Receipt = nil
	return &c
}

// Unrun is a job that Shutdown could not finish, returned so that nothing
// is dropped silently: re-enqueue it, persist it or log it. Its Envelope is
// the attempt that did not run to completion (Attempt is its number).
type Unrun struct {
	Envelope
	// Interrupted is true for a job whose attempt was running when
	// Shutdown's deadline cancelled it; false for one that was waiting in
	// the queue (never started, or waiting for a retry).
	Interrupted bool
	// Abandoned is true for an interrupted job whose handler had still not
	// returned when Shutdown returned. The runner ignores whatever that
	// handler returns later (no retry, no dead-job handler), but the
	// handler itself may still finish its work: re-enqueue such a job only
	// if running it twice is harmless.
	Abandoned bool
}
