package jobs

import (
	"time"

	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Config holds the runner settings that are specific to jobs. The settings
// every tracebridge component shares (tracer and meter providers,
// propagator, WithRetry, WithConcurrency, WithErrorOnEveryAttempt,
// WithLogger) are tracebridge.Options passed to New alongside it.
type Config struct {
	// Queue holds the jobs. Nil means an in-memory queue named "jobs"
	// holding QueueSize jobs.
	Queue Queue
	// QueueSize bounds the default in-memory queue. Zero means 1024.
	QueueSize int
	// FailFast makes Enqueue return ErrQueueFull when the queue is full,
	// instead of waiting for room (or for its ctx to end). Fail fast
	// suits request handlers that would rather shed load than stall.
	FailFast bool
	// DeadJob receives jobs that failed for the last time. Nil logs them
	// with the runner's logger.
	DeadJob DeadJobHandler
	// Timeout bounds each attempt of every kind unless a kind or job sets
	// its own. Zero means 5 minutes; negative means no timeout.
	Timeout time.Duration
	// ShutdownGrace is how long Shutdown waits, after cancelling what
	// still runs at its deadline, for handlers to return before it
	// abandons them (see Runner.Shutdown). Zero means one second.
	ShutdownGrace time.Duration
}

// settings are the per-kind and per-job knobs, merged runner < kind < job.
type settings struct {
	maxAttempts int
	timeout     time.Duration
	backoff     msgtrace.Backoff
	delay       time.Duration
	uniqueKey   func(payload []byte) string
	merge       MergeFunc
}

// JobOption sets a per-kind default when given to Register, and overrides
// it for one job when given to Enqueue.
type JobOption func(*settings)

// MergeFunc combines the payload of a pending job with that of a duplicate
// enqueued while it waits; the result becomes the pending job's payload.
type MergeFunc func(pending, incoming []byte) []byte

// WithMaxAttempts sets how many attempts a job gets in all, the first
// included. Values below 1 mean 1.
func WithMaxAttempts(n int) JobOption {
	return func(s *settings) { s.maxAttempts = max(n, 1) }
}

// WithTimeout bounds each attempt; the handler's ctx is cancelled when it
// expires and the attempt fails with context.DeadlineExceeded. A negative d
// means no timeout.
func WithTimeout(d time.Duration) JobOption {
	return func(s *settings) { s.timeout = d }
}

// WithBackoff sets the delay before each retry: exponential from initial,
// capped at max, with full jitter (uniform between 0 and the cap of that
// attempt), so jobs that failed together do not retry in lockstep.
func WithBackoff(initial, max time.Duration) JobOption {
	return func(s *settings) { s.backoff = msgtrace.Backoff{Initial: initial, Max: max} }
}

// WithDelay holds a job back for d before its first attempt, for work that
// must wait (a reminder, a follow-up after a grace period).
func WithDelay(d time.Duration) JobOption {
	return func(s *settings) { s.delay = d }
}

// WithUnique makes the job unique by key among pending jobs of its kind: a
// job is pending from Enqueue until a worker takes it. While one is
// pending, another with the same key is dropped, or, with a non-nil merge
// and the in-memory queue, merged into the pending one's payload. Enqueue
// then returns the pending job's ID and ErrDuplicate. Uniqueness is kept by
// the enqueuing runner, so it spans one process.
func WithUnique(key string, merge MergeFunc) JobOption {
	return func(s *settings) {
		s.uniqueKey = func([]byte) string { return key }
		s.merge = merge
	}
}

// WithUniqueBy is WithUnique with the key computed from the payload, for
// Register: every job of the kind is unique by, say, its customer ID.
func WithUniqueBy(key func(payload []byte) string, merge MergeFunc) JobOption {
	return func(s *settings) { s.uniqueKey, s.merge = key, merge }
}

func (s settings) with(opts []JobOption) settings {
	for _, o := range opts {
		if o != nil {
			o(&s)
		}
	}
	return s
}
