package journey

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Attribute keys a journey reads. They are the ones tracebridge writes (see
// the README's "Spans and links").
const (
	SessionKey     = string(semconv.SessionIDKey)       // session.id
	SystemKey      = string(semconv.MessagingSystemKey) // messaging.system
	DestinationKey = string(semconv.MessagingDestinationNameKey)
	AttemptKey     = string(msgtrace.AttemptKey)    // tracebridge.attempt
	RetryFinalKey  = string(msgtrace.RetryFinalKey) // tracebridge.retry.final
	LinkTypeKey    = string(msgtrace.LinkTypeKey)   // tracebridge.link.type, on links
	ErrorTypeKey   = string(semconv.ErrorTypeKey)   // error.type
	serviceNameKey = string(semconv.ServiceNameKey)
)

// Link types: the values of tracebridge.link.type.
const (
	LinkCreation        = msgtrace.LinkCreation
	LinkPreviousAttempt = msgtrace.LinkPreviousAttempt
	LinkAmbient         = msgtrace.LinkAmbient
	LinkBatchMessage    = msgtrace.LinkBatchMessage
	LinkReply           = msgtrace.LinkReply
)

// Span is one finished span, as much of it as a journey needs. Spans come
// from the OpenTelemetry SDK (FromSDK) or from a trace store (ReadOTLP,
// ReadJaeger); a journey is assembled from them whatever their source.
type Span struct {
	TraceID trace.TraceID
	SpanID  trace.SpanID
	// Parent is the parent span's ID, on the same trace; zero for a root.
	Parent  trace.SpanID
	Name    string
	Kind    trace.SpanKind
	Service string // service.name of the span's resource
	Start   time.Time
	End     time.Time
	// Attrs are the span's attributes, each value as a string (an int
	// attribute 2 is "2", a bool true is "true").
	Attrs map[string]string
	Links []Link
	// Error is whether the span's status is Error; StatusMessage is the
	// status description.
	Error         bool
	StatusMessage string
}

// Link is a span link.
type Link struct {
	TraceID trace.TraceID
	SpanID  trace.SpanID
	// Type is the link's tracebridge.link.type (LinkCreation,
	// LinkPreviousAttempt, ...). A store that drops link attributes, as
	// Jaeger does, leaves it empty; Assemble then infers it.
	Type string
}

// Duration is how long the span took.
func (s Span) Duration() time.Duration { return s.End.Sub(s.Start) }

// Session is the span's session.id, "" if it has none.
func (s Span) Session() string { return s.Attrs[SessionKey] }

// System is the span's messaging.system, or "http" for an HTTP server or
// client span.
func (s Span) System() string {
	if v := s.Attrs[SystemKey]; v != "" {
		return v
	}
	if (s.Kind == trace.SpanKindServer || s.Kind == trace.SpanKindClient) &&
		(s.Attrs[string(semconv.HTTPRequestMethodKey)] != "" || s.Attrs["http.method"] != "") {
		return "http"
	}
	return ""
}

// Attempt is the span's tracebridge.attempt, 0 when it has none.
func (s Span) Attempt() int {
	n, err := strconv.Atoi(s.Attrs[AttemptKey])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// Failed reports whether the span records a failure: status Error, or an
// error.type (a failed attempt that will be retried keeps status Unset).
func (s Span) Failed() bool { return s.Error || s.Attrs[ErrorTypeKey] != "" }

func (s Span) key() spanKey { return spanKey{s.TraceID, s.SpanID} }

// FromSDK converts a span of the OpenTelemetry SDK, as a span processor or
// exporter receives it.
func FromSDK(s sdktrace.ReadOnlySpan) Span {
	out := Span{
		TraceID: s.SpanContext().TraceID(),
		SpanID:  s.SpanContext().SpanID(),
		Name:    s.Name(),
		Kind:    s.SpanKind(),
		Start:   s.StartTime(),
		End:     s.EndTime(),
		Attrs:   attrMap(s.Attributes()),
	}
	if p := s.Parent(); p.IsValid() && p.TraceID() == out.TraceID {
		out.Parent = p.SpanID()
	}
	if r := s.Resource(); r != nil {
		if v, ok := r.Set().Value(attribute.Key(serviceNameKey)); ok {
			out.Service = v.String()
		}
	}
	for _, l := range s.Links() {
		out.Links = append(out.Links, Link{TraceID: l.SpanContext.TraceID(), SpanID: l.SpanContext.SpanID(),
			Type: attrMap(l.Attributes)[LinkTypeKey]})
	}
	if st := s.Status(); st.Code == codes.Error {
		out.Error, out.StatusMessage = true, st.Description
	}
	return out
}

// FromSDKSpans converts spans with FromSDK.
func FromSDKSpans(spans []sdktrace.ReadOnlySpan) []Span {
	out := make([]Span, len(spans))
	for i, s := range spans {
		out[i] = FromSDK(s)
	}
	return out
}

func attrMap(kvs []attribute.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

// kindName is the lower-case name of a span kind, as Jaeger's span.kind tag
// and the waterfall write it.
func kindName(k trace.SpanKind) string { return strings.ToLower(k.String()) }

// parseKind reads a kind name: "server", "SPAN_KIND_SERVER", "Server".
func parseKind(s string) trace.SpanKind {
	switch strings.TrimPrefix(strings.ToLower(s), "span_kind_") {
	case "internal":
		return trace.SpanKindInternal
	case "server":
		return trace.SpanKindServer
	case "client":
		return trace.SpanKindClient
	case "producer":
		return trace.SpanKindProducer
	case "consumer":
		return trace.SpanKindConsumer
	}
	return trace.SpanKindUnspecified
}

// spanJSON is how a Span is written as JSON: IDs in hex, the kind by name,
// no parent for a root.
type spanJSON struct {
	TraceID       string            `json:"traceId"`
	SpanID        string            `json:"spanId"`
	Parent        string            `json:"parentSpanId,omitempty"`
	Name          string            `json:"name"`
	Kind          string            `json:"kind"`
	Service       string            `json:"service,omitempty"`
	Start         time.Time         `json:"start"`
	End           time.Time         `json:"end"`
	DurationNanos int64             `json:"durationNanos"`
	Attrs         map[string]string `json:"attributes,omitempty"`
	Links         []Link            `json:"links,omitempty"`
	Error         bool              `json:"error,omitempty"`
	StatusMessage string            `json:"statusMessage,omitempty"`
}

// MarshalJSON writes the span with hex IDs and its kind by name.
func (s Span) MarshalJSON() ([]byte, error) {
	j := spanJSON{TraceID: s.TraceID.String(), SpanID: s.SpanID.String(), Name: s.Name, Kind: kindName(s.Kind),
		Service: s.Service, Start: s.Start, End: s.End, DurationNanos: int64(s.Duration()), Attrs: s.Attrs,
		Links: s.Links, Error: s.Error, StatusMessage: s.StatusMessage}
	if s.Parent.IsValid() {
		j.Parent = s.Parent.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (s *Span) UnmarshalJSON(b []byte) error {
	var j spanJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	out := Span{Name: j.Name, Kind: parseKind(j.Kind), Service: j.Service, Start: j.Start, End: j.End,
		Attrs: j.Attrs, Links: j.Links, Error: j.Error, StatusMessage: j.StatusMessage}
	var err error
	if out.TraceID, err = trace.TraceIDFromHex(j.TraceID); err != nil {
		return err
	}
	if out.SpanID, err = trace.SpanIDFromHex(j.SpanID); err != nil {
		return err
	}
	if j.Parent != "" {
		if out.Parent, err = trace.SpanIDFromHex(j.Parent); err != nil {
			return err
		}
	}
	*s = out
	return nil
}

type linkJSON struct {
	TraceID string `json:"traceId"`
	SpanID  string `json:"spanId"`
	Type    string `json:"type,omitempty"`
}

// MarshalJSON writes the link with hex IDs.
func (l Link) MarshalJSON() ([]byte, error) {
	return json.Marshal(linkJSON{l.TraceID.String(), l.SpanID.String(), l.Type})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (l *Link) UnmarshalJSON(b []byte) error {
	var j linkJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	t, err := trace.TraceIDFromHex(j.TraceID)
	if err != nil {
		return err
	}
	s, err := trace.SpanIDFromHex(j.SpanID)
	if err != nil {
		return err
	}
	*l = Link{TraceID: t, SpanID: s, Type: j.Type}
	return nil
}
