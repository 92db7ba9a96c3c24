package msgtrace_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// startSampler samples everything and keeps the start attributes of every
// span start, in order.
type startSampler struct {
	mu     sync.Mutex
	starts [][]attribute.KeyValue
}

func (s *startSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starts = append(s.starts, append([]attribute.KeyValue(nil), p.Attributes...))
	return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample}
}

func (s *startSampler) Description() string { return "start" }

func (s *startSampler) last() []attribute.KeyValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts[len(s.starts)-1]
}

// TestAttackProcessStartAttributesEveryPath starts process spans down every
// path of the start options (a first attempt parented, a first attempt as a
// new root, with an ambient link, under LinkToCreation, redelivered, retried
// through the headers, past the attempts with a prebuilt option) in an
// order that reuses the cached entry between them: the sampler sees the
// destination and exactly one tracebridge.attempt with the right number,
// and the span records the same; a first attempt after retries is still 1.
func TestAttackProcessStartAttributesEveryPath(t *testing.T) {
	for _, policy := range []msgtrace.ParentPolicy{msgtrace.ParentOnCreation, msgtrace.LinkToCreation} {
		t.Run(fmt.Sprint(policy), func(t *testing.T) {
			smp := &startSampler{}
			tel := testenv.NewTelemetry(t, sdktrace.WithSampler(smp))
			tr := msgtrace.New("kafka", []msgtrace.Option{func(c *msgtrace.Config) {
				c.TracerProvider, c.MeterProvider = tel.TracerProvider, tel.MeterProvider
				c.MaxAttempts, c.Parent, c.YoungFor = 20, policy, time.Minute
			}})
			sent := func() propagation.MapCarrier {
				c := propagation.MapCarrier{}
				ctx, op := tr.StartSend(carrier.ContextWithSession(context.Background(), "s1"), c, msgtrace.Message{Destination: "orders"})
				op.End(ctx, nil)
				return c
			}
			ambient, amb := tel.TracerProvider.Tracer("t").Start(context.Background(), "poll")
			defer amb.End()
			prev := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: 1})
			retried := func(n int) propagation.MapCarrier {
				c := sent()
				tr.Carrier().InjectRetry(c, carrier.Retry{Attempt: n, Previous: prev})
				return c
			}
			type tc struct {
				name    string
				ctx     context.Context
				d       msgtrace.Delivery
				attempt int64
				root    bool // a new root: no parent
			}
			msg := msgtrace.Message{Destination: "orders", ConsumerGroup: "g", ServerAddress: "b", ServerPort: 9092}
			linked := policy == msgtrace.LinkToCreation
			cases := []tc{
				{"first parented", context.Background(), msgtrace.Delivery{Message: msg, Carrier: sent()}, 1, linked},
				{"first new root", context.Background(), msgtrace.Delivery{Message: msg, Carrier: propagation.MapCarrier{}}, 1, true},
				{"first with ambient", ambient, msgtrace.Delivery{Message: msg, Carrier: sent()}, 1, linked},
				{"redelivered", context.Background(), msgtrace.Delivery{Message: msg, Carrier: sent(), Deliveries: 2, Identity: ident("orders/0/1")}, 2, linked},
				{"first again", context.Background(), msgtrace.Delivery{Message: msg, Carrier: sent()}, 1, linked},
				{"retry 4", context.Background(), msgtrace.Delivery{Message: msg, Carrier: retried(4)}, 4, linked},
				{"first root again", context.Background(), msgtrace.Delivery{Message: msg, Carrier: propagation.MapCarrier{}}, 1, true},
				{"retry 12", context.Background(), msgtrace.Delivery{Message: msg, Carrier: retried(12)}, 12, linked},
				{"retry 3 new root", context.Background(), msgtrace.Delivery{Message: msg, Carrier: func() propagation.MapCarrier {
					c := propagation.MapCarrier{}
					tr.Carrier().InjectRetry(c, carrier.Retry{Attempt: 3, Previous: prev})
					return c
				}()}, 3, true},
				{"first last", context.Background(), msgtrace.Delivery{Message: msg, Carrier: sent()}, 1, linked},
			}
			for _, c := range cases {
				ctx, p := tr.StartProcess(c.ctx, c.d)
				p.End(ctx, nil, false)
				if int64(p.Attempt) != c.attempt {
					t.Errorf("%s: Process.Attempt %d, want %d", c.name, p.Attempt, c.attempt)
				}
				seen := map[attribute.Key]int{}
				for _, a := range smp.last() {
					seen[a.Key]++
					if a.Key == msgtrace.AttemptKey && a.Value.AsInt64() != c.attempt {
						t.Errorf("%s: sampler saw attempt %d, want %d", c.name, a.Value.AsInt64(), c.attempt)
					}
				}
				for _, k := range []attribute.Key{msgtrace.AttemptKey, semconv.MessagingDestinationNameKey, semconv.MessagingConsumerGroupNameKey,
					semconv.ServerPortKey, semconv.MessagingOperationNameKey} {
					if seen[k] != 1 {
						t.Errorf("%s: sampler saw %s %d times, want once (%v)", c.name, k, seen[k], smp.last())
					}
				}
				ended := tel.Named("process orders")
				s := ended[len(ended)-1]
				if v, _ := testenv.Attr(s, msgtrace.AttemptKey); v.AsInt64() != c.attempt {
					t.Errorf("%s: span attempt %v, want %d", c.name, v.AsInt64(), c.attempt)
				}
				if s.SpanContext().SpanID() != trace.SpanContextFromContext(ctx).SpanID() {
					t.Fatalf("%s: the last ended span is not this one", c.name)
				}
				if root := !s.Parent().IsValid(); root != c.root {
					t.Errorf("%s: new root %v, want %v (parent %v)", c.name, root, c.root, s.Parent().SpanID())
				}
			}
		})
	}
}
