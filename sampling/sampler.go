package sampling

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/sampleprobe"
)

// Sampler is the session-consistent sampler, an sdktrace.Sampler. It
// decides a root span (one with no parent: a request at the edge, a new
// trace started by the link parent policy, an untrusted hop or a job) from
// the session ID alone, so every process in every service makes the same
// decision for the same session and ratio, and a session is recorded whole
// or not at all. A span with a parent follows it, as sdktrace.ParentBased
// does. A root without a session goes to the fallback sampler. Debug
// sessions are recorded wherever they go, under any parent.
//
// Install it on every service's tracer provider, directly (it is
// parent-based already; wrapped in sdktrace.ParentBased it would never see
// a debug session under an unsampled parent):
//
//	sdktrace.NewTracerProvider(sdktrace.WithSampler(sampling.New(0.1)), ...)
//
// A Sampler is immutable and safe for concurrent use.
type Sampler struct {
	ratio     float64
	threshold uint64
	th        string
	fallback  sdktrace.Sampler
	debug     map[string]struct{}
	desc      string
}

var _ sdktrace.Sampler = (*Sampler)(nil)

type config struct {
	fallback sdktrace.Sampler
	debug    []string
	logger   *slog.Logger
}

// Option configures a Sampler.
type Option func(*config)

// WithFallback sets the sampler for a root span without a session (a
// health check, a scheduled task that starts no session). The default is
// sdktrace.TraceIDRatioBased with the session ratio. It sees root spans
// only: spans with a parent follow their parent.
func WithFallback(s sdktrace.Sampler) Option {
	return func(c *config) { c.fallback = s }
}

// WithDebugSessions names debug sessions: their spans are recorded here
// whatever the ratio and the parent's decision. The sessions that
// TRACEBRIDGE_DEBUG_SESSIONS names are debug sessions too. Give the
// service's propagator the same sessions (carrier.WithDebugSessions), so
// that the mark travels on and services downstream, which were not told,
// record them as well. Invalid IDs are ignored and logged.
func WithDebugSessions(ids ...string) Option {
	return func(c *config) { c.debug = append(c.debug, ids...) }
}

// WithLogger sets where the sampler reports debug sessions it cannot use.
// The default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// New returns a Sampler that records a ratio (0 to 1) of sessions. A ratio
// of 1 or more records every session, 0 or less (or NaN) none but the
// debug sessions.
func New(ratio float64, opts ...Option) *Sampler {
	c := config{}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	if c.fallback == nil {
		c.fallback = sdktrace.TraceIDRatioBased(ratio)
	}
	s := &Sampler{ratio: ratio, fallback: c.fallback}
	s.threshold, s.th = Threshold(ratio)
	env, err := carrier.DebugSessionsFromEnv()
	if err != nil {
		c.logger.Warn("sampling: ignoring invalid debug sessions", "error", err)
	}
	for _, id := range append(env, c.debug...) {
		if err := carrier.ValidateSessionID(id); err != nil {
			c.logger.Warn("sampling: ignoring invalid debug session", "error", err)
			continue
		}
		if s.debug == nil {
			s.debug = map[string]struct{}{}
		}
		s.debug[id] = struct{}{}
	}
	th := s.th
	if th == "" {
		th = "none"
	}
	s.desc = fmt.Sprintf("SessionConsistent{ratio:%g,th:%s,debug:%d,fallback:%s}", ratio, th, len(s.debug), s.fallback.Description())
	return s
}

// Description names the sampler, its ratio and threshold, how many debug
// sessions it was given, and its fallback.
func (s *Sampler) Description() string { return s.desc }

