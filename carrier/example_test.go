package carrier_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// A producer injects the journey into message headers; a consumer in another
// process extracts it and continues the same trace and session.
func Example() {
	prop := carrier.NewPropagator()

	// The producer side: a span context and a session.
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
		SpanID:     trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31},
		TraceFlags: trace.FlagsSampled,
	})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	ctx = carrier.ContextWithSession(ctx, "0190c3a4-7b1e-7c00-8000-000000000001")

	headers := propagation.MapCarrier{}
	prop.Inject(ctx, headers)
	fmt.Println("traceparent:", headers.Get("traceparent"))
	fmt.Println("session-id: ", headers.Get("session-id"))
	fmt.Println("baggage:    ", headers.Get("baggage"))

	// The consumer side.
	in := prop.Extract(context.Background(), headers)
	fmt.Println("trace:      ", trace.SpanContextFromContext(in).TraceID())
	fmt.Println("session:    ", carrier.SessionFromContext(in))
	// Output:
	// traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
	// session-id:  0190c3a4-7b1e-7c00-8000-000000000001
	// baggage:     session.id=0190c3a4-7b1e-7c00-8000-000000000001
	// trace:       0af7651916cd43dd8448eb211c80319c
	// session:     0190c3a4-7b1e-7c00-8000-000000000001
}

// An edge that accepts only sessions this system issued: every instance
// shares the key, clients that cannot set custom headers (EventSource,
// WebSocket) send the session as a bearer token, and the response names
// the server-side trace.
func ExampleWithSessionSigner() {
	// In production the key comes from a secret store, 32 random bytes.
	signer, err := carrier.NewSessionSigner([]byte("example key: 32 bytes, not this!"))
	if err != nil {
		panic(err)
	}
	edge := carrier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// slog through carrier.NewLogHandler would stamp this session on
		// every line of the request.
		_ = carrier.SessionFromContext(r.Context())
	}),
		carrier.WithSessionSigner(signer),
		carrier.WithSessionBearer(),
		carrier.WithRequestIDHeader(),
		carrier.WithEdgeTracerProvider(sdktrace.NewTracerProvider()),
	)
	call := func(set func(*http.Request)) http.Header {
		req := httptest.NewRequest("GET", "/events", nil)
		set(req)
		w := httptest.NewRecorder()
		edge.ServeHTTP(w, req)
		return w.Header()
	}

	first := call(func(*http.Request) {})
	issued := first.Get("X-Session-ID")
	fmt.Println("issued a signed session:", signer.Verify(issued))
	tr := first.Get("traceresponse") // 00-<trace ID>-<server span ID>-<flags>
	fmt.Println("traceresponse names the request's trace:", tr[3:35] == first.Get("X-Request-ID"))

	again := call(func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+issued) })
	fmt.Println("bearer session kept:", again.Get("X-Session-ID") == issued)

	forged := carrier.NewSessionID() // another user's UUID, or one made up
	other := call(func(r *http.Request) { r.Header.Set("X-Session-ID", forged) })
	fmt.Println("forged session kept:", other.Get("X-Session-ID") == forged)
	fmt.Println("new session instead:", signer.Verify(other.Get("X-Session-ID")))
	// Output:
	// issued a signed session: true
	// traceresponse names the request's trace: true
	// bearer session kept: true
	// forged session kept: false
	// new session instead: true
}
