package carrier

import (
	"context"
	"log/slog"
	"slices"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/internal/logsafe"
)

// Log attribute keys the LogHandler adds.
const (
	LogTraceID   = "trace_id"
	LogSpanID    = "span_id"
	LogSessionID = "session.id"
)

// LogHandler wraps a slog.Handler and adds the journey of the record's
// context: trace_id, span_id, session.id and allow-listed baggage (as
// baggage.<key>). With it, grep for a session ID finds every log line of
// the journey, in every process.
//
// What it adds can come from outside the system (a baggage value is
// whatever a caller percent-encoded), so it never writes a control
// character: C0 controls, DEL, C1 controls, U+2028 and U+2029, and bytes
// that are not UTF-8, are replaced by U+FFFD. slog's own handlers do not
// escape all of them. The record's other attributes are the caller's and
// pass unchanged.
type LogHandler struct {
	next    slog.Handler
	baggage []string // the baggage keys to log
	keys    []string // their attribute keys: "baggage." and the key, made safe
}

var _ slog.Handler = (*LogHandler)(nil)

// NewLogHandler wraps next. Baggage members named in baggageKeys are logged
// too; keep the list short and free of personal data, since every line
// carries it.
func NewLogHandler(next slog.Handler, baggageKeys ...string) *LogHandler {
	h := &LogHandler{next: next, baggage: slices.Clone(baggageKeys), keys: make([]string, len(baggageKeys))}
	for i, k := range baggageKeys {
		h.keys[i] = logsafe.String("baggage." + k)
	}
	return h
}

// Enabled defers to the wrapped handler.
func (h *LogHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle adds the journey attributes and passes the record on. The record is
// cloned first, because slog records share attribute storage with the
// caller.
func (h *LogHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx == nil {
		return h.next.Handle(ctx, r)
	}
	sc := trace.SpanContextFromContext(ctx)
	sess := SessionFromContext(ctx)
	if !sc.IsValid() && sess == "" && len(h.baggage) == 0 {
		return h.next.Handle(ctx, r)
	}
	r = r.Clone()
	if sc.IsValid() {
		r.AddAttrs(slog.String(LogTraceID, sc.TraceID().String()), slog.String(LogSpanID, sc.SpanID().String()))
	}
	if sess != "" {
		r.AddAttrs(slog.String(LogSessionID, logsafe.String(sess)))
	}
	if len(h.baggage) > 0 {
		b := baggage.FromContext(ctx)
		for i, k := range h.baggage {
			if m := b.Member(k); m.Key() != "" {
				r.AddAttrs(slog.String(h.keys[i], logsafe.String(m.Value())))
			}
		}
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs wraps the wrapped handler's WithAttrs.
func (h *LogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &LogHandler{next: h.next.WithAttrs(attrs), baggage: h.baggage, keys: h.keys}
}

// WithGroup wraps the wrapped handler's WithGroup.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	return &LogHandler{next: h.next.WithGroup(name), baggage: h.baggage, keys: h.keys}
}
