package journey

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// OTLP JSON, as the OpenTelemetry Collector's file exporter writes it: one
// ExportTraceServiceRequest per line, in the OTLP/JSON encoding. That is
// the Protobuf JSON mapping with two differences the protocol prescribes:
// trace and span IDs are hex strings, not base64, and enums are numbers.
// protojson does the rest; the IDs are converted on the way in and out.

// OTLPWriter is an OpenTelemetry span exporter that writes spans as OTLP
// JSON lines, the format the Collector's file exporter writes and
// `tracebridge journey --otlp FILE` reads. Install it with
// sdktrace.WithSyncer (or WithBatcher) in any number of tracer providers;
// it is safe for concurrent use. Shutdown does not close the writer, which
// stays the caller's; it reports the first write error, if any, so a
// provider's Shutdown does.
type OTLPWriter struct {
	mu  sync.Mutex
	w   io.Writer
	err error // the first write error; later exports fail with it
}

var _ sdktrace.SpanExporter = (*OTLPWriter)(nil)

// NewOTLPWriter returns an exporter that writes to w.
func NewOTLPWriter(w io.Writer) *OTLPWriter { return &OTLPWriter{w: w} }

// ExportSpans writes spans as one line: an ExportTraceServiceRequest with a
// ResourceSpans per resource and a ScopeSpans per instrumentation scope.
func (o *OTLPWriter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	if len(spans) == 0 {
		return nil
	}
	line, err := MarshalOTLP(spans)
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	if _, err := o.w.Write(append(line, '\n')); err != nil {
		o.err = fmt.Errorf("journey: write OTLP JSON: %w", err)
		return o.err
	}
	return nil
}

// Shutdown returns the first write error, if any. It does not close the
// writer, which belongs to the caller.
func (o *OTLPWriter) Shutdown(context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

// MarshalOTLP encodes spans as one OTLP JSON ExportTraceServiceRequest
// (without a trailing newline).
func MarshalOTLP(spans []sdktrace.ReadOnlySpan) ([]byte, error) {
	req := &coltracepb.ExportTraceServiceRequest{}
	type scopeKey struct {
		res   *resource.Resource
		scope instrumentation.Scope
	}
	resIdx := map[*resource.Resource]*tracepb.ResourceSpans{}
	scopeIdx := map[scopeKey]*tracepb.ScopeSpans{}
	for _, s := range spans {
		res := s.Resource()
		rs, ok := resIdx[res]
		if !ok {
			rs = &tracepb.ResourceSpans{Resource: &resourcepb.Resource{}}
			if res != nil {
				rs.Resource.Attributes = keyValues(res.Attributes())
				rs.SchemaUrl = res.SchemaURL()
			}
			resIdx[res] = rs
			req.ResourceSpans = append(req.ResourceSpans, rs)
		}
		sk := scopeKey{res, s.InstrumentationScope()}
		ss, ok := scopeIdx[sk]
		if !ok {
			sc := s.InstrumentationScope()
			ss = &tracepb.ScopeSpans{Scope: &commonpb.InstrumentationScope{Name: sc.Name, Version: sc.Version,
				Attributes: keyValues(sc.Attributes.ToSlice())}, SchemaUrl: sc.SchemaURL}
			scopeIdx[sk] = ss
			rs.ScopeSpans = append(rs.ScopeSpans, ss)
		}
		ss.Spans = append(ss.Spans, spanProto(s))
	}
	b, err := protojson.MarshalOptions{UseEnumNumbers: true}.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("journey: encode OTLP JSON: %w", err)
	}
	return convertIDs(b, base64ToHex)
}

func spanProto(s sdktrace.ReadOnlySpan) *tracepb.Span {
	sc := s.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	p := &tracepb.Span{
		TraceId: tid[:], SpanId: sid[:], TraceState: sc.TraceState().String(), Name: s.Name(),
		Flags:             uint32(sc.TraceFlags()),
		Kind:              tracepb.Span_SpanKind(s.SpanKind()), // the same numbers
		StartTimeUnixNano: unixNano(s.StartTime()), EndTimeUnixNano: unixNano(s.EndTime()),
		Attributes: keyValues(s.Attributes()), DroppedAttributesCount: clampUint32(s.DroppedAttributes()),
		DroppedEventsCount: clampUint32(s.DroppedEvents()), DroppedLinksCount: clampUint32(s.DroppedLinks()),
	}
	if parent := s.Parent(); parent.IsValid() {
		pid := parent.SpanID()
		p.ParentSpanId = pid[:]
	}
	for _, e := range s.Events() {
		p.Events = append(p.Events, &tracepb.Span_Event{TimeUnixNano: unixNano(e.Time), Name: e.Name,
			Attributes: keyValues(e.Attributes), DroppedAttributesCount: clampUint32(e.DroppedAttributeCount)})
	}
	for _, l := range s.Links() {
		lt, ls := l.SpanContext.TraceID(), l.SpanContext.SpanID()
		p.Links = append(p.Links, &tracepb.Span_Link{TraceId: lt[:], SpanId: ls[:],
			TraceState: l.SpanContext.TraceState().String(), Flags: uint32(l.SpanContext.TraceFlags()),
			Attributes: keyValues(l.Attributes), DroppedAttributesCount: clampUint32(l.DroppedAttributeCount)})
	}
	switch st := s.Status(); st.Code {
	case codes.Error:
		p.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: st.Description}
	case codes.Ok:
		p.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_OK}
	default:
		p.Status = &tracepb.Status{}
	}
	return p
}

