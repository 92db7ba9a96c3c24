// Package carrier is tracebridge's header schema: how a journey crosses a
// process boundary.
//
// A journey is a trace (W3C traceparent and tracestate, by the Trace Context
// Level 2 processing model), its W3C baggage, and a session ID that ties
// together everything one user did. NewPropagator returns a
// propagation.TextMapPropagator that carries all three; install it globally
// with otel.SetTextMapPropagator and otelhttp and otelgrpc carry the session
// too. The broker packages use it for their message headers, and also for
// the retry and dead-letter headers (InjectRetry, InjectDeadLetter).
//
// Bad input never fails a message: an invalid traceparent starts a new
// trace, invalid list-members are dropped one by one, limits drop whole
// members, and every drop is counted in the tracebridge.propagation.dropped
// metric and logged once at debug level.
//
// The trust policy decides how far incoming context is believed. Trusted
// (the default) continues the journey. Untrusted turns the caller's trace
// into a link (RemoteLink), keeps only allow-listed baggage, and keeps the
// session only if it has the expected format. On the way out, a baggage
// filter (DenySensitive by default) keeps secrets and personal data out of
// headers.
//
// Around the propagator: Middleware is the HTTP edge that starts or
// continues a session, read from exactly the sources it is configured with
// and, by default, accepted only if the edge issued it (SessionSigner);
// SessionSpanProcessor stamps session.id on every span; LogHandler adds
// trace_id, span_id and session.id to slog records, without control
// characters.
package carrier
