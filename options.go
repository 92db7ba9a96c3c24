package tracebridge

import (
	"log/slog"
	"slices"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Option configures a tracebridge producer, consumer or job runner. The same
// options serve every broker package, so a setting means the same thing
// everywhere; an option that does not apply to a component is ignored by it,
// and each constructor's documentation lists the ones it reads.
type Option = msgtrace.Option

// ParentPolicy chooses how a process span relates to the message's creation
// context.
type ParentPolicy = msgtrace.ParentPolicy

// Parent policies.
const (
	// ParentOnCreation makes the creation context the parent, so one trace
	// holds the whole journey. It is the default.
	ParentOnCreation = msgtrace.ParentOnCreation
	// LinkToCreation starts a new trace with a link to the creation context.
	LinkToCreation = msgtrace.LinkToCreation
	// ParentWhileYoung parents while the message is younger than the
	// threshold given to WithParentPolicy, and links once it is older.
	ParentWhileYoung = msgtrace.ParentWhileYoung
)

// WithTracerProvider sets the tracer provider. The default is the global one.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *msgtrace.Config) { c.TracerProvider = tp }
}

// WithMeterProvider sets the meter provider. The default is the global one.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *msgtrace.Config) { c.MeterProvider = mp }
}

// WithPropagators sets the propagator that injects and extracts the journey:
// a *carrier.Propagator (for custom header names, filters or a session
// format) or any other propagation.TextMapPropagator, such as
// OpenTelemetry's composite of TraceContext and Baggage. The default is the
// global propagator when it is a *carrier.Propagator, and
// carrier.NewPropagator() otherwise, because the stock global propagator
// sends nothing until an application configures it. Retry and dead-letter
// headers are written with the carrier's header names (the defaults for a
// propagator that is not a *carrier.Propagator). It does not change the
// consumer's trust policy (WithTrust), whichever option comes first.
func WithPropagators(p propagation.TextMapPropagator) Option {
	return func(c *msgtrace.Config) { c.Propagator = p }
}

// WithTrust sets the consumer's trust policy (see carrier.Trust); the last
// WithTrust wins. Untrusted messages start a new trace that links to their
// creation context, keep only the listed baggage keys, keep their session ID
// only if it passes the propagator's session format (by default a UUID),
// and set no attempt number through their retry or delivery-count headers
// (see the README on retries and trust).
//
// Trust belongs to the consumer, not to its propagator: it applies to
// whatever propagator the consumer uses, whether WithPropagators comes
// before or after it, and keeps that propagator's header names, filters,
// session format and meter provider. A *carrier.Propagator built Untrusted
// stays untrusted even under WithTrust(carrier.Trusted).
func WithTrust(t carrier.Trust, allowBaggage ...string) Option {
	return func(c *msgtrace.Config) {
		c.Trust = t
		c.AllowBaggage = slices.Clone(allowBaggage)
	}
}

// WithParentPolicy sets how a process span relates to the creation context.
// threshold is used by ParentWhileYoung only.
func WithParentPolicy(p ParentPolicy, threshold time.Duration) Option {
	return func(c *msgtrace.Config) { c.Parent, c.YoungFor = p, threshold }
}

// WithErrorOnEveryAttempt marks every failed attempt's span with status
// Error. By default only the final attempt (dead-lettered or given up) is,
// so tail samplers do not flag journeys that recovered.
func WithErrorOnEveryAttempt() Option {
	return func(c *msgtrace.Config) { c.ErrorOnEveryAttempt = true }
}

// WithoutCreateSpans turns off the per-message create spans of a batch send;
// each message then carries the batch's send span as its creation context.
func WithoutCreateSpans() Option {
	return func(c *msgtrace.Config) { c.NoCreateSpans = true }
}

