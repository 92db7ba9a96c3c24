package carrier

import (
	"net/http"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// DefaultSessionHeader is the request and response header that carries the
// session ID at the HTTP edge.
const DefaultSessionHeader = "X-Session-ID"

type middlewareConfig struct {
	headers []string
	cookie  string
	query   string
	prop    *Propagator
	tp      trace.TracerProvider
}

// MiddlewareOption configures Middleware.
type MiddlewareOption func(*middlewareConfig)

// WithSessionHeaders sets the request headers a session ID is read from, in
// order. The first is also set on the response. The default is X-Session-ID.
func WithSessionHeaders(names ...string) MiddlewareOption {
	return func(c *middlewareConfig) { c.headers = names }
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
// with the trust policy, takes the session ID from the configured headers,
// cookie or query parameter, creates one when none came (emitting a
// session.start event), puts it in the request context and sets it on the
// response.
//
// Inside otelhttp (or any handler that already started a server span) it
// adds to that span: the session attribute, the session.start event and,
// for untrusted input, the link to the caller's context. Standing alone it
// starts a SERVER span of its own.
func Middleware(next http.Handler, opts ...MiddlewareOption) http.Handler {
	c := middlewareConfig{headers: []string{DefaultSessionHeader}}
	for _, o := range opts {
		o(&c)
	}
	if c.prop == nil {
		c.prop = NewPropagator(WithTrust(Untrusted))
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	tracer := c.tp.Tracer(scope)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		existing := trace.SpanFromContext(ctx)
		ctx = c.prop.Extract(ctx, propagation.HeaderCarrier(r.Header))
		if existing.SpanContext().IsValid() {
			ctx = trace.ContextWithSpan(ctx, existing) // an outer server span stays current
		}

		id, isNew := c.session(r), false
		if id == "" {
			id = SessionFromContext(ctx) // session-id header or baggage, already trust-checked
		}
		if id == "" {
			id, isNew = NewSessionID(), true
		}
		ctx = ContextWithSession(ctx, id)

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
			attrs := []attribute.KeyValue{semconv.SessionID(id)}
			if prev := c.rawSession(r); prev != "" && prev != id && validSession(prev) {
				attrs = append(attrs, semconv.SessionPreviousID(prev))
			}
			span.AddEvent("session.start", trace.WithAttributes(attrs...))
			if c.cookie != "" {
				http.SetCookie(w, &http.Cookie{Name: c.cookie, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
			}
		}
		if len(c.headers) > 0 {
			w.Header().Set(c.headers[0], id)
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// session returns the first acceptable session ID from headers, cookie and
// query, in that order.
func (c *middlewareConfig) session(r *http.Request) string {
	for _, h := range c.headers {
		if v := r.Header.Get(h); c.prop.sessionOK(v) {
			return v
		}
	}
	if c.cookie != "" {
		if ck, err := r.Cookie(c.cookie); err == nil && c.prop.sessionOK(ck.Value) {
			return ck.Value
		}
	}
	if c.query != "" {
		if v := r.URL.Query().Get(c.query); c.prop.sessionOK(v) {
			return v
		}
	}
	return ""
}

// rawSession returns the first session ID the client sent, acceptable or
// not, so a rejected one can be named as the new session's predecessor.
func (c *middlewareConfig) rawSession(r *http.Request) string {
	for _, h := range c.headers {
		if v := r.Header.Get(h); v != "" {
			return v
		}
	}
	return ""
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
