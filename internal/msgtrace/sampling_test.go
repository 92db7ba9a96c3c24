package msgtrace_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// seeingSampler records the attribute keys each span start offered it.
type seeingSampler struct {
	sample bool
	mu     sync.Mutex
	seen   map[string][]attribute.Key // by span name
}

func (s *seeingSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]attribute.Key, 0, len(p.Attributes))
	for _, a := range p.Attributes {
		keys = append(keys, a.Key)
	}
	s.seen[p.Name] = keys
	d := sdktrace.Drop
	if s.sample {
		d = sdktrace.RecordAndSample
	}
	return sdktrace.SamplingResult{Decision: d}
}

func (s *seeingSampler) Description() string { return "seeing" }

var (
	sendStartKeys = []attribute.Key{semconv.MessagingSystemKey, semconv.MessagingOperationTypeKey,
		semconv.MessagingOperationNameKey, semconv.MessagingDestinationNameKey, semconv.ServerAddressKey, semconv.ServerPortKey}
	processStartKeys = append(append([]attribute.Key{}, sendStartKeys...),
		semconv.MessagingConsumerGroupNameKey, msgtrace.AttemptKey)
	laterKeys = []attribute.Key{semconv.MessagingMessageIDKey, semconv.MessagingMessageBodySizeKey,
		semconv.MessagingDestinationPartitionIDKey, semconv.MessagingKafkaMessageKeyKey, msgtrace.SessionIDKey}
)

func samplingMessage() msgtrace.Message {
	return msgtrace.Message{Destination: "orders", Partition: "3", ID: "m-1", BodySize: 42,
		ConsumerGroup: "billing", ServerAddress: "broker", ServerPort: 9092,
		Attrs: []attribute.KeyValue{semconv.MessagingKafkaMessageKey("k")}}
}

func sampleBoth(t *testing.T, sample bool) (*seeingSampler, map[string]map[attribute.Key]bool) {
	smp := &seeingSampler{sample: sample, seen: map[string][]attribute.Key{}}
	tel := testenv.NewTelemetry(t, sdktrace.WithSampler(smp))
	tr := msgtrace.New("kafka", []msgtrace.Option{func(c *msgtrace.Config) {
		c.TracerProvider, c.MeterProvider = tel.TracerProvider, tel.MeterProvider
		// A sampler that drops everything drops children of unsampled
		// parents too, so the probe would spare it the process span: ask it.
		c.AskSampler = true
	}})
	ctx := carrier.ContextWithSession(context.Background(), "s1")

	c := propagation.MapCarrier{}
	m := samplingMessage()
	m.ConsumerGroup = ""
	sctx, op := tr.StartSend(ctx, c, m)
	if op.Span.IsRecording() != sample {
		t.Fatalf("send span recording=%v, want %v", op.Span.IsRecording(), sample)
	}
	op.End(sctx, nil)
	pctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{Message: samplingMessage(), Carrier: c})
	p.End(pctx, nil, false)

	got := map[string]map[attribute.Key]bool{}
	for _, s := range tel.Ended() {
		keys := map[attribute.Key]bool{}
		for _, a := range s.Attributes() {
			keys[a.Key] = true
		}
		got[s.Name()] = keys
	}
	return smp, got
}

func TestSamplerSeesOnlySamplingAttributes(t *testing.T) {
	for _, sample := range []bool{false, true} {
		t.Run(fmt.Sprintf("sampled=%v", sample), func(t *testing.T) {
			smp, _ := sampleBoth(t, sample)
			for name, want := range map[string][]attribute.Key{"send orders": sendStartKeys, "process orders": processStartKeys} {
				seen := map[attribute.Key]bool{}
				for _, k := range smp.seen[name] {
					seen[k] = true
				}
				for _, k := range want {
					if !seen[k] {
						t.Errorf("%s: sampler did not see %s (saw %v)", name, k, smp.seen[name])
					}
				}
				for _, k := range laterKeys {
					if seen[k] {
						t.Errorf("%s: sampler saw %s, which is not a sampling attribute", name, k)
					}
				}
			}
		})
	}
}