func unixNano(t time.Time) uint64 {
	if t.IsZero() || t.UnixNano() < 0 {
		return 0
	}
	return uint64(t.UnixNano())
}

func clampUint32(n int) uint32 { return uint32(min(max(n, 0), math.MaxUint32)) }

func keyValues(kvs []attribute.KeyValue) []*commonpb.KeyValue {
	out := make([]*commonpb.KeyValue, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, &commonpb.KeyValue{Key: string(kv.Key), Value: anyValue(kv.Value)})
	}
	return out
}

func anyValue(v attribute.Value) *commonpb.AnyValue {
	array := func(vs []*commonpb.AnyValue) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vs}}}
	}
	switch v.Type() {
	case attribute.BOOL:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: v.AsBool()}}
	case attribute.INT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v.AsInt64()}}
	case attribute.FLOAT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: v.AsFloat64()}}
	case attribute.STRING:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v.AsString()}}
	case attribute.BYTESLICE:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: v.AsByteSlice()}}
	case attribute.BOOLSLICE:
		var vs []*commonpb.AnyValue
		for _, b := range v.AsBoolSlice() {
			vs = append(vs, anyValue(attribute.BoolValue(b)))
		}
		return array(vs)
	case attribute.INT64SLICE:
		var vs []*commonpb.AnyValue
		for _, n := range v.AsInt64Slice() {
			vs = append(vs, anyValue(attribute.Int64Value(n)))
		}
		return array(vs)
	case attribute.FLOAT64SLICE:
		var vs []*commonpb.AnyValue
		for _, f := range v.AsFloat64Slice() {
			vs = append(vs, anyValue(attribute.Float64Value(f)))
		}
		return array(vs)
	case attribute.STRINGSLICE:
		var vs []*commonpb.AnyValue
		for _, s := range v.AsStringSlice() {
			vs = append(vs, anyValue(attribute.StringValue(s)))
		}
		return array(vs)
	case attribute.SLICE:
		var vs []*commonpb.AnyValue
		for _, e := range v.AsSlice() {
			vs = append(vs, anyValue(e))
		}
		return array(vs)
	case attribute.MAP:
		kv := &commonpb.KeyValueList{}
		for _, e := range v.AsMap() {
			kv.Values = append(kv.Values, &commonpb.KeyValue{Key: string(e.Key), Value: anyValue(e.Value)})
		}
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: kv}}
	}
	return &commonpb.AnyValue{}
}

// ReadOTLP reads OTLP JSON lines (what OTLPWriter and the Collector's file
// exporter write) and returns every span in them. Empty lines are skipped;
// a line that is not an ExportTraceServiceRequest is an error naming it.
// Fields it does not know are ignored, so newer OTLP versions still read.
func ReadOTLP(r io.Reader) ([]Span, error) {
	br := bufio.NewReader(r)
	var out []Span
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			spans, perr := UnmarshalOTLP(line)
			if perr != nil {
				return out, fmt.Errorf("line %d: %w", n, perr)
			}
			out = append(out, spans...)
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("journey: read OTLP JSON line %d: %w", n, err)
		}
	}
}

// UnmarshalOTLP decodes one OTLP JSON ExportTraceServiceRequest.
func UnmarshalOTLP(b []byte) ([]Span, error) {
	b, err := convertIDs(b, hexToBase64)
	if err != nil {
		return nil, err
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("journey: not an OTLP JSON ExportTraceServiceRequest: %w", err)
	}
	var out []Span
	for _, rs := range req.GetResourceSpans() {
		service := anyString(findAttr(rs.GetResource().GetAttributes(), serviceNameKey))
		for _, ss := range rs.GetScopeSpans() {
			for _, p := range ss.GetSpans() {
				s, err := spanFromProto(p, service)
				if err != nil {
					return out, err
				}
				out = append(out, s)
			}
		}
	}
	return out, nil
}

