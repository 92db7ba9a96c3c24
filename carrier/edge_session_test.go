package carrier_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tracebridge/tracebridge/carrier"
)

// edgeRig is an edge with a handler that records what it saw and logs one
// line through the LogHandler, so a test can look for a value in the
// handler's context, the spans, the log and the response.
type edgeRig struct {
	h    http.Handler
	rec  *tracetest.SpanRecorder
	mu   sync.Mutex
	logs bytes.Buffer
	// spanMark and logMark are where the last request's spans and log
	// lines begin.
	spanMark, logMark int
	seen              string
	bag               string // the baggage member session.id the handler saw
	// known is the application's session store: every session the handler
	// saw. A verifier hook may consult it.
	known sync.Map
}

func newEdgeRig(t *testing.T, opts ...carrier.MiddlewareOption) *edgeRig {
	t.Helper()
	tp, rec := newTP(t)
	e := &edgeRig{rec: rec}
	log := slog.New(carrier.NewLogHandler(slog.NewJSONHandler(lockedWriter{&e.mu, &e.logs}, nil), carrier.BaggageSessionKey))
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		s := carrier.SessionFromContext(ctx)
		e.mu.Lock()
		e.seen, e.bag = s, baggage.FromContext(ctx).Member(carrier.BaggageSessionKey).Value()
		e.mu.Unlock()
		e.known.Store(s, true)
		log.InfoContext(ctx, "handled", "path", r.URL.Path)
	})
	e.h = carrier.Middleware(next, append([]carrier.MiddlewareOption{carrier.WithEdgeTracerProvider(tp)}, opts...)...)
	return e
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// do serves req and returns the session the handler saw.
func (e *edgeRig) do(t *testing.T, req *http.Request) (string, *httptest.ResponseRecorder) {
	t.Helper()
	e.mu.Lock()
	e.spanMark, e.logMark, e.seen, e.bag = len(e.rec.Ended()), e.logs.Len(), "", ""
	e.mu.Unlock()
	w := serve(t, e.h, req)
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.seen, w
}

// issue returns a session the edge issued: the one it starts for a request
// without any.
func (e *edgeRig) issue(t *testing.T) string {
	t.Helper()
	s, _ := e.do(t, httptest.NewRequest("GET", "/", nil))
	if s == "" {
		t.Fatal("edge issued no session")
	}
	return s
}

// lastSpan returns the server span of the last request.
func (e *edgeRig) lastSpan(t *testing.T) sdktrace.ReadOnlySpan {
	t.Helper()
	spans := e.rec.Ended()
	if len(spans) == 0 {
		t.Fatal("no span recorded")
	}
	return spans[len(spans)-1]
}

// leaks reports where v (a value the edge must have rejected) shows up in
// the last request: its spans, its log line, the response headers or the
// handler's baggage.
func (e *edgeRig) leaks(v string, w *httptest.ResponseRecorder) []string {
	var where []string
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.rec.Ended()[e.spanMark:] {
		if spanMentions(s, v) {
			where = append(where, "span "+s.Name())
		}
	}
	if strings.Contains(e.logs.String()[e.logMark:], v) {
		where = append(where, "log")
	}
	if e.bag == v {
		where = append(where, "baggage member session.id")
	}
	for k, vs := range w.Result().Header {
		for _, hv := range vs {
			if strings.Contains(hv, v) {
				where = append(where, "response header "+k)
			}
		}
	}
	return where
}

func spanMentions(s sdktrace.ReadOnlySpan, v string) bool {
	for _, a := range s.Attributes() {
		if strings.Contains(a.Value.String(), v) {
			return true
		}
	}
	for _, ev := range s.Events() {
		for _, a := range ev.Attributes {
			if strings.Contains(a.Value.String(), v) {
				return true
			}
		}
	}
	return false
}

// sessionStart returns the session.start event of s and whether it has one.
func sessionStart(s sdktrace.ReadOnlySpan) (sdktrace.Event, bool) {
	for _, ev := range s.Events() {
		if ev.Name == "session.start" {
			return ev, true
		}
	}
	return sdktrace.Event{}, false
}

