package carrier

import (
	"context"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// SessionSpanProcessor stamps session.id (and session.previous_id after a
// rotation) on every span started under a context with a session, including
// spans the application and other instrumentation start. Register it with
// sdktrace.WithSpanProcessor next to the exporter's processor, so that one
// session ID finds every span of the journey.
type SessionSpanProcessor struct{}

var _ sdktrace.SpanProcessor = SessionSpanProcessor{}

// NewSessionSpanProcessor returns the processor.
func NewSessionSpanProcessor() SessionSpanProcessor { return SessionSpanProcessor{} }

// OnStart sets the session attributes from the parent context.
func (SessionSpanProcessor) OnStart(parent context.Context, s sdktrace.ReadWriteSpan) {
	if id := SessionFromContext(parent); id != "" {
		s.SetAttributes(semconv.SessionID(id))
	}
	if prev := PreviousSessionFromContext(parent); prev != "" {
		s.SetAttributes(semconv.SessionPreviousID(prev))
	}
}

// OnEnd does nothing.
func (SessionSpanProcessor) OnEnd(sdktrace.ReadOnlySpan) {}

// Shutdown does nothing.
func (SessionSpanProcessor) Shutdown(context.Context) error { return nil }

// ForceFlush does nothing.
func (SessionSpanProcessor) ForceFlush(context.Context) error { return nil }
