package carrier_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

const remoteTP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

func newTP(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()), sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

func serve(t *testing.T, h http.Handler, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestMiddlewareKeepsIncomingSession(t *testing.T) {
	tp, rec := newTP(t)
	var seen string
	h := carrier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = carrier.SessionFromContext(r.Context())
	}), carrier.WithEdgeTracerProvider(tp))
	// The untrusted edge keeps a session it issued itself.
	first := serve(t, h, httptest.NewRequest("GET", "/", nil))
	id := first.Header().Get("X-Session-ID")
	if id == "" || id != seen {
		t.Fatalf("first response session %q, handler saw %q", id, seen)
	}
	req := httptest.NewRequest("GET", "/checkout", nil)
	req.Header.Set("X-Session-ID", id)
	w := serve(t, h, req)
	if seen != id {
		t.Fatalf("handler saw session %q, want %q", seen, id)
	}
	if got := w.Header().Get("X-Session-ID"); got != id {
		t.Fatalf("response session header %q, want %q", got, id)
	}
	spans := rec.Ended()
	if len(spans) != 2 || spans[1].SpanKind() != trace.SpanKindServer {
		t.Fatalf("want two server spans, got %d", len(spans))
	}
	for _, e := range spans[1].Events() {
		if e.Name == "session.start" {
			t.Fatal("an existing session must not emit session.start")
		}
	}
}

func TestMiddlewareStartsSessionAndEmitsEvent(t *testing.T) {
	tp, rec := newTP(t)
	var seen string
	h := carrier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = carrier.SessionFromContext(r.Context())
	}), carrier.WithEdgeTracerProvider(tp), carrier.WithSessionCookie("sid"))
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Session-ID", "not a uuid\x01") // rejected by the untrusted edge
	w := serve(t, h, req)
	if carrier.ValidateSessionID(seen) != nil {
		t.Fatalf("new session %q is not a valid session ID", seen)
	}
	if w.Header().Get("X-Session-ID") != seen {
		t.Fatalf("response header %q, want %q", w.Header().Get("X-Session-ID"), seen)
	}
	if c := w.Result().Cookies(); len(c) != 1 || c[0].Value != seen {
		t.Fatalf("cookie not set to the new session: %v", c)
	}
	span := rec.Ended()[0]
	found := false
	for _, e := range span.Events() {
		if e.Name == "session.start" {
			found = true
		}
	}
	if !found {
		t.Fatal("no session.start event on the server span")
	}
}

func TestMiddlewareSessionFromCookieAndQuery(t *testing.T) {
	signer := testSigner(t)
	id := signer.NewID()
	for name, mod := range map[string]func(*http.Request){
		"cookie": func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "sid", Value: id}) },
		"query":  func(r *http.Request) { r.URL.RawQuery = "session=" + id },
	} {
		t.Run(name, func(t *testing.T) {
			var seen string
			h := carrier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen = carrier.SessionFromContext(r.Context())
			}), carrier.WithSessionCookie("sid"), carrier.WithSessionQuery("session"), carrier.WithSessionSigner(signer))
			req := httptest.NewRequest("GET", "/", nil)
			mod(req)
			serve(t, h, req)
			if seen != id {
				t.Fatalf("session %q, want %q", seen, id)
			}
		})
	}
}

func TestMiddlewareUntrustedLinksInsteadOfParenting(t *testing.T) {
	tp, rec := newTP(t)
	h := carrier.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), carrier.WithEdgeTracerProvider(tp))
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("traceparent", remoteTP)
	req.Header.Set("baggage", "debug=1,tenant=acme")
	serve(t, h, req)
	span := rec.Ended()[0]
	if span.Parent().IsValid() {
		t.Fatal("untrusted traceparent became the parent")
	}
	if span.SpanContext().TraceID().String() == "0af7651916cd43dd8448eb211c80319c" {
		t.Fatal("untrusted request steered the trace ID")
	}
	if len(span.Links()) != 1 || span.Links()[0].SpanContext.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Fatalf("want one link to the caller, got %v", span.Links())
	}
}

