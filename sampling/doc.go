// Package sampling records a session whole or not at all.
//
// A session spans many traces: each request of it, each consumer under the
// link or auto parent policy, each untrusted hop, each job that starts a
// trace of its own. Head sampling per trace keeps a random few of them.
// New returns a sampler that decides every root span from the session ID
// alone, so that every process in every service keeps or drops the same
// sessions, and children follow their parent:
//
//	tp := sdktrace.NewTracerProvider(
//		sdktrace.WithSampler(sampling.New(0.1)), // 10% of sessions, every span of each
//		sdktrace.WithBatcher(exporter))
//
// The decision follows OpenTelemetry's consistent probability sampling: a
// 56-bit randomness value R, here the first 56 bits of the SHA-256 of the
// session ID (Randomness), is compared with the rejection threshold T of
// the ratio (Threshold), and the session is recorded when R >= T. A
// sampled root records both in the tracestate (ot=rv:…;th:…), so later
// stages that understand that specification, a collector's probabilistic
// sampler for instance, keep or drop whole sessions too.
//
// Debug sessions are recorded everywhere whatever the ratio: name them
// with WithDebugSessions here and carrier.WithDebugSessions on the
// propagator, or in TRACEBRIDGE_DEBUG_SESSIONS, and the mark travels with
// the journey (the baggage member session.debug) to services that were not
// told. Only trusted input carries it.
//
// Under an unsampled parent, tracebridge's components start no span at all
// when the sampler is this one (or sdktrace.ParentBased): it would drop
// the span anyway, except for a debug session, which the components ask it
// about. See tracebridge.WithParentBasedSampling.
package sampling
