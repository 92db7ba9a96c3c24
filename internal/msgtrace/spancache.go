package msgtrace

import (
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Span starts are split in two on purpose. At start the span gets only the
// attributes the messaging semantic conventions list as available to
// samplers (system, operation type and name, destination name or template,
// consumer group, server address and port, batch size) plus
// tracebridge.attempt, which is one integer and what a sampler needs to keep
// every retry. Everything else (message id, body size, partition, broker
// keys and offsets, session.id) is set afterwards and only when the span
// records: samplers see what the spec says they may use, and an unsampled
// message pays for none of the rest.
//
// The start-time part depends only on the operation and where the message
// goes, so it is built once per (operation, destination, server) and
// shared: span name, attribute slice, start options and the metric
// attribute sets.

// maxSpanEntries bounds the cache: destinations can be unbounded (reply
// subjects, per-tenant topics), and past this a start builds its entry
// afresh instead of growing memory without limit.
const maxSpanEntries = 1024

// maxSpanKeyBytes bounds the strings of a cached entry's key. A
// destination can come from the message (a NATS subject a publisher
// chose), so an entry for a longer one is built afresh on every start
// instead of being kept: with it an entry holds at most about 4 KiB (key,
// span name, attribute and option slices, metric sets) plus one metric set
// per error type, at most maxErrorSets.
const maxSpanKeyBytes = 1024

// maxErrorSets bounds the per-entry cache of metric sets by error.type.
const maxErrorSets = 32

type spanKey struct {
	op, opType string
	kind       trace.SpanKind
	dest, tmpl string
	group      string
	addr       string
	port       int
}

type spanEntry struct {
	name  string
	attrs []attribute.KeyValue    // sampling-relevant, shared read-only
	opts  []trace.SpanStartOption // kind and attrs, shared read-only
	// first and firstRoot are opts for a first attempt without links,
	// parented and as a new root: the common delivery, started without
	// building an option slice.
	first, firstRoot []trace.SpanStartOption
	// ok is the metric attribute set of a successful operation.
	ok     metric.MeasurementOption
	errs   atomic.Pointer[map[string]metric.MeasurementOption]
	errsMu sync.Mutex
	sys    attribute.KeyValue
	op     string
	dest   string
}

// spanCache is read on every message without a lock: the map behind the
// pointer is never written after it is published, and a miss replaces it
// with a copy.
type spanCache struct {
	m  atomic.Pointer[map[spanKey]*spanEntry]
	mu sync.Mutex
}

// Kinds are fixed per operation; building the option once keeps its
// interface boxing off the per-message path.
var kindOpts = map[trace.SpanKind]trace.SpanStartOption{
	trace.SpanKindProducer: trace.WithSpanKind(trace.SpanKindProducer),
	trace.SpanKindConsumer: trace.WithSpanKind(trace.SpanKindConsumer),
	trace.SpanKindClient:   trace.WithSpanKind(trace.SpanKindClient),
}

var newRootOpt = trace.WithNewRoot()

// attemptOpts covers the attempts nearly every message has, so passing the
// attempt at start costs no allocation.
var attemptOpts = func() []trace.SpanStartOption {
	o := make([]trace.SpanStartOption, 9)
	for i := 1; i < len(o); i++ {
		o[i] = trace.WithAttributes(AttemptKey.Int(i))
	}
	return o
}()

func attemptOpt(n int) trace.SpanStartOption {
	if n > 0 && n < len(attemptOpts) {
		return attemptOpts[n]
	}
	return trace.WithAttributes(AttemptKey.Int(n))
}

// Link attributes are shared by every link of a type; the SDK keeps the
// slice as given and never writes to it, and the full slice expression
// makes any append copy.
var linkAttrs = map[string][]attribute.KeyValue{}

func init() {
	for _, k := range []string{LinkCreation, LinkPreviousAttempt, LinkAmbient, LinkBatchMessage, LinkReply} {
		a := []attribute.KeyValue{LinkTypeKey.String(k)}
		linkAttrs[k] = a[:1:1]
	}
}

func (t *Tracer) entry(op string, opType attribute.KeyValue, kind trace.SpanKind, m *Message) *spanEntry {
	k := spanKey{op: op, opType: opType.Value.AsString(), kind: kind, dest: m.Destination,
		tmpl: m.DestinationTemplate, addr: m.ServerAddress, group: m.ConsumerGroup}
	if m.ServerAddress != "" {
		k.port = m.ServerPort
	}
	if mp := t.spans.m.Load(); mp != nil {
		if e, ok := (*mp)[k]; ok {
			return e
		}
	}
	e := t.newEntry(&k, opType)
	if len(k.op)+len(k.opType)+len(k.dest)+len(k.tmpl)+len(k.group)+len(k.addr) > maxSpanKeyBytes {
		return e
	}
	t.spans.mu.Lock()
	defer t.spans.mu.Unlock()
	old := t.spans.m.Load()
	if old != nil {
		if cur, ok := (*old)[k]; ok {
			return cur
		}
		if len(*old) >= maxSpanEntries {
			return e
		}
	}
	var n map[spanKey]*spanEntry
	if old == nil {
		n = map[spanKey]*spanEntry{k: e}
	} else {
		n = make(map[spanKey]*spanEntry, len(*old)+1)
		for kk, v := range *old {
			n[kk] = v
		}
		n[k] = e
	}
	t.spans.m.Store(&n)
	return e
}

func (t *Tracer) newEntry(k *spanKey, opType attribute.KeyValue) *spanEntry {
	a := make([]attribute.KeyValue, 0, 8)
	a = append(a, t.sysAttr, opType, semconv.MessagingOperationName(k.op))
	if k.dest != "" {
		a = append(a, semconv.MessagingDestinationName(k.dest))
	}
	if k.tmpl != "" {
		a = append(a, semconv.MessagingDestinationTemplate(k.tmpl))
	}
	if k.group != "" {
		a = append(a, semconv.MessagingConsumerGroupName(k.group))
	}
	if k.addr != "" {
		a = append(a, semconv.ServerAddress(k.addr))
		if k.port > 0 {
			a = append(a, semconv.ServerPort(k.port))
		}
	}
	a = a[:len(a):len(a)]
	// A first attempt's tracebridge.attempt goes into the same attribute
	// option: the SDK appends each option's attributes to its start
	// config in turn, so a second option would regrow that slice, one
	// allocation and the size of the first slice again, on every message.
	first := append(a, AttemptKey.Int(1))
	opts := []trace.SpanStartOption{kindOpts[k.kind], trace.WithAttributes(a...)}
	firstOpts := []trace.SpanStartOption{kindOpts[k.kind], trace.WithAttributes(first...), newRootOpt}
	return &spanEntry{
		name:      spanName(k.op, k.dest, k.tmpl),
		attrs:     a,
		opts:      opts,
		first:     firstOpts[:2:2],
		firstRoot: firstOpts[:3:3],
		ok:        metricSet(t.sysAttr, k.op, k.dest, ""),
		sys:       t.sysAttr,
		op:        k.op,
		dest:      k.dest,
	}
}

func metricSet(sys attribute.KeyValue, op, dest, errType string) metric.MeasurementOption {
	attrs := []attribute.KeyValue{sys, semconv.MessagingOperationName(op), semconv.MessagingDestinationName(dest)}
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
	}
	return metric.WithAttributeSet(attribute.NewSet(attrs...))
}

// metricOpt is the metric attribute set of an operation that ended with
// err, from the cache while it has room.
func (e *spanEntry) metricOpt(err error) metric.MeasurementOption {
	if err == nil {
		return e.ok
	}
	et := ErrorType(err)
	if mp := e.errs.Load(); mp != nil {
		if o, ok := (*mp)[et]; ok {
			return o
		}
	}
	o := metricSet(e.sys, e.op, e.dest, et)
	e.errsMu.Lock()
	defer e.errsMu.Unlock()
	old := e.errs.Load()
	if old != nil && len(*old) >= maxErrorSets {
		return o
	}
	n := make(map[string]metric.MeasurementOption, 1)
	if old != nil {
		for k, v := range *old {
			n[k] = v
		}
	}
	n[et] = o
	e.errs.Store(&n)
	return o
}
