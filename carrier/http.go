package carrier

import (
	"context"
	"net/http"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Header names at the HTTP edge.
const (
	// DefaultSessionHeader is the request and response header that carries
	// the session ID at the HTTP edge.
	DefaultSessionHeader = "X-Session-ID"
	// CorrelationIDHeader is the header WithSessionCorrelationID reads the
	// session from and sets on the response.
	CorrelationIDHeader = "X-Correlation-ID"
	// RequestIDHeader is the response header WithRequestIDHeader sets.
	RequestIDHeader = "X-Request-ID"
	// TraceResponseHeader is the W3C Trace Context Level 2 response header
	// that names the server span of a request.
	TraceResponseHeader = "traceresponse"
)

type middlewareConfig struct {
	headers         []string
	correlation     bool
	cookie          string
	query           string
	bearer          bool
	propagated      bool
	signer          *SessionSigner
	verify          func(r *http.Request, id string) bool
	requestID       bool
	noTraceResponse bool
	prop            *Propagator
	tp              trace.TracerProvider
}

// MiddlewareOption configures Middleware.
type MiddlewareOption func(*middlewareConfig)

// WithSessionHeaders sets the request headers a session ID is read from, in
// order. The first is also set on the response. The default is X-Session-ID;
// no names means no session header at all.
func WithSessionHeaders(names ...string) MiddlewareOption {
	return func(c *middlewareConfig) { c.headers = names }
}

// WithSessionCorrelationID also reads the session ID from the
// X-Correlation-ID header, after the session headers, and sets it on the
// response, for clients that already send a correlation ID. Like every
// source it must pass the edge's checks: a correlation ID the client made
// up is not a session this system issued, so an untrusted edge answers it
// with a new session.
func WithSessionCorrelationID() MiddlewareOption {
	return func(c *middlewareConfig) { c.correlation = true }
}

// WithSessionCookie also reads the session ID from the named cookie, after
// the headers, and sets the cookie when a new session starts.
func WithSessionCookie(name string) MiddlewareOption {
	return func(c *middlewareConfig) { c.cookie = name }
}

// WithSessionQuery also reads the session ID from the named query parameter,
// after the headers and the cookie.
func WithSessionQuery(param string) MiddlewareOption {
	return func(c *middlewareConfig) { c.query = param }
}

// WithSessionBearer also reads the session ID from an Authorization: Bearer
// token, after the query parameter, for connections that cannot set custom
// headers (EventSource and WebSocket clients often can set only this one).
//
// A bearer token is usually a credential, and an accepted session is
// written on every span and log line, so this source accepts only a session
// that verifies (WithSessionSigner, WithSessionVerifier, or the untrusted
// edge's default signer); on a trusted edge with neither configured, it
// accepts nothing. A token that does not verify is never recorded.
func WithSessionBearer() MiddlewareOption {
	return func(c *middlewareConfig) { c.bearer = true }
}

// WithPropagatedSession also reads the session the way the propagator
// carries it between services, last: the propagator's session-id header,
// then the baggage member session.id. Use it for an edge whose callers are
// tracebridge services. Without it the edge ignores both, because on an
// edge that faces browsers they are just more headers a client can set.
func WithPropagatedSession() MiddlewareOption {
	return func(c *middlewareConfig) { c.propagated = true }
}

// WithSessionSigner makes the edge issue its new sessions with s and accept
// a client's session only if s verifies it (see SessionSigner), whatever
// the trust policy.
func WithSessionSigner(s *SessionSigner) MiddlewareOption {
	return func(c *middlewareConfig) { c.signer = s }
}

// WithSessionVerifier makes the edge accept a client's session only if
// verify returns true for it, whatever the trust policy; with a
// SessionSigner too, the ID must pass both. verify sees the request, so it
// can tie a session to the signed-in user or look it up in a session store.
// It is called only with IDs that are valid session IDs (printable ASCII,
// at most 128 bytes, no separators), once per source that carries one,
// until one passes; it must be safe for concurrent use.
func WithSessionVerifier(verify func(r *http.Request, id string) bool) MiddlewareOption {
	return func(c *middlewareConfig) { c.verify = verify }
}

// WithRequestIDHeader also sets X-Request-ID on the response: the trace ID
// of the request's server span, 32 lowercase hex digits, for clients and
// proxies that look for a request ID rather than traceresponse. An
// incoming X-Request-ID is never read or echoed.
func WithRequestIDHeader() MiddlewareOption {
	return func(c *middlewareConfig) { c.requestID = true }
}

// WithoutTraceResponse stops the edge from setting the traceresponse
// header, for an edge that must not tell its callers the trace and span IDs
// it records under.
func WithoutTraceResponse() MiddlewareOption {
	return func(c *middlewareConfig) { c.noTraceResponse = true }
}

// WithPropagator sets the propagator the edge extracts with; its trust
// policy is the edge's. The default is NewPropagator(WithTrust(Untrusted)):
// an edge faces the outside unless told otherwise.
func WithPropagator(p *Propagator) MiddlewareOption {
	return func(c *middlewareConfig) { c.prop = p }
}

// WithEdgeTracerProvider sets the provider for the server span the
// middleware starts when the request has no span yet. The default is the
// global provider.
func WithEdgeTracerProvider(tp trace.TracerProvider) MiddlewareOption {
	return func(c *middlewareConfig) { c.tp = tp }
}

// Middleware is the journey's HTTP edge. It extracts the incoming context
// with the trust policy, takes the session ID from exactly the sources it
// is configured with, starts a new session when none is acceptable
// (emitting a session.start event), puts it in the request context and
// tells the client where to look: the session header, the traceresponse
// header and, with WithRequestIDHeader, X-Request-ID.
//
// Sources, in the order they are tried: the session headers (X-Session-ID
// by default), X-Correlation-ID, the cookie, the query parameter, the
// bearer token, and the propagator's session-id header and baggage member
// session.id; only X-Session-ID is on by default. The first ID that passes
// the checks wins. Every ID must be a valid session ID; beyond that:
//
//   - with WithSessionSigner or WithSessionVerifier, it must pass them,
//     under either trust policy;
//   - otherwise a trusted edge accepts any valid ID, and an untrusted edge
//     (the default) signs its sessions with a key that only this process
//     knows and accepts only those. A client can keep the session the edge
//     gave it, but cannot choose or guess one, nor use another user's
//     without the complete ID the edge issued. Sessions of one process do
//     not verify in another, so edges with several instances, or that
//     restart, share a key through WithSessionSigner.
//
// A rejected ID is counted in the dropped-content metric and otherwise
// forgotten: the new session has no session.previous_id, and the ID never
// reaches a span, a log line or the response.
//
// Inside otelhttp (or any handler that already started a server span) it
// adds to that span: the session attribute, the session.start event and,
// for untrusted input, the link to the caller's context. Standing alone it
// starts a SERVER span of its own.
func Middleware(next http.Handler, opts ...MiddlewareOption) http.Handler {
	c := middlewareConfig{headers: []string{DefaultSessionHeader}}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.prop == nil {
		c.prop = NewPropagator(WithTrust(Untrusted))
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.signer == nil && c.verify == nil && c.prop.Trust() == Untrusted {
		c.signer = newProcessSigner()
	}
	names := c.prop.Names()
	tracer := c.tp.Tracer(scope)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		existing := trace.SpanFromContext(ctx)
		// The propagator's session header is a session source like any
		// other, read below only when configured; the propagator must not
		// adopt it on its own.
		ctx = c.prop.Extract(ctx, &edgeHeaders{h: r.Header, hide: names.SessionID})
		if existing.SpanContext().IsValid() {
			ctx = trace.ContextWithSpan(ctx, existing) // an outer server span stays current
		}

		id, isNew := c.session(r, names), false
		if id == "" {
			id, isNew = c.newSession(), true
		}
		ctx = ContextWithSession(withSessionMember(ctx, id), id)

		span := existing
		var rec *statusRecorder
		if !existing.IsRecording() {
			var links []trace.Link
			if sc, ok := RemoteLink(ctx); ok {
				links = append(links, trace.Link{SpanContext: sc})
			}
			ctx, span = tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer),
				trace.WithLinks(links...), trace.WithAttributes(
					semconv.HTTPRequestMethodKey.String(r.Method), semconv.URLPath(r.URL.Path)))
			rec = &statusRecorder{ResponseWriter: w, status: http.StatusOK}
			w = rec
			defer func() {
				span.SetAttributes(semconv.HTTPResponseStatusCode(rec.status))
				if rec.status >= 500 {
					span.SetStatus(codes.Error, http.StatusText(rec.status))
				}
				span.End()
			}()
		} else if sc, ok := RemoteLink(ctx); ok {
			span.AddLink(trace.Link{SpanContext: sc})
		}
		span.SetAttributes(semconv.SessionID(id))
		if isNew {
			span.AddEvent("session.start", trace.WithAttributes(semconv.SessionID(id)))
			if c.cookie != "" {
				http.SetCookie(w, &http.Cookie{Name: c.cookie, Value: id, Path: "/", HttpOnly: true,
					Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
			}
		}
		c.respond(w.Header(), id, span.SpanContext())
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// respond sets the headers that tell the client where to look. Every value
// is the edge's own: the session it accepted or issued, and the server
// span's IDs; nothing the client sent is echoed unchecked.
func (c *middlewareConfig) respond(h http.Header, id string, sc trace.SpanContext) {
	if len(c.headers) > 0 {
		h.Set(c.headers[0], id)
	}
	if c.correlation {
		h.Set(CorrelationIDHeader, id)
	}
	// A span context that is still the caller's (a no-op tracer passes the
	// parent on) names no server span.
	if !sc.IsValid() || sc.IsRemote() {
		return
	}
	if !c.noTraceResponse {
		h.Set(TraceResponseHeader, formatTraceResponse(sc))
	}
	if c.requestID {
		h.Set(RequestIDHeader, sc.TraceID().String())
	}
}

// formatTraceResponse formats a W3C Trace Context Level 2 traceresponse:
// version 00, the trace ID, the server span's ID as the child-id, and the
// flags that version defines (sampled, random), the others zero. That is
// the traceparent format, which FormatTraceparent writes with the same
// mask.
func formatTraceResponse(sc trace.SpanContext) string { return FormatTraceparent(sc) }

// newSession returns the ID of a session the edge starts.
func (c *middlewareConfig) newSession() string {
	if c.signer != nil {
		return c.signer.NewID()
	}
	return NewSessionID()
}

// session returns the first acceptable session ID from the configured
// sources, in order, or "".
func (c *middlewareConfig) session(r *http.Request, names Names) string {
	for _, h := range c.headers {
		if v := r.Header.Get(h); c.accept(r, v, false) {
			return v
		}
	}
	if c.correlation {
		if v := r.Header.Get(CorrelationIDHeader); c.accept(r, v, false) {
			return v
		}
	}
	if c.cookie != "" {
		if ck, err := r.Cookie(c.cookie); err == nil && c.accept(r, ck.Value, false) {
			return ck.Value
		}
	}
	if c.query != "" {
		if v := r.URL.Query().Get(c.query); c.accept(r, v, false) {
			return v
		}
	}
	if c.bearer {
		if v := bearerToken(r.Header); c.accept(r, v, true) {
			return v
		}
	}
	if c.propagated {
		if v := r.Header.Get(names.SessionID); c.accept(r, v, false) {
			return v
		}
		if v := baggageSession(r.Header.Values(names.Baggage)); c.accept(r, v, false) {
			return v
		}
	}
	return ""
}

// accept reports whether id, from one source, may be the request's
// session. A source that does not carry one is not a rejection. A bearer
// token must verify: it may be a credential (see WithSessionBearer).
func (c *middlewareConfig) accept(r *http.Request, id string, bearer bool) bool {
	switch {
	case id == "":
		return false
	case !validSession(id):
		c.prop.drops.add(fieldSession, dropInvalid)
		return false
	case c.signer != nil && !c.signer.Verify(id),
		c.verify != nil && !c.verify(r, id),
		bearer && c.signer == nil && c.verify == nil:
		c.prop.drops.add(fieldSession, dropUntrusted)
		return false
	}
	return true
}

// bearerToken returns the token of an Authorization: Bearer header, or "".
// The scheme is case-insensitive (RFC 9110).
func bearerToken(h http.Header) string {
	const scheme = "Bearer "
	v := h.Get("Authorization")
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return ""
	}
	return strings.TrimLeft(v[len(scheme):], " ")
}

// baggageSession returns the raw value of the session.id member of the
// baggage header fields, or "". The propagator has already judged it by its
// own trust policy; the edge judges it again by its own checks.
func baggageSession(fields []string) string {
	for _, f := range fields {
		// Parse skips invalid members and reports them in err; the rest
		// of the field still counts, as it does for the propagator.
		b, _ := baggage.Parse(f)
		if m := b.Member(BaggageSessionKey); m.Key() != "" {
			return m.Value()
		}
	}
	return ""
}

// withSessionMember makes the baggage member session.id of ctx agree with
// the session the edge chose: otherwise code that reads baggage, and any
// stock baggage propagator downstream, would see the one the client sent.
func withSessionMember(ctx context.Context, id string) context.Context {
	b := baggage.FromContext(ctx)
	if m, err := baggage.NewMemberRaw(BaggageSessionKey, id); err == nil {
		if nb, err := b.SetMember(m); err == nil {
			return baggage.ContextWithBaggage(ctx, nb)
		}
	}
	if b.Member(BaggageSessionKey).Key() == "" {
		return ctx
	}
	return baggage.ContextWithBaggage(ctx, b.DeleteMember(BaggageSessionKey))
}

// edgeHeaders shows the request's headers to the propagator without the
// header named hide: the edge reads the propagator's session header itself,
// and only when configured to.
type edgeHeaders struct {
	h    http.Header
	hide string
}

func (e *edgeHeaders) hidden(key string) bool { return strings.EqualFold(key, e.hide) }

// Get returns the first value of key, unless it is hidden.
func (e *edgeHeaders) Get(key string) string {
	if e.hidden(key) {
		return ""
	}
	return e.h.Get(key)
}

// Values returns every value of key, unless it is hidden.
func (e *edgeHeaders) Values(key string) []string {
	if e.hidden(key) {
		return nil
	}
	return e.h.Values(key)
}

// Set sets key; Extract never calls it.
func (e *edgeHeaders) Set(key, value string) { e.h.Set(key, value) }

// Keys returns the header names, without the hidden one.
func (e *edgeHeaders) Keys() []string {
	keys := make([]string, 0, len(e.h))
	for k := range e.h {
		if !e.hidden(k) {
			keys = append(keys, k)
		}
	}
	return keys
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
