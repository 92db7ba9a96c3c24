// Package sampleprobe is the handshake between tracebridge's components
// and its session sampler. A tracer provider does not show its sampler, so
// a component that wants to know what the sampler does under an unsampled
// parent starts a few probe spans (named SpanName) under such a parent,
// with a Report in their context. A sampler that can say exactly when it
// records a span under an unsampled parent fills the Report in; any other
// sampler just decides, and the probe learns from the span whether it
// records.
package sampleprobe

import "context"

// SpanName is the name of the probe spans. A sampler compares the span
// name before it looks for a Report, so ordinary spans cost it one string
// comparison.
const SpanName = "tracebridge.sampler.probe"

// Report is what a sampler tells the probe. Probe spans start
// synchronously, one at a time, so it needs no lock.
type Report struct {
	// Records, when set, reports whether the sampler records a span
	// started under ctx, whose span context is a valid parent that is not
	// sampled. Every other span under such a parent is dropped.
	Records func(ctx context.Context) bool
}

type key struct{}

// ContextWith returns a copy of ctx that carries r to the sampler.
func ContextWith(ctx context.Context, r *Report) context.Context {
	return context.WithValue(ctx, key{}, r)
}

// FromContext returns the Report that ctx carries, or nil.
func FromContext(ctx context.Context) *Report {
	r, _ := ctx.Value(key{}).(*Report)
	return r
}
