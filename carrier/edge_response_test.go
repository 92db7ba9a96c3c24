package carrier_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tracebridge/tracebridge/carrier"
)

// traceResponseRE is the W3C Trace Context Level 2 traceresponse value,
// version 00: version "-" trace-id "-" child-id "-" trace-flags, all
// lowercase hex.
var traceResponseRE = regexp.MustCompile(`^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$`)

// parseTraceResponse checks v against the Level 2 rules: the format,
// version 00 (ff is forbidden), non-zero IDs, and no flag but sampled
// (0x01) and random-trace-id (0x02), which version 00 defines.
func parseTraceResponse(t *testing.T, v string) (traceID, childID string, flags byte) {
	t.Helper()
	m := traceResponseRE.FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("traceresponse %q does not match version-traceid-childid-flags", v)
	}
	if m[1] != "00" {
		t.Fatalf("traceresponse version %s, want 00", m[1])
	}
	if m[2] == "00000000000000000000000000000000" || m[3] == "0000000000000000" {
		t.Fatalf("traceresponse %q has an all-zero ID", v)
	}
	f, _ := strconv.ParseUint(m[4], 16, 8)
	if f&^0x03 != 0 {
		t.Fatalf("traceresponse %q sets flags version 00 does not define", v)
	}
	return m[2], m[3], byte(f)
}

func flagsOf(sc trace.SpanContext) byte { return byte(sc.TraceFlags()) & 0x03 }

// TestTraceResponse: the response names the server span of the request in
// a W3C Level 2 traceresponse header, under either trust policy, sampled or
// not, standing alone or inside another server span; with
// WithRequestIDHeader, X-Request-ID carries its trace ID. An untrusted
// edge never echoes the caller's trace ID or its X-Request-ID.
func TestTraceResponse(t *testing.T) {
	cases := []struct {
		name    string
		sampler sdktrace.Sampler
		trust   carrier.Trust
		caller  bool // the request carries a traceparent
		outer   bool // another server span is current
	}{
		{"untrusted, no caller", sdktrace.AlwaysSample(), carrier.Untrusted, false, false},
		{"untrusted, caller's trace not echoed", sdktrace.AlwaysSample(), carrier.Untrusted, true, false},
		{"trusted, caller's trace continued", sdktrace.AlwaysSample(), carrier.Trusted, true, false},
		{"sampled out", sdktrace.NeverSample(), carrier.Untrusted, false, false},
		{"inside another server span", sdktrace.AlwaysSample(), carrier.Untrusted, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(tc.sampler))
			t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			var server trace.SpanContext
			var h http.Handler = carrier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				server = trace.SpanContextFromContext(r.Context())
			}), carrier.WithEdgeTracerProvider(tp), carrier.WithRequestIDHeader(),
				carrier.WithPropagator(carrier.NewPropagator(carrier.WithTrust(tc.trust))))
			if tc.outer {
				inner := h
				h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					ctx, span := tp.Tracer("outer").Start(r.Context(), "outer", trace.WithSpanKind(trace.SpanKindServer))
					defer span.End()
					inner.ServeHTTP(w, r.WithContext(ctx))
				})
			}
			req := httptest.NewRequest("GET", "/", nil)
			if tc.caller {
				req.Header.Set("traceparent", remoteTP)
			}
			req.Header.Set("X-Request-ID", "client-chosen\x01")
			w := serve(t, h, req)
			tid, child, flags := parseTraceResponse(t, w.Header().Get("traceresponse"))
			if tid != server.TraceID().String() || child != server.SpanID().String() {
				t.Fatalf("traceresponse %s-%s names another span than the server span %s-%s", tid, child, server.TraceID(), server.SpanID())
			}
			if flags != flagsOf(server) {
				t.Fatalf("traceresponse flags %02x, server span %02x", flags, flagsOf(server))
			}
			if tc.sampler == sdktrace.NeverSample() && flags&0x01 != 0 {
				t.Fatal("sampled flag set for a request that was not recorded")
			}
			callerTrace := remoteTP[3:35]
			if got := tid == callerTrace; got != (tc.caller && tc.trust == carrier.Trusted) {
				t.Fatalf("traceresponse trace %s, caller's %s: continued %v", tid, callerTrace, got)
			}
			if child == remoteTP[36:52] {
				t.Fatal("traceresponse names the caller's span, not the server's")
			}
			if got := w.Header().Get("X-Request-ID"); got != tid {
				t.Fatalf("X-Request-ID %q, want the trace ID %s", got, tid)
			}
		})
	}
}

// TestTraceResponseOnlyForAServerSpan: without a span of its own (no SDK
// installed) the edge has no server span to name, so it sends no
// traceresponse and no X-Request-ID, rather than hand the caller's own
// span back; WithoutTraceResponse turns the header off.
func TestTraceResponseOnlyForAServerSpan(t *testing.T) {
	for _, trust := range []carrier.Trust{carrier.Trusted, carrier.Untrusted} {
		h := carrier.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}),
			carrier.WithEdgeTracerProvider(noop.NewTracerProvider()), carrier.WithRequestIDHeader(),
			carrier.WithPropagator(carrier.NewPropagator(carrier.WithTrust(trust))))
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("traceparent", remoteTP)
		w := serve(t, h, req)
		if v := w.Header().Get("traceresponse"); v != "" {
			t.Fatalf("%s edge without an SDK sent traceresponse %q", trust, v)
		}
		if v := w.Header().Get("X-Request-ID"); v != "" {
			t.Fatalf("%s edge without an SDK sent X-Request-ID %q", trust, v)
		}
		if w.Header().Get("X-Session-ID") == "" {
			t.Fatalf("%s edge without an SDK sent no session", trust)
		}
	}
	tp, _ := newTP(t)
	h := carrier.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}),
		carrier.WithEdgeTracerProvider(tp), carrier.WithoutTraceResponse())
	w := serve(t, h, httptest.NewRequest("GET", "/", nil))
	if v := w.Header().Get("traceresponse"); v != "" {
		t.Fatalf("WithoutTraceResponse, yet traceresponse %q", v)
	}
	if v := w.Header().Get("X-Request-ID"); v != "" {
		t.Fatalf("X-Request-ID %q without WithRequestIDHeader", v)
	}
}

// TestCorrelationHeaderAnswered: with WithSessionCorrelationID the response
// carries the session in X-Correlation-ID too, and a correlation ID the
// untrusted edge rejected is not echoed.
func TestCorrelationHeaderAnswered(t *testing.T) {
	rig := newEdgeRig(t, carrier.WithSessionCorrelationID())
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Correlation-ID", "client-correlation-1")
	seen, w := rig.do(t, req)
	if got := w.Header().Get("X-Correlation-ID"); got != seen || got == "client-correlation-1" {
		t.Fatalf("X-Correlation-ID %q, session %q", got, seen)
	}
	req = httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Correlation-ID", seen)
	if again, w := rig.do(t, req); again != seen || w.Header().Get("X-Correlation-ID") != seen {
		t.Fatalf("issued correlation ID %q not kept: %q", seen, again)
	}
}