func TestSampledSpansGetEveryAttribute(t *testing.T) {
	_, got := sampleBoth(t, true)
	for name, want := range map[string][]attribute.Key{"send orders": sendStartKeys, "process orders": processStartKeys} {
		for _, k := range append(append([]attribute.Key{}, want...), laterKeys...) {
			if !got[name][k] {
				t.Errorf("%s: recorded span lacks %s", name, k)
			}
		}
	}
}

func TestUnsampledSpansRecordNothing(t *testing.T) {
	_, got := sampleBoth(t, false)
	if len(got) != 0 {
		t.Fatalf("unsampled spans were recorded: %v", got)
	}
}

// Past the cache's bound every destination must still get its own name and
// attributes.
func TestSpanCacheBeyondBound(t *testing.T) {
	tr, tel := newTracer(t)
	for i := range 1100 {
		ctx, op := tr.StartSend(context.Background(), propagation.MapCarrier{}, msgtrace.Message{Destination: fmt.Sprintf("d%d", i), BodySize: -1})
		op.End(ctx, nil)
	}
	for _, i := range []int{0, 1023, 1024, 1099} {
		name := fmt.Sprintf("send d%d", i)
		s := spanByName(tel, name)
		if len(s) != 1 {
			t.Fatalf("%d spans named %q", len(s), name)
		}
		var dest string
		for _, a := range s[0].Attributes() {
			if a.Key == semconv.MessagingDestinationNameKey {
				dest = a.Value.AsString()
			}
		}
		if dest != fmt.Sprintf("d%d", i) {
			t.Fatalf("%s: destination %q", name, dest)
		}
	}
}

// countingAttrs is a Lazy appender that records how often it was asked.
type countingAttrs struct{ calls int }

func (c *countingAttrs) AppendAttrs(dst []attribute.KeyValue) []attribute.KeyValue {
	c.calls++
	return append(dst, semconv.MessagingKafkaMessageKey("lazy"))
}

// Lazy attributes exist to spare unsampled messages their cost: they must
// never be built for a span that does not record, never be offered to the
// sampler, and land on a span that does.
func TestLazyAttrsOnlyWhenRecording(t *testing.T) {
	for _, sample := range []bool{false, true} {
		t.Run(fmt.Sprintf("sampled=%v", sample), func(t *testing.T) {
			smp := &seeingSampler{sample: sample, seen: map[string][]attribute.Key{}}
			tel := testenv.NewTelemetry(t, sdktrace.WithSampler(smp))
			tr := msgtrace.New("kafka", []msgtrace.Option{func(c *msgtrace.Config) {
				c.TracerProvider, c.MeterProvider = tel.TracerProvider, tel.MeterProvider
			}})
			send, process := &countingAttrs{}, &countingAttrs{}
			c := propagation.MapCarrier{}
			sctx, op := tr.StartSend(context.Background(), c, msgtrace.Message{Destination: "orders", BodySize: -1, Lazy: send})
			op.End(sctx, nil)
			pctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{
				Message: msgtrace.Message{Destination: "orders", BodySize: -1, Lazy: process}, Carrier: c})
			p.End(pctx, nil, false)

			want := 0
			if sample {
				want = 1
			}
			if send.calls != want || process.calls != want {
				t.Fatalf("appender called %d (send) and %d (process) times, want %d", send.calls, process.calls, want)
			}
			for name, keys := range smp.seen {
				for _, k := range keys {
					if k == semconv.MessagingKafkaMessageKeyKey {
						t.Errorf("%s: sampler saw the lazy attribute", name)
					}
				}
			}
			for _, s := range tel.Ended() {
				var found bool
				for _, a := range s.Attributes() {
					found = found || (a.Key == semconv.MessagingKafkaMessageKeyKey && a.Value.AsString() == "lazy")
				}
				if !found {
					t.Errorf("%s: recorded span lacks the lazy attribute", s.Name())
				}
			}
		})
	}
}
