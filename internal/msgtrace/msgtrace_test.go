package msgtrace_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

func newTracer(t *testing.T, opts ...msgtrace.Option) (*msgtrace.Tracer, *testenv.Telemetry) {
	tel := testenv.NewTelemetry(t)
	opts = append([]msgtrace.Option{func(c *msgtrace.Config) {
		c.TracerProvider, c.MeterProvider = tel.TracerProvider, tel.MeterProvider
	}}, opts...)
	return msgtrace.New("kafka", opts), tel
}

func send(t *testing.T, tr *msgtrace.Tracer, ctx context.Context) (propagation.MapCarrier, trace.SpanContext) {
	c := propagation.MapCarrier{}
	ctx, op := tr.StartSend(ctx, c, msgtrace.Message{Destination: "orders", BodySize: 3})
	op.End(ctx, nil)
	return c, op.Span.SpanContext()
}

func spanByName(tel *testenv.Telemetry, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tel.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func TestParentPolicies(t *testing.T) {
	for _, tc := range []struct {
		name       string
		policy     msgtrace.ParentPolicy
		age        time.Duration
		wantParent bool
	}{
		{"parent", msgtrace.ParentOnCreation, time.Hour, true},
		{"link", msgtrace.LinkToCreation, 0, false},
		{"auto young", msgtrace.ParentWhileYoung, time.Second, true},
		{"auto old", msgtrace.ParentWhileYoung, time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, tel := newTracer(t, func(c *msgtrace.Config) { c.Parent, c.YoungFor = tc.policy, time.Minute })
			c, producer := send(t, tr, carrier.ContextWithSession(context.Background(), "s1"))
			ctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{
				Message: msgtrace.Message{Destination: "orders"}, Carrier: c, PublishedAt: time.Now().Add(-tc.age)})
			if carrier.SessionFromContext(ctx) != "s1" {
				t.Fatalf("session lost: %q", carrier.SessionFromContext(ctx))
			}
			p.End(ctx, nil, false)
			s := spanByName(tel, "process orders")[0]
			if s.SpanKind() != trace.SpanKindConsumer {
				t.Fatalf("kind %v", s.SpanKind())
			}
			parented := s.Parent().SpanID() == producer.SpanID()
			if parented != tc.wantParent {
				t.Fatalf("parented=%v, want %v", parented, tc.wantParent)
			}
			if !tc.wantParent && (len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != producer.SpanID()) {
				t.Fatalf("want a creation link, got %v", s.Links())
			}
		})
	}
}

func TestAmbientSpanIsLinkedNotParent(t *testing.T) {
	tr, tel := newTracer(t)
	c, producer := send(t, tr, context.Background())
	ambientCtx, ambient := tel.TracerProvider.Tracer("t").Start(context.Background(), "poll loop")
	_, p := tr.StartProcess(ambientCtx, msgtrace.Delivery{Message: msgtrace.Message{Destination: "orders"}, Carrier: c})
	p.End(ambientCtx, nil, false)
	ambient.End()
	s := spanByName(tel, "process orders")[0]
	if s.Parent().SpanID() != producer.SpanID() {
		t.Fatal("process span not parented on the producer")
	}
	if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != ambient.SpanContext().SpanID() {
		t.Fatalf("ambient span not linked: %v", s.Links())
	}
}

func TestAttemptsLinkAndFinalStatus(t *testing.T) {
	tr, tel := newTracer(t, func(c *msgtrace.Config) { c.MaxAttempts = 3 })
	c, producer := send(t, tr, context.Background())
	fail := errors.New("boom")
	for n := 1; n <= 3; n++ {
		ctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{
			Message: msgtrace.Message{Destination: "orders"}, Carrier: c, Deliveries: n, Identity: ident("orders/0/7")})
		if p.Attempt != n {
			t.Fatalf("attempt %d, want %d", p.Attempt, n)
		}
		p.End(ctx, fail, p.Final(fail))
	}
	spans := spanByName(tel, "process orders")
	if len(spans) != 3 {
		t.Fatalf("%d process spans", len(spans))
	}
	for i, s := range spans {
		if s.Parent().SpanID() != producer.SpanID() {
			t.Fatalf("attempt %d not parented on the producer", i+1)
		}
		wantErr := i == 2
		if (s.Status().Code == codes.Error) != wantErr {
			t.Fatalf("attempt %d status %v", i+1, s.Status())
		}
		if i > 0 {
			if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != spans[i-1].SpanContext().SpanID() {
				t.Fatalf("attempt %d does not link to attempt %d: %v", i+1, i, s.Links())
			}
		}
	}
	if tr.Attempts().Len() != 0 {
		t.Fatal("final attempt left a record behind")
	}
}

