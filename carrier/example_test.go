package carrier_test

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/propagation"
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
