package msgtrace

import (
	"context"

	"go.opentelemetry.io/otel/metric"
)

// durationBuckets are the explicit bucket boundaries the messaging semantic
// conventions prescribe for messaging.*.duration, in seconds.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// Metrics are the semconv messaging instruments plus tracebridge's own
// retry and dead-letter counters.
type Metrics struct {
	OperationDuration metric.Float64Histogram
	ProcessDuration   metric.Float64Histogram
	Sent              metric.Int64Counter
	Consumed          metric.Int64Counter
	Retries           metric.Int64Counter
	DeadLetters       metric.Int64Counter
}

// NewMetrics creates the instruments on a meter. Creation errors leave a
// no-op instrument in place: metrics must never stop a message.
func NewMetrics(m metric.Meter) *Metrics {
	var x Metrics
	x.OperationDuration, _ = m.Float64Histogram("messaging.client.operation.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of messaging operation initiated by a producer or consumer client."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	x.ProcessDuration, _ = m.Float64Histogram("messaging.process.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of processing operation."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	x.Sent, _ = m.Int64Counter("messaging.client.sent.messages",
		metric.WithUnit("{message}"), metric.WithDescription("Number of messages producer attempted to send to the broker."))
	x.Consumed, _ = m.Int64Counter("messaging.client.consumed.messages",
		metric.WithUnit("{message}"), metric.WithDescription("Number of messages that were delivered to the application."))
	x.Retries, _ = m.Int64Counter("tracebridge.retries",
		metric.WithUnit("{attempt}"), metric.WithDescription("Failed attempts that will be retried."))
	x.DeadLetters, _ = m.Int64Counter("tracebridge.dead_letters",
		metric.WithUnit("{message}"), metric.WithDescription("Messages or jobs given up after their last attempt."))
	return &x
}

// producerEnabled reports whether a producer operation has anything to
// record, so the hot path can skip the clock and attributes when no SDK is
// installed.
func (x *Metrics) producerEnabled(ctx context.Context) bool {
	return x.OperationDuration != nil && x.OperationDuration.Enabled(ctx) ||
		x.Sent != nil && x.Sent.Enabled(ctx)
}

// processEnabled is producerEnabled for process spans.
func (x *Metrics) processEnabled(ctx context.Context) bool {
	return x.ProcessDuration != nil && x.ProcessDuration.Enabled(ctx) ||
		x.Consumed != nil && x.Consumed.Enabled(ctx)
}