func TestRetryHeaderSetsAttemptAndLink(t *testing.T) {
	tr, tel := newTracer(t, func(c *msgtrace.Config) { c.MaxAttempts = 5 })
	c, _ := send(t, tr, context.Background())
	prev := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: 1})
	tr.Carrier().InjectRetry(c, carrier.Retry{Attempt: 4, Previous: prev})
	ctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{Message: msgtrace.Message{Destination: "orders"}, Carrier: c})
	p.End(ctx, nil, false)
	if p.Attempt != 4 {
		t.Fatalf("attempt %d, want 4", p.Attempt)
	}
	s := spanByName(tel, "process orders")[0]
	if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != prev.SpanID() {
		t.Fatalf("no link to retry-previous: %v", s.Links())
	}
}

func TestForwardingKeepsCreationContext(t *testing.T) {
	tr, tel := newTracer(t)
	c, first := send(t, tr, context.Background())
	before := c.Get("traceparent")
	ctx, op := tr.StartSend(context.Background(), c, msgtrace.Message{Destination: "copy"})
	op.End(ctx, nil)
	if c.Get("traceparent") != before {
		t.Fatal("forwarding rewrote traceparent")
	}
	s := spanByName(tel, "send copy")[0]
	if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != first.SpanID() {
		t.Fatalf("forwarding send span does not link the creation context: %v", s.Links())
	}
}

func TestUntrustedBecomesLink(t *testing.T) {
	tr, tel := newTracer(t, func(c *msgtrace.Config) { c.Propagator = carrier.NewPropagator(carrier.WithTrust(carrier.Untrusted)) })
	c := propagation.MapCarrier{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	ctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{Message: msgtrace.Message{Destination: "in"}, Carrier: c})
	p.End(ctx, nil, false)
	s := spanByName(tel, "process in")[0]
	if s.Parent().IsValid() || len(s.Links()) != 1 {
		t.Fatalf("untrusted creation context: parent %v links %v", s.Parent(), s.Links())
	}
}

func TestBackoffFullJitterBounds(t *testing.T) {
	b := msgtrace.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	for n, want := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond, 4: 50 * time.Millisecond, 60: 50 * time.Millisecond} {
		if got := b.Ceiling(n); got != want {
			t.Fatalf("ceiling(%d) = %v, want %v", n, got, want)
		}
		var sawLow bool
		for range 200 {
			d := b.Delay(n)
			if d < 0 || d > want {
				t.Fatalf("delay(%d) = %v outside [0, %v]", n, d, want)
			}
			sawLow = sawLow || d < want/2
		}
		if !sawLow {
			t.Fatalf("delay(%d) never below half the ceiling: not jittered", n)
		}
	}
}

func TestAttemptsBounded(t *testing.T) {
	a := msgtrace.NewAttempts(3)
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}})
	for _, id := range []string{"a", "b", "c", "d"} {
		a.Put(id, sc)
	}
	if a.Len() != 3 {
		t.Fatalf("len %d", a.Len())
	}
	if _, ok := a.Get("a"); ok {
		t.Fatal("oldest entry not evicted")
	}
	if _, ok := a.Get("d"); !ok {
		t.Fatal("newest entry missing")
	}
}

func TestCallRecoversPanic(t *testing.T) {
	err := msgtrace.Call(func() error { panic("kaboom") })
	var p *msgtrace.PanicError
	if !errors.As(err, &p) || p.Value != "kaboom" || len(p.Stack) == 0 {
		t.Fatalf("panic not captured: %v", err)
	}
	if msgtrace.ErrorType(err) != "panic" {
		t.Fatalf("error.type %q", msgtrace.ErrorType(err))
	}
	if !msgtrace.IsPermanent(msgtrace.Permanent(errors.New("x"))) || msgtrace.Permanent(nil) != nil {
		t.Fatal("Permanent marks wrong")
	}
}