func TestMiddlewareTrustedParents(t *testing.T) {
	tp, rec := newTP(t)
	var bag baggage.Baggage
	h := carrier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bag = baggage.FromContext(r.Context())
	}), carrier.WithEdgeTracerProvider(tp), carrier.WithPropagator(carrier.NewPropagator()))
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("traceparent", remoteTP)
	req.Header.Set("baggage", "tenant=acme")
	serve(t, h, req)
	span := rec.Ended()[0]
	if span.Parent().SpanID().String() != "b7ad6b7169203331" {
		t.Fatalf("trusted request not parented: parent %v", span.Parent())
	}
	if bag.Member("tenant").Value() != "acme" {
		t.Fatalf("trusted baggage lost: %v", bag)
	}
}

func TestMiddlewareInsideExistingServerSpan(t *testing.T) {
	tp, rec := newTP(t)
	inner := carrier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, span := tp.Tracer("outer").Start(r.Context(), "server", trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		inner.ServeHTTP(w, r.WithContext(ctx))
	})
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("traceparent", remoteTP)
	serve(t, outer, req)
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("middleware started a second span: %d spans", len(spans))
	}
	if len(spans[0].Links()) != 1 {
		t.Fatalf("untrusted caller not linked on the outer span: %v", spans[0].Links())
	}
	if !hasAttr(spans[0], "session.id") {
		t.Fatal("outer span lacks session.id")
	}
}

func hasAttr(s sdktrace.ReadOnlySpan, key string) bool {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return true
		}
	}
	return false
}

func TestSessionSpanProcessorStampsUserSpans(t *testing.T) {
	tp, rec := newTP(t)
	ctx := carrier.ContextWithSession(context.Background(), "s-1")
	ctx = carrier.RotateSession(ctx, "s-2")
	_, span := tp.Tracer("app").Start(ctx, "user work")
	span.End()
	_, other := tp.Tracer("app").Start(context.Background(), "no session")
	other.End()
	got := map[string]map[string]string{}
	for _, s := range rec.Ended() {
		attrs := map[string]string{}
		for _, a := range s.Attributes() {
			attrs[string(a.Key)] = a.Value.AsString()
		}
		got[s.Name()] = attrs
	}
	if got["user work"]["session.id"] != "s-2" || got["user work"]["session.previous_id"] != "s-1" {
		t.Fatalf("session attributes: %v", got["user work"])
	}
	if _, ok := got["no session"]["session.id"]; ok {
		t.Fatal("span without a session got session.id")
	}
}

func TestLogHandlerAddsJourney(t *testing.T) {
	tp, _ := newTP(t)
	var buf bytes.Buffer
	log := slog.New(carrier.NewLogHandler(slog.NewJSONHandler(&buf, nil), "tenant"))
	m, _ := baggage.NewMemberRaw("tenant", "acme")
	b, _ := baggage.New(m)
	ctx := baggage.ContextWithBaggage(carrier.ContextWithSession(context.Background(), "sess-42"), b)
	ctx, span := tp.Tracer("app").Start(ctx, "op")
	log.InfoContext(ctx, "charged card", "amount", 12)
	log.With("svc", "pay").WithGroup("g").InfoContext(ctx, "grouped")
	log.Info("no context")
	span.End()

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines, got %d", len(lines))
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if first["trace_id"] != span.SpanContext().TraceID().String() || first["span_id"] != span.SpanContext().SpanID().String() {
		t.Fatalf("trace ids missing: %v", first)
	}
	if first["session.id"] != "sess-42" || first["baggage.tenant"] != "acme" {
		t.Fatalf("session/baggage missing: %v", first)
	}
	if !strings.Contains(lines[1], "sess-42") || !strings.Contains(lines[1], `"svc":"pay"`) {
		t.Fatalf("WithAttrs/WithGroup lost the journey: %s", lines[1])
	}
	if strings.Contains(lines[2], "trace_id") || strings.Contains(lines[2], "session.id") {
		t.Fatalf("line without context got journey attributes: %s", lines[2])
	}
}

// testSigner returns a SessionSigner with a fixed test key.
func testSigner(t testing.TB) *carrier.SessionSigner {
	t.Helper()
	s, err := carrier.NewSessionSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}