// ShouldSample decides a span, in this order:
//
//  1. a sampled parent: record (ParentBased);
//  2. a debug session (named to this sampler, or marked in the baggage):
//     record, under any parent;
//  3. an unsampled parent: drop (ParentBased);
//  4. a root with a session: record if Randomness(session) >= T, and put
//     rv and th into the OpenTelemetry tracestate member (ot=rv:…;th:…);
//  5. a root without a session: the fallback.
func (s *Sampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	ctx := p.ParentContext
	psc := trace.SpanContextFromContext(ctx)
	if p.Name == sampleprobe.SpanName {
		if r := sampleprobe.FromContext(ctx); r != nil {
			r.Records = s.recordsUnderUnsampled
		}
	}
	if psc.IsValid() && psc.IsSampled() {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: consistentState(psc)}
	}
	sess := carrier.SessionFromContext(ctx)
	if sess != "" && s.isDebug(ctx, sess) {
		// Recorded for a reason other than probability: no threshold may
		// claim otherwise (OpenTelemetry: a stage that yields spans of
		// unknown sampling probability erases th).
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: withoutThreshold(psc.TraceState())}
	}
	if psc.IsValid() {
		return sdktrace.SamplingResult{Decision: sdktrace.Drop, Tracestate: psc.TraceState()}
	}
	if sess == "" {
		return s.fallback.ShouldSample(p)
	}
	r := Randomness(sess)
	if r < s.threshold {
		return sdktrace.SamplingResult{Decision: sdktrace.Drop}
	}
	// A root has no tracestate of its own yet. The randomness is not the
	// trace ID's, so rv must travel with th for any later stage (a
	// collector's probabilistic sampler) to reach the same decision.
	ts, err := trace.TraceState{}.Insert(otKey, "rv:"+encodeRandomness(r)+";th:"+s.th)
	if err != nil {
		ts = trace.TraceState{}
	}
	return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: ts}
}

// recordsUnderUnsampled reports whether a span started under ctx, whose
// parent is valid and not sampled, records: only a debug session's does.
// The probe hands it to tracebridge's components, which then start no span
// at all for every other message under an unsampled parent.
func (s *Sampler) recordsUnderUnsampled(ctx context.Context) bool {
	if len(s.debug) == 0 {
		// One context lookup for the common case: no mark in the baggage.
		m := baggage.FromContext(ctx).Member(carrier.BaggageDebugKey)
		return m.Key() != "" && m.Value() == carrier.SessionFromContext(ctx)
	}
	sess := carrier.SessionFromContext(ctx)
	return sess != "" && s.isDebug(ctx, sess)
}

// isDebug reports whether sess, the session of ctx, is a debug session.
func (s *Sampler) isDebug(ctx context.Context, sess string) bool {
	if _, ok := s.debug[sess]; ok {
		return true
	}
	m := baggage.FromContext(ctx).Member(carrier.BaggageDebugKey)
	return m.Key() != "" && m.Value() == sess
}

// otKey is the OpenTelemetry tracestate member.
const otKey = "ot"

// consistentState is a sampled parent's tracestate as its child carries
// it on. OpenTelemetry asks a parent-based sampler to erase a threshold
// that the parent's own randomness contradicts (rv < th on a sampled
// span), because whoever reads it would count the span wrongly.
func consistentState(psc trace.SpanContext) trace.TraceState {
	ts := psc.TraceState()
	if ts.Len() == 0 {
		return ts
	}
	ot := ts.Get(otKey)
	if ot == "" {
		return ts
	}
	thv, okT := subKey(ot, "th")
	if !okT {
		return ts
	}
	t, okT := parseHex56(thv, false)
	var r uint64
	var okR bool
	if rv, ok := subKey(ot, "rv"); ok {
		r, okR = parseHex56(rv, true)
	} else if psc.TraceFlags().IsRandom() {
		tid := psc.TraceID()
		r, okR = uint64(tid[9])<<48|uint64(tid[10])<<40|uint64(tid[11])<<32|uint64(tid[12])<<24|
			uint64(tid[13])<<16|uint64(tid[14])<<8|uint64(tid[15]), true
	}
	if !okT || okR && r < t {
		return withoutThreshold(ts)
	}
	return ts
}

// subKey returns the value of key in an ot member's value ("k1:v1;k2:v2").
func subKey(ot, key string) (string, bool) {
	for ot != "" {
		var kv string
		kv, ot, _ = strings.Cut(ot, ";")
		if k, v, ok := strings.Cut(kv, ":"); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// withoutThreshold returns ts with the th sub-key removed from its ot
// member (and the member removed once empty).
func withoutThreshold(ts trace.TraceState) trace.TraceState {
	ot := ts.Get(otKey)
	if ot == "" {
		return ts
	}
	if _, ok := subKey(ot, "th"); !ok {
		return ts
	}
	var kept []string
	for _, kv := range strings.Split(ot, ";") {
		if k, _, _ := strings.Cut(kv, ":"); k != "th" {
			kept = append(kept, kv)
		}
	}
	if len(kept) == 0 {
		return ts.Delete(otKey)
	}
	if out, err := ts.Insert(otKey, strings.Join(kept, ";")); err == nil {
		return out
	}
	return ts.Delete(otKey)
}
