package journey

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Jaeger's HTTP query API (the one its UI uses: GET /api/traces?service=…
// and GET /api/traces/{traceID}) answers with an envelope whose data is a
// list of traces in Jaeger's JSON model. OpenTelemetry spans reach it
// translated: the parent is the first CHILD_OF reference, links are
// FOLLOWS_FROM references (their attributes dropped), the kind is the tag
// span.kind, the status the tags otel.status_code and
// otel.status_description (and error=true), the service the process's
// serviceName, times in microseconds.

type jaegerResponse struct {
	Data   []jaegerTrace `json:"data"`
	Errors []struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	} `json:"errors"`
}

type jaegerTrace struct {
	TraceID   string                   `json:"traceID"`
	Spans     []jaegerSpan             `json:"spans"`
	Processes map[string]jaegerProcess `json:"processes"`
}

type jaegerSpan struct {
	TraceID       string           `json:"traceID"`
	SpanID        string           `json:"spanID"`
	OperationName string           `json:"operationName"`
	References    []jaegerRef      `json:"references"`
	StartTime     int64            `json:"startTime"` // microseconds since the epoch
	Duration      int64            `json:"duration"`  // microseconds
	Tags          []jaegerKeyValue `json:"tags"`
	Logs          []struct {
		Fields []jaegerKeyValue `json:"fields"`
	} `json:"logs"`
	ProcessID string `json:"processID"`
}

type jaegerRef struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

type jaegerProcess struct {
	ServiceName string `json:"serviceName"`
}

type jaegerKeyValue struct {
	Key   string          `json:"key"`
	Type  string          `json:"type"`
	Value json.RawMessage `json:"value"`
}

// JaegerError is an error Jaeger's query API reported in its response.
type JaegerError struct {
	Code int
	Msg  string
}

func (e *JaegerError) Error() string { return fmt.Sprintf("jaeger: %s (code %d)", e.Msg, e.Code) }

// ErrNotJaeger reports a response that is not Jaeger's query API JSON.
var ErrNotJaeger = errors.New("journey: not a Jaeger query API response")

// ReadJaeger reads a response of Jaeger's HTTP query API, from
// /api/traces or /api/traces/{traceID}, and returns every span in it. When
// the response carries errors and no trace, the first error is returned as
// a *JaegerError. Link types, which Jaeger drops, are left empty for
// Assemble to infer.
func ReadJaeger(r io.Reader) ([]Span, error) {
	body, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("journey: read Jaeger response: %w", err)
	}
	var resp jaegerResponse
	d := json.NewDecoder(bytes.NewReader(body))
	if err := d.Decode(&resp); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotJaeger, err)
	}
	if len(resp.Data) == 0 && len(resp.Errors) > 0 {
		return nil, &JaegerError{Code: resp.Errors[0].Code, Msg: resp.Errors[0].Msg}
	}
	var out []Span
	for _, t := range resp.Data {
		for _, js := range t.Spans {
			s, err := spanFromJaeger(js, t.Processes)
			if err != nil {
				return out, err
			}
			out = append(out, s)
		}
	}
	return out, nil
}

// jaegerTraceID reads a Jaeger trace ID: 32 hex digits, or 16 for a 64-bit
// ID (Jaeger drops leading zeros too).
func jaegerTraceID(s string) (trace.TraceID, error) {
	if len(s) < 32 {
		s = strings.Repeat("0", 32-len(s)) + s
	}
	return trace.TraceIDFromHex(s)
}

func jaegerSpanID(s string) (trace.SpanID, error) {
	if len(s) < 16 {
		s = strings.Repeat("0", 16-len(s)) + s
	}
	return trace.SpanIDFromHex(s)
}

func spanFromJaeger(js jaegerSpan, procs map[string]jaegerProcess) (Span, error) {
	s := Span{Name: js.OperationName, Service: procs[js.ProcessID].ServiceName, Attrs: map[string]string{},
		Start: time.UnixMicro(js.StartTime), End: time.UnixMicro(js.StartTime + js.Duration)}
	var err error
	if s.TraceID, err = jaegerTraceID(js.TraceID); err != nil {
		return s, fmt.Errorf("journey: Jaeger span %q: traceID %q: %w", js.OperationName, js.TraceID, err)
	}
	if s.SpanID, err = jaegerSpanID(js.SpanID); err != nil {
		return s, fmt.Errorf("journey: Jaeger span %q: spanID %q: %w", js.OperationName, js.SpanID, err)
	}
	for _, r := range js.References {
		t, terr := jaegerTraceID(r.TraceID)
		id, serr := jaegerSpanID(r.SpanID)
		if terr != nil || serr != nil {
			return s, fmt.Errorf("journey: Jaeger span %q: reference %s/%s: %w", js.OperationName, r.TraceID,
				r.SpanID, errors.Join(terr, serr))
		}
		if r.RefType == "CHILD_OF" && t == s.TraceID && !s.Parent.IsValid() {
			s.Parent = id
			continue
		}
		s.Links = append(s.Links, Link{TraceID: t, SpanID: id})
	}
	for _, kv := range js.Tags {
		v := jaegerValue(kv)
		switch kv.Key {
		case "span.kind":
			s.Kind = parseKind(v)
		case "otel.status_code":
			s.Error = s.Error || v == "ERROR"
		case "otel.status_description":
			s.StatusMessage = v
		case "error":
			s.Error = s.Error || v == "true"
		case "internal.span.format":
		default:
			s.Attrs[kv.Key] = v
		}
	}
	if s.Kind == trace.SpanKindUnspecified {
		s.Kind = trace.SpanKindInternal // the translation writes no span.kind for internal spans
	}
	// An exporter may keep a link's attributes as a log with event=link
	// (the OpenTelemetry to Jaeger mapping allows it).
	for _, l := range js.Logs {
		f := map[string]string{}
		for _, kv := range l.Fields {
			f[kv.Key] = jaegerValue(kv)
		}
		if f["event"] != "link" || f[LinkTypeKey] == "" {
			continue
		}
		for i := range s.Links {
			if s.Links[i].SpanID.String() == f["span_id"] {
				s.Links[i].Type = f[LinkTypeKey]
			}
		}
	}
	return s, nil
}

// jaegerValue renders a tag's value as the OpenTelemetry attribute it came
// from would be rendered (Span.Attrs).
func jaegerValue(kv jaegerKeyValue) string {
	var s string
	if json.Unmarshal(kv.Value, &s) == nil {
		return s
	}
	var b bool
	if json.Unmarshal(kv.Value, &b) == nil {
		return strconv.FormatBool(b)
	}
	var n json.Number
	d := json.NewDecoder(bytes.NewReader(kv.Value))
	d.UseNumber()
	if d.Decode(&n) == nil {
		if kv.Type == "float64" {
			if f, err := n.Float64(); err == nil {
				return fmt.Sprint(f)
			}
		}
		return n.String()
	}
	return string(kv.Value)
}
