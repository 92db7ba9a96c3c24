package carrier_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tracebridge/tracebridge/carrier"
)

// header has the shape of kafka.Header. carrier/ depends on OpenTelemetry
// only, so the tests mirror the type instead of importing kafka-go.
type header struct {
	Key   string
	Value []byte
}

// kafkaHeaders is a []kafka.Header carrier as the kafka package builds it:
// keys are case-sensitive, may repeat, and it implements carrier.ByteCarrier
// so the Propagator reads and writes bytes directly.
type kafkaHeaders struct{ h []header }

var _ carrier.ByteCarrier = (*kafkaHeaders)(nil)

func (k *kafkaHeaders) Get(key string) string {
	for _, h := range k.h {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func (k *kafkaHeaders) Set(key, value string) { k.SetBytes(key, []byte(value)) }

func (k *kafkaHeaders) Keys() []string {
	keys := make([]string, 0, len(k.h))
	for _, h := range k.h {
		keys = append(keys, h.Key)
	}
	return keys
}

func (k *kafkaHeaders) Len() int                  { return len(k.h) }
func (k *kafkaHeaders) At(i int) (string, []byte) { return k.h[i].Key, k.h[i].Value }

// SetBytes replaces every entry named key, so a forwarded message never
// carries two traceparent headers.
func (k *kafkaHeaders) SetBytes(key string, value []byte) {
	i := 0
	for i < len(k.h) && k.h[i].Key != key {
		i++
	}
	if i == len(k.h) { // the common case: nothing to replace
		k.h = append(k.h, header{Key: key, Value: value})
		return
	}
	k.h[i].Value = value
	out := k.h[:i+1]
	for _, h := range k.h[i+1:] {
		if h.Key != key {
			out = append(out, h)
		}
	}
	k.h = out
}

func (k *kafkaHeaders) add(key, value string) { k.h = append(k.h, header{key, []byte(value)}) }

// values returns every value of key, in order.
func (k *kafkaHeaders) values(key string) []string {
	var vs []string
	for _, h := range k.h {
		if h.Key == key {
			vs = append(vs, string(h.Value))
		}
	}
	return vs
}

// stockHeaders is the hand-written []kafka.Header carrier a user of the
// stock propagators would write: Get converts to string, Set appends.
type stockHeaders struct{ h []header }

func (s *stockHeaders) Get(key string) string {
	for _, h := range s.h {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func (s *stockHeaders) Set(key, value string) { s.h = append(s.h, header{key, []byte(value)}) }

func (s *stockHeaders) Keys() []string {
	keys := make([]string, 0, len(s.h))
	for _, h := range s.h {
		keys = append(keys, h.Key)
	}
	return keys
}

// stockPropagator is what OpenTelemetry-Go users install by default.
func stockPropagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// dropMeter reads the tracebridge.propagation.dropped counter.
type dropMeter struct {
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

func newDropMeter(t testing.TB) dropMeter {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return dropMeter{reader: r, mp: mp}
}

// counts returns the counter by "header/reason".
func (d dropMeter) counts(t testing.TB) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := d.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect metrics: %v", err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != carrier.DroppedMetric {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				t.Fatalf("%s is %T, want Sum[int64]", m.Name, m.Data)
			}
			for _, dp := range sum.DataPoints {
				h, _ := dp.Attributes.Value(attribute.Key("tracebridge.header"))
				r, _ := dp.Attributes.Value(attribute.Key("tracebridge.reason"))
				if dp.Value != 0 {
					out[h.AsString()+"/"+r.AsString()] += dp.Value
				}
			}
		}
	}
	return out
}

// newProp returns a propagator whose drops land in a fresh meter.
func newProp(t testing.TB, opts ...carrier.Option) (*carrier.Propagator, dropMeter) {
	d := newDropMeter(t)
	return carrier.NewPropagator(append([]carrier.Option{carrier.WithMeterProvider(d.mp)}, opts...)...), d
}

func equalCounts(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
