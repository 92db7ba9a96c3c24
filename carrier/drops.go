package carrier

import (
	"context"
	"log/slog"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tracebridge/tracebridge/internal/logsafe"
)

// dropReason says why part of the incoming or outgoing context was dropped.
type dropReason uint8

const (
	dropInvalid       dropReason = iota // a whole header value is malformed
	dropDuplicate                       // a header or key that must be single appears twice
	dropInvalidMember                   // one list-member is malformed
	dropTooMany                         // over the member limit
	dropTooLarge                        // over the byte limit
	dropUntrusted                       // refused by the untrusted policy
	dropFiltered                        // refused by the produce-side baggage filter
	dropOrphan                          // tracestate without a valid traceparent
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	"invalid", "duplicate", "invalid_member", "too_many_members", "too_large", "untrusted", "filtered", "orphan",
}

// field says which header a drop concerns.
type field uint8

const (
	fieldTraceparent field = iota
	fieldTracestate
	fieldBaggage
	fieldSession
	fieldRetry
	numFields
)

var fieldNames = [numFields]string{"traceparent", "tracestate", "baggage", "session-id", "retry"}

// DroppedMetric is the name of the counter of dropped header content.
const DroppedMetric = "tracebridge.propagation.dropped"

// drops counts what the propagator dropped, in a metric, and logs each kind
// once at debug level so a misbehaving producer is visible without flooding
// the log.
type drops struct {
	counter metric.Int64Counter
	opts    [numFields][numDropReasons][]metric.AddOption
	logged  [numFields][numDropReasons]atomic.Bool
	logger  *slog.Logger
}

func newDrops(mp metric.MeterProvider, logger *slog.Logger) *drops {
	// The log names only the header and the reason, never header content;
	// the safe logger keeps it so if that ever changes.
	d := &drops{logger: logsafe.Logger(logger)}
	c, err := mp.Meter(scope).Int64Counter(DroppedMetric,
		metric.WithDescription("Header content dropped by tracebridge propagation: malformed, over a limit, or refused by policy."),
		metric.WithUnit("{item}"))
	if err == nil {
		d.counter = c
	}
	for f := range numFields {
		for r := range numDropReasons {
			set := attribute.NewSet(
				attribute.String("tracebridge.header", fieldNames[f]),
				attribute.String("tracebridge.reason", dropReasonNames[r]))
			d.opts[f][r] = []metric.AddOption{metric.WithAttributeSet(set)}
		}
	}
	return d
}

func (d *drops) add(f field, r dropReason) { d.addN(f, r, 1) }

// addN counts n drops of one kind at once.
func (d *drops) addN(f field, r dropReason, n int64) {
	if d.counter != nil {
		d.counter.Add(context.Background(), n, d.opts[f][r]...)
	}
	if !d.logged[f][r].Swap(true) {
		d.logger.Debug("tracebridge: dropped header content (logged once per kind)",
			"header", fieldNames[f], "reason", dropReasonNames[r])
	}
}
