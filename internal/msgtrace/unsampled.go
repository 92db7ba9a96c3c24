package msgtrace

import (
	"context"

	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/internal/sampleprobe"
)

// unsampledMode says what a component does with a message under a parent
// that is valid and not sampled.
type unsampledMode uint8

const (
	// askSampler starts the span as usual, and the SDK asks its sampler:
	// the behaviour when nothing is known about the sampler.
	askSampler unsampledMode = iota
	// skipAlways starts no span: the sampler drops every span under an
	// unsampled parent (sdktrace.ParentBased, the SDK's default), or the
	// user promised so with WithParentBasedSampling.
	skipAlways
	// skipUnlessRecords starts no span unless the sampler said it would
	// record this one (the session sampler does for debug sessions).
	skipUnlessRecords
)

// unsampledPolicy is a Tracer's resolved mode.
type unsampledPolicy struct {
	mode    unsampledMode
	records func(context.Context) bool // for skipUnlessRecords
}

// skipUnder reports whether a span that would start under ctx, whose
// parent is valid and not sampled, can be left unstarted because the
// sampler would not record it anyway.
func (t *Tracer) skipUnder(ctx context.Context) bool {
	switch t.unsampled.mode {
	case skipAlways:
		return true
	case skipUnlessRecords:
		return !t.unsampled.records(ctx)
	}
	return false
}

// resolveUnsampled decides the mode from the options and, unless told
// not to, from a probe of the tracer provider.
func resolveUnsampled(c *Config) unsampledPolicy {
	if c.AskSampler {
		return unsampledPolicy{}
	}
	p := probeUnsampled(c.TracerProvider)
	if p.mode == askSampler && c.ParentBasedSampling {
		p.mode = skipAlways // the user's promise
	}
	return p
}

// Probe trace IDs: the low 8 bytes are all zeros or all ones, the two
// extremes of the randomness every ratio sampler reads there. Any ratio
// sampler with a ratio above 0 samples at least one of them: the SDK's
// TraceIDRatioBased compares the low 63 bits below a bound, an
// OpenTelemetry consistent-probability sampler compares the low 56 bits
// above a threshold.
var probeTraceIDs = [2]trace.TraceID{
	{0x74, 0x62, 0x70, 0x72, 0x6f, 0x62, 0x65, 0x00}, // "tbprobe", then zeros
	{0x74, 0x62, 0x70, 0x72, 0x6f, 0x62, 0x65, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
}

var probeParentSpanID = trace.SpanID{0x74, 0x62, 0x70, 0x72, 0x6f, 0x62, 0x65, 0x01}

// probeUnsampled learns what tp's sampler does under an unsampled parent:
// a tracer provider does not show its sampler, so it starts a few probe
// spans under unsampled parents, remote and local, of the kinds the
// components start, at both extremes of trace-ID randomness. A span that
// records, or a provider that makes no decision of its own (no SDK, or the
// global provider before one is installed: the "span" is the parent
// itself), means nothing is known: every span is started as before. If
// every probe is dropped, the sampler drops children of unsampled parents
// (sdktrace.ParentBased does, with any root sampler), unless the session
// sampler said when it records one (a debug session).
//
// A recording probe span is never ended, so it is never exported; span
// processors see its start. Probes take span IDs from the provider's ID
// generator, and are counted by the SDK's own span metrics when those are
// on. What a probe cannot see is a sampler that decides on attributes,
// span names or context values other than the session's:
// WithoutParentBasedSampling turns the probe off for such a sampler.
func probeUnsampled(tp trace.TracerProvider) unsampledPolicy {
	tr := tp.Tracer(ScopeName, trace.WithInstrumentationVersion(Version))
	report := &sampleprobe.Report{}
	for _, remote := range []bool{true, false} {
		for _, tid := range probeTraceIDs {
			for _, kind := range []trace.SpanKind{trace.SpanKindConsumer, trace.SpanKindProducer, trace.SpanKindClient} {
				parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: probeParentSpanID, Remote: remote})
				ctx := sampleprobe.ContextWith(trace.ContextWithSpanContext(context.Background(), parent), report)
				_, span := tr.Start(ctx, sampleprobe.SpanName, trace.WithSpanKind(kind))
				sc := span.SpanContext()
				if span.IsRecording() || sc.IsSampled() || sc.TraceID() != tid || !sc.SpanID().IsValid() || sc.SpanID() == parent.SpanID() {
					return unsampledPolicy{}
				}
			}
		}
	}
	if report.Records != nil {
		return unsampledPolicy{mode: skipUnlessRecords, records: report.Records}
	}
	return unsampledPolicy{mode: skipAlways}
}