func spanFromProto(p *tracepb.Span, service string) (Span, error) {
	s := Span{Name: p.GetName(), Kind: trace.SpanKind(p.GetKind()), Service: service,
		Start: time.Unix(0, int64(p.GetStartTimeUnixNano())), End: time.Unix(0, int64(p.GetEndTimeUnixNano())),
		Attrs: map[string]string{}}
	if !copyID(s.TraceID[:], p.GetTraceId()) || !copyID(s.SpanID[:], p.GetSpanId()) {
		return s, fmt.Errorf("journey: span %q: trace ID %x or span ID %x of the wrong length", p.GetName(),
			p.GetTraceId(), p.GetSpanId())
	}
	if len(p.GetParentSpanId()) > 0 && !copyID(s.Parent[:], p.GetParentSpanId()) {
		return s, fmt.Errorf("journey: span %q: parent span ID %x of the wrong length", p.GetName(), p.GetParentSpanId())
	}
	for _, kv := range p.GetAttributes() {
		s.Attrs[kv.GetKey()] = anyString(kv.GetValue())
	}
	for _, l := range p.GetLinks() {
		var link Link
		if !copyID(link.TraceID[:], l.GetTraceId()) || !copyID(link.SpanID[:], l.GetSpanId()) {
			return s, fmt.Errorf("journey: span %q: a link's IDs are of the wrong length", p.GetName())
		}
		link.Type = anyString(findAttr(l.GetAttributes(), LinkTypeKey))
		s.Links = append(s.Links, link)
	}
	if p.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
		s.Error, s.StatusMessage = true, p.GetStatus().GetMessage()
	}
	return s, nil
}

func copyID(dst, src []byte) bool {
	if len(src) != len(dst) {
		return false
	}
	copy(dst, src)
	return true
}

func findAttr(kvs []*commonpb.KeyValue, key string) *commonpb.AnyValue {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue()
		}
	}
	return nil
}

// anyString renders a value as Span.Attrs holds it: as
// attribute.Value.String does, so a span reads the same from the SDK and
// from a file.
func anyString(v *commonpb.AnyValue) string { return attrValue(v).String() }

// attrValue converts an OTLP value back into the attribute it was made of.
func attrValue(v *commonpb.AnyValue) attribute.Value {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return attribute.StringValue(x.StringValue)
	case *commonpb.AnyValue_IntValue:
		return attribute.Int64Value(x.IntValue)
	case *commonpb.AnyValue_BoolValue:
		return attribute.BoolValue(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return attribute.Float64Value(x.DoubleValue)
	case *commonpb.AnyValue_BytesValue:
		return attribute.ByteSliceValue(x.BytesValue)
	case *commonpb.AnyValue_ArrayValue:
		var vs []attribute.Value
		for _, e := range x.ArrayValue.GetValues() {
			vs = append(vs, attrValue(e))
		}
		return attribute.SliceValue(vs...)
	case *commonpb.AnyValue_KvlistValue:
		var kvs []attribute.KeyValue
		for _, kv := range x.KvlistValue.GetValues() {
			kvs = append(kvs, attribute.KeyValue{Key: attribute.Key(kv.GetKey()), Value: attrValue(kv.GetValue())})
		}
		return attribute.MapValue(kvs...)
	}
	return attribute.Value{}
}

// idFields are the OTLP JSON fields that hold trace and span IDs. Object
// keys of OTLP JSON are field names only (attributes are {"key": ...,
// "value": ...} pairs), so a key with one of these names is an ID.
var idFields = map[string]bool{"traceId": true, "spanId": true, "parentSpanId": true}

// convertIDs rewrites every ID field of an OTLP JSON document with conv.
func convertIDs(b []byte, conv func(string) (string, error)) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber() // int64 values stay exact
	var doc any
	if err := d.Decode(&doc); err != nil {
		return nil, fmt.Errorf("journey: not JSON: %w", err)
	}
	if err := walkIDs(doc, conv); err != nil {
		return nil, err
	}
	return json.Marshal(doc)
}

func walkIDs(v any, conv func(string) (string, error)) error {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && idFields[k] {
				c, err := conv(s)
				if err != nil {
					return fmt.Errorf("journey: %s %q: %w", k, s, err)
				}
				x[k] = c
				continue
			}
			if err := walkIDs(e, conv); err != nil {
				return err
			}
		}
	case []any:
		for _, e := range x {
			if err := walkIDs(e, conv); err != nil {
				return err
			}
		}
	}
	return nil
}

func base64ToHex(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// hexToBase64 reads an ID as OTLP/JSON writes it, in hex. An ID that is
// not hex is left for protojson, which reads base64: what a plain
// Protobuf JSON encoder would have written.
func hexToBase64(s string) (string, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 8 && len(b) != 16 && len(b) != 0 {
		return s, nil
	}
	return base64.StdEncoding.EncodeToString(b), nil
}