// A republished retry can be consumed before the failed attempt's span has
// ended; it must still link to that attempt (named by retry-previous), not
// to the stale in-process record of the attempt before it.
func TestRepublishedRetryLinksPreviousBeforeItEnds(t *testing.T) {
	tr, tel := newTracer(t, func(c *msgtrace.Config) { c.MaxAttempts = 5 })
	c, _ := send(t, tr, context.Background())
	fail := errors.New("boom")
	d := msgtrace.Delivery{Message: msgtrace.Message{Destination: "orders"}, Carrier: c, Identity: ident("orders/m1")}
	ctx1, p1 := tr.StartProcess(context.Background(), d)
	p1.End(ctx1, fail, false) // recorded as the latest failed attempt

	tr.Carrier().InjectRetry(c, carrier.Retry{Attempt: 2, Previous: p1.SpanContext()})
	ctx2, p2 := tr.StartProcess(context.Background(), d)
	// Attempt 2 fails and republishes; attempt 3 arrives before p2 ends.
	tr.Carrier().InjectRetry(c, carrier.Retry{Attempt: 3, Previous: p2.SpanContext()})
	ctx3, p3 := tr.StartProcess(context.Background(), d)
	p3.End(ctx3, nil, false)
	p2.End(ctx2, fail, false)

	s := tel.Named("process orders")
	var third sdktrace.ReadOnlySpan
	for _, sp := range s {
		if v, _ := testenv.Attr(sp, msgtrace.AttemptKey); v.AsInt64() == 3 {
			third = sp
		}
	}
	if third == nil {
		t.Fatal("no attempt 3 span")
	}
	if len(third.Links()) != 1 || third.Links()[0].SpanContext.SpanID() != p2.SpanContext().SpanID() {
		t.Fatalf("attempt 3 links %v, want attempt 2 %v", third.Links(), p2.SpanContext().SpanID())
	}
}

// ident is a message identity given as a string.
type ident string

func (i ident) String() string { return string(i) }

// An attempt that started no span (ParentBasedSampling, unsampled creation)
// has no span context to name as the previous attempt: a later attempt
// that does start a span must not link the producer as its predecessor.
func TestPassThroughAttemptIsNoPreviousAttempt(t *testing.T) {
	tr, tel := newTracer(t, func(c *msgtrace.Config) { c.ParentBasedSampling = true })
	c, _ := send(t, tr, testenv.Parent(false))
	d := msgtrace.Delivery{Message: msgtrace.Message{Destination: "orders"}, Carrier: c, Identity: ident("orders/0/1")}
	ctx, p := tr.StartProcess(context.Background(), d)
	if p.SpanContext().IsValid() {
		t.Fatalf("attempt without a span reports span context %v", p.SpanContext())
	}
	if sc := trace.SpanContextFromContext(ctx); sc.SpanID() != trace.SpanContextFromContext(testenv.Parent(false)).SpanID() {
		t.Fatal("the handler's context is not the unsampled creation context")
	}
	p.End(ctx, errors.New("boom"), false)
	if _, ok := tr.Attempts().Get("orders/0/1"); ok {
		t.Fatal("an attempt without a span was recorded as a previous attempt")
	}
	if n := len(tel.Ended()); n != 0 {
		t.Fatalf("%d spans ended", n)
	}
}

// TestSettleEventAllocations checks that a successful settle is the same
// event it always was (operation name and type settle) and that recording
// it costs no more than the SDK's own copy of the event and the variadic
// option slice: every message settles, and building the attribute slice
// and its option per message cost two allocations more.
func TestSettleEventAllocations(t *testing.T) {
	tr, tel := newTracer(t)
	c, _ := send(t, tr, context.Background())
	ctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{Message: msgtrace.Message{Destination: "orders"}, Carrier: c})
	p.Settle(ctx, "commit", nil)
	// The SDK keeps at most 128 events and evicts the oldest; a full queue
	// allocates nothing more of its own, so what is counted is Settle's.
	for range 200 {
		p.Settle(ctx, "commit", nil)
	}
	allocs := testing.AllocsPerRun(200, func() { p.Settle(ctx, "commit", nil) })
	t.Logf("a successful settle allocates %.1f times", allocs)
	p.End(ctx, nil, false)
	s := spanByName(tel, "process orders")[0]
	ev := s.Events()[len(s.Events())-1]
	if ev.Name != "settle" {
		t.Fatalf("last event %q, want settle", ev.Name)
	}
	got := map[string]string{}
	for _, a := range ev.Attributes {
		got[string(a.Key)] = a.Value.String()
	}
	if got["messaging.operation.name"] != "commit" || got["messaging.operation.type"] != "settle" || len(got) != 2 {
		t.Errorf("settle event attributes %v, want operation name commit and type settle", got)
	}
	if allocs > 2 {
		t.Errorf("a successful settle allocates %.1f times, want at most 2", allocs)
	}
}
