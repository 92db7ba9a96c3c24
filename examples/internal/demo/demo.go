// Package demo holds what the small examples share: a tracer provider that
// samples everything and stamps the session on every span.
package demo

import (
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// TracerProvider returns an SDK tracer provider that samples every span and
// adds session.id to spans started under a session. The examples print IDs
// rather than export, so no exporter is configured.
func TracerProvider() *sdktrace.TracerProvider {
	return sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()))
}