// WithParentBasedSampling tells tracebridge that the tracer provider's
// sampler never records a span whose parent is not sampled, as
// sdktrace.ParentBased does (the SDK's default sampler is
// ParentBased(AlwaysSample())). A message produced under such a parent, or
// consumed with such a creation context as its parent, then starts no span:
// the SDK is not called, and the parent's context travels on unchanged. The
// journey is the same as without the option (same trace ID, same
// not-sampled flag, same baggage and session), but an unsampled message
// costs no span start and no span ID; with head sampling at the edge that
// is most messages. Metrics are recorded either way.
//
// Components do this by default whenever they can tell that it changes
// nothing the sampler records: at construction they probe the tracer
// provider with a few spans under unsampled parents, and if it records
// none of them (sdktrace.ParentBased with any root sampler, the session
// sampler of package sampling, which still records its debug sessions
// under any parent), they start no span under an unsampled parent. The
// option is the promise for the cases the probe cannot tell: a provider
// that is not the SDK, or the global provider before one is installed.
//
// Do not set it with a sampler that may record a child of an unsampled
// parent (sdktrace.AlwaysSample() or a TraceIDRatioBased sampler not
// wrapped in ParentBased): the spans that sampler would have recorded under
// unsampled parents are not started.
func WithParentBasedSampling() Option {
	return func(c *msgtrace.Config) { c.ParentBasedSampling, c.AskSampler = true, false }
}

// WithoutParentBasedSampling turns the unsampled path off: every message
// starts its span and the sampler is asked, even under an unsampled
// parent. Use it with a sampler that the probe of WithParentBasedSampling
// cannot see through: one that records some children of unsampled parents
// depending on their attributes, names or context.
func WithoutParentBasedSampling() Option {
	return func(c *msgtrace.Config) { c.ParentBasedSampling, c.AskSampler = false, true }
}

// WithSettleSpans records ack, nack, commit and term as spans of their own
// instead of events on the process span.
func WithSettleSpans() Option {
	return func(c *msgtrace.Config) { c.SettleSpans = true }
}

// WithRetry sets how often a failed message is attempted in all (including
// the first attempt) and the backoff between attempts: exponential from
// initial, capped at max, with full jitter. The default is 3 attempts from
// 100ms capped at 10s.
func WithRetry(maxAttempts int, initial, max time.Duration) Option {
	return func(c *msgtrace.Config) {
		c.MaxAttempts = maxAttempts
		c.Backoff = msgtrace.Backoff{Initial: initial, Max: max}
	}
}

// WithDeadLetter sets the destination failed messages are moved to after
// their last attempt (a topic, exchange or subject, per broker). Without it
// a message that exhausts its attempts is settled as failed where the
// broker can hold it (nack without requeue, term) and logged.
func WithDeadLetter(destination string) Option {
	return func(c *msgtrace.Config) { c.DeadLetter = destination }
}

// WithRetryDestination republishes a failed message to destination (with
// retry-attempt and retry-previous headers) instead of retrying it in place.
func WithRetryDestination(destination string) Option {
	return func(c *msgtrace.Config) { c.RetryDestination = destination }
}

// WithConcurrency sets how many messages a consumer handles at once.
func WithConcurrency(n int) Option {
	return func(c *msgtrace.Config) { c.Concurrency = n }
}

// WithLogger sets where the component logs what it cannot report otherwise
// (a message given up without a dead-letter destination, a failed settle).
// The default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *msgtrace.Config) { c.Logger = l }
}

// WithConfirms makes a producer wait for the broker to acknowledge each
// message (RabbitMQ publisher confirms). The send span then ends on the
// broker's answer, and a rejected or returned message is an error on the
// span and to the caller.
func WithConfirms() Option {
	return func(c *msgtrace.Config) { c.Confirms = true }
}

// WithReconnectWait lets a publish on a reconnecting producer wait up to d
// (and never past its context) for a lost connection to come back, instead
// of failing at once with a disconnected error.
func WithReconnectWait(d time.Duration) Option {
	return func(c *msgtrace.Config) { c.ReconnectWait = d }
}
