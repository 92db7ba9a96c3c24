// Package jobs is a background-job runner whose workers inherit the
// journey of the code that enqueued the work.
//
// Register a handler per job kind, then Enqueue jobs from anywhere:
//
//	r := jobs.New(jobs.Config{DeadJob: onDead}, tracebridge.WithRetry(5, time.Second, time.Minute))
//	r.Register("email.send", sendEmail, jobs.WithTimeout(30*time.Second))
//	id, err := r.Enqueue(ctx, "email.send", payload)
//	...
//	unrun, err := r.Shutdown(ctx) // at exit
//
// Enqueue records a PRODUCER span ("send jobs") and writes ctx's trace,
// baggage and session into the job's headers, exactly as the broker
// packages write them on a message. It keeps nothing else of ctx: not its
// cancellation, not its deadline, not its values. A worker rebuilds the
// handler's context from those headers alone, so a job outlives the
// request that enqueued it, stays on that request's trace, and can run in
// another process once a broker-backed Queue carries it.
//
// Each attempt runs in a CONSUMER span ("process jobs") whose parent is the
// enqueue span, with tracebridge.attempt set and a link to the previous
// attempt's span. A failed attempt that will be retried records the error
// but keeps status Unset (unless tracebridge.WithErrorOnEveryAttempt), so
// tail samplers do not flag jobs that recovered. Retries wait an
// exponential backoff with full jitter; a tracebridge.Permanent error skips
// them; a panic is a failed attempt with its stack on the span. A job whose
// last attempt fails goes to the dead-job handler with its journey.
//
// The runner's workers are bounded (tracebridge.WithConcurrency) and so is
// the default in-memory queue (Config.QueueSize); Enqueue waits for room or
// fails fast with ErrQueueFull (Config.FailFast). Shutdown stops intake,
// drains, and at its deadline cancels what runs; every accepted job then
// either ran to completion or did not run, never both: Shutdown returns
// those that did not run, or, with a broker-backed queue, leaves them with
// the broker to be delivered again.
//
// Go runs fire-and-forget work that keeps the journey, drops the caller's
// cancellation, recovers panics, and is waited for by Shutdown.
//
// Metrics: the semantic-convention messaging metrics
// (messaging.client.operation.duration, messaging.process.duration,
// messaging.client.sent.messages, messaging.client.consumed.messages),
// tracebridge.retries, tracebridge.dead_letters, and the runner's
// tracebridge.jobs.queue.depth and tracebridge.jobs.inflight.
//
// messaging.system is the Queue's System: "tracebridge.jobs" for the
// in-memory queue, which involves no broker, and the broker's own name for
// a broker-backed queue, whose jobs are that broker's messages.
package jobs