// TestMiddlewareReadsOnlyConfiguredSources (issue 11, defect 5): an edge
// set to read only a cookie, or a renamed header, must not adopt a session
// from the propagator's session-id header, the baggage member session.id or
// the default X-Session-ID, under either trust policy. Before the fix the
// edge fell back to the propagator's session whatever was configured.
func TestMiddlewareReadsOnlyConfiguredSources(t *testing.T) {
	configs := map[string][]carrier.MiddlewareOption{
		"cookie only":    {carrier.WithSessionHeaders(), carrier.WithSessionCookie("sid")},
		"renamed header": {carrier.WithSessionHeaders("X-Journey-Session")},
	}
	foreign := map[string]func(r *http.Request, id string){
		"propagator session-id header": func(r *http.Request, id string) { r.Header.Set("session-id", id) },
		"baggage member session.id":    func(r *http.Request, id string) { r.Header.Set("baggage", "session.id="+id) },
		"header and baggage": func(r *http.Request, id string) {
			r.Header.Set("session-id", id)
			r.Header.Set("baggage", "session.id="+id)
		},
		"default X-Session-ID": func(r *http.Request, id string) { r.Header.Set("X-Session-ID", id) },
	}
	trusts := map[string]*carrier.Propagator{
		"trusted":   carrier.NewPropagator(),
		"untrusted": carrier.NewPropagator(carrier.WithTrust(carrier.Untrusted)),
	}
	for cname, copts := range configs {
		for tname, prop := range trusts {
			for fname, put := range foreign {
				t.Run(cname+"/"+tname+"/"+fname, func(t *testing.T) {
					e := newEdgeRig(t, append([]carrier.MiddlewareOption{carrier.WithPropagator(prop)}, copts...)...)
					client := carrier.NewSessionID() // valid, and a UUID as the old untrusted format wanted
					req := httptest.NewRequest("GET", "/", nil)
					put(req, client)
					seen, w := e.do(t, req)
					if seen == client {
						t.Fatalf("edge adopted the session %q from a source it was not configured with", client)
					}
					if _, ok := sessionStart(e.lastSpan(t)); !ok {
						t.Fatal("no session.start: the edge did not start a session of its own")
					}
					if where := e.leaks(client, w); len(where) > 0 {
						t.Fatalf("the unread session %q reached %v", client, where)
					}
					if e.bag != "" && e.bag != seen {
						t.Fatalf("baggage member session.id %q disagrees with the session %q", e.bag, seen)
					}
				})
			}
		}
	}
}

// TestMiddlewareUntrustedEdgeRefusesForeignSessions (issue 11, defect 5): the
// default edge faces the outside. A client that learns or makes up a
// session ID (another user's UUID, a well-formed token) must not join that
// journey: the edge starts a new session, without session.previous_id, and
// the value reaches no span, log line or response header. Before the fix
// the edge adopted any UUID and named any other valid value as the new
// session's session.previous_id.
func TestMiddlewareUntrustedEdgeRefusesForeignSessions(t *testing.T) {
	e := newEdgeRig(t)
	victim := carrier.NewSessionID() // another user's session, learned from a shared link
	forged := map[string]string{
		"another user's UUID":  victim,
		"made-up UUID":         "01900000-0000-7000-8000-000000000000",
		"well-formed token":    "my-own-session-42",
		"uppercase UUID":       strings.ToUpper(carrier.NewSessionID()),
		"UUID with a dot tail": carrier.NewSessionID() + ".AAAAAAAAAAAAAAAAAAAAAA",
	}
	for name, v := range forged {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/", nil)
			req.Header.Set("X-Session-ID", v)
			seen, w := e.do(t, req)
			if seen == v {
				t.Fatalf("untrusted edge adopted the client's session %q", v)
			}
			ev, ok := sessionStart(e.lastSpan(t))
			if !ok {
				t.Fatal("no session.start for the new session")
			}
			for _, a := range ev.Attributes {
				if a.Key == "session.previous_id" {
					t.Fatalf("rejected session named as session.previous_id %q", a.Value.AsString())
				}
			}
			if hasAttr(e.lastSpan(t), "session.previous_id") {
				t.Fatal("server span has session.previous_id for a rejected session")
			}
			if where := e.leaks(v, w); len(where) > 0 {
				t.Fatalf("rejected session %q reached %v", v, where)
			}
		})
	}
}
