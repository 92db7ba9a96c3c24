package jobs

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// registerGauges adds the runner's own instruments next to the messaging
// ones msgtrace records (operation and process durations, sent and
// consumed counts, tracebridge.retries, tracebridge.dead_letters). They are
// observed, not counted, because depth and in-flight are states read at
// collection time; a failure to register leaves the runner without them.
func (r *Runner) registerGauges() {
	m := r.t.MeterProvider.Meter(msgtrace.ScopeName, metric.WithInstrumentationVersion(msgtrace.Version))
	depth, err := m.Int64ObservableUpDownCounter("tracebridge.jobs.queue.depth",
		metric.WithUnit("{job}"), metric.WithDescription("Jobs waiting in the queue, due or delayed."))
	if err != nil {
		return
	}
	inflight, err := m.Int64ObservableUpDownCounter("tracebridge.jobs.inflight",
		metric.WithUnit("{job}"), metric.WithDescription("Job attempts running now."))
	if err != nil {
		return
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(
		semconv.MessagingSystemKey.String(r.q.System()), semconv.MessagingDestinationName(r.q.Name())))
	r.gauges, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if n := r.q.Len(); n >= 0 {
			o.ObserveInt64(depth, int64(n), attrs)
		}
		o.ObserveInt64(inflight, r.nInflight.Load(), attrs)
		return nil
	}, depth, inflight)
}
