package msgtrace_test

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/sampling"
)

// outcome is what a component did with one message produced and one
// consumed under an unsampled parent.
type outcome struct {
	sendSkipped, processSkipped   bool // no span started: the parent's context went on
	sendRecorded, processRecorded bool
}

// underUnsampled produces a message under parent (an unsampled remote
// parent with a session) and consumes one whose creation context is that
// parent, with a tracer on tp.
func underUnsampled(t *testing.T, tp trace.TracerProvider, parent context.Context, opts ...msgtrace.Option) (o outcome, tel *testenv.Telemetry) {
	tel = testenv.NewTelemetry(t)
	if tp == nil {
		tp = tel.TracerProvider
	}
	tr := msgtrace.New("kafka", append([]msgtrace.Option{func(c *msgtrace.Config) {
		c.TracerProvider, c.MeterProvider = tp, tel.MeterProvider
	}}, opts...))
	psc := trace.SpanContextFromContext(parent)

	sctx, op := tr.StartSend(parent, propagation.MapCarrier{}, msgtrace.Message{Destination: "orders", BodySize: 1})
	o.sendSkipped = trace.SpanContextFromContext(sctx).SpanID() == psc.SpanID()
	o.sendRecorded = op.Span.IsRecording()
	op.End(sctx, nil)

	c := propagation.MapCarrier{}
	carrier.NewPropagator().Inject(parent, c)
	pctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{
		Message: msgtrace.Message{Destination: "orders", BodySize: 1}, Carrier: c})
	o.processSkipped = trace.SpanContextFromContext(pctx).SpanID() == psc.SpanID()
	o.processRecorded = p.Span.IsRecording()
	p.End(pctx, nil, false)
	return o, tel
}

func provider(t *testing.T, s sdktrace.Sampler) *sdktrace.TracerProvider {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(s))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// lowBitsSampler is an OpenTelemetry consistent-probability sampler on
// trace-ID randomness (the low 56 bits against a threshold), not wrapped
// in ParentBased: it records a child of an unsampled parent when the
// trace ID's randomness is high enough.
type lowBitsSampler struct{ threshold uint64 }

func (s lowBitsSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if binary.BigEndian.Uint64(p.TraceID[8:])&(1<<56-1) >= s.threshold {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample}
	}
	return sdktrace.SamplingResult{Decision: sdktrace.Drop}
}
func (lowBitsSampler) Description() string { return "lowbits" }

// Under an unsampled parent, a component starts no span by default exactly
// when the tracer provider's sampler would drop it: the SDK's default
// ParentBased sampler (with any root sampler) and the session sampler, but
// not samplers that record children of unsampled parents, not a provider
// whose decisions it cannot see, and not when told to ask.
func TestUnsampledPathByDefault(t *testing.T) {
	parent := testenv.Parent(false)
	skip := outcome{sendSkipped: true, processSkipped: true}
	ask := outcome{}
	askRecord := outcome{sendRecorded: true, processRecorded: true}
	for _, c := range []struct {
		name string
		tp   func(t *testing.T) trace.TracerProvider
		opts []msgtrace.Option
		want outcome
	}{
		{"sdk default", func(t *testing.T) trace.TracerProvider {
			tp := sdktrace.NewTracerProvider()
			t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			return tp
		}, nil, skip},
		{"parentbased ratio", func(t *testing.T) trace.TracerProvider {
			return provider(t, sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.5)))
		}, nil, skip},
		{"never", func(t *testing.T) trace.TracerProvider { return provider(t, sdktrace.NeverSample()) }, nil, skip},
		{"session sampler", func(t *testing.T) trace.TracerProvider { return provider(t, sampling.New(1)) }, nil, skip},
		{"always", func(t *testing.T) trace.TracerProvider { return provider(t, sdktrace.AlwaysSample()) }, nil, askRecord},
		{"bare trace-ID ratio", func(t *testing.T) trace.TracerProvider {
			return provider(t, sdktrace.TraceIDRatioBased(1e-6))
		}, nil, ask},
		{"bare consistent probability", func(t *testing.T) trace.TracerProvider {
			return provider(t, lowBitsSampler{threshold: 1<<56 - 1000})
		}, nil, ask},
		{"parentbased recording remote children", func(t *testing.T) trace.TracerProvider {
			return provider(t, sdktrace.ParentBased(sdktrace.AlwaysSample(),
				sdktrace.WithRemoteParentNotSampled(sdktrace.AlwaysSample())))
		}, nil, askRecord},
		{"parentbased recording local children", func(t *testing.T) trace.TracerProvider {
			return provider(t, sdktrace.ParentBased(sdktrace.AlwaysSample(),
				sdktrace.WithLocalParentNotSampled(sdktrace.AlwaysSample())))
		}, nil, ask},
		{"always record", func(t *testing.T) trace.TracerProvider {
			return provider(t, sdktrace.AlwaysRecord(sdktrace.ParentBased(sdktrace.AlwaysSample())))
		}, nil, outcome{sendRecorded: true, processRecorded: true}},
		{"sdk default, told to ask", func(t *testing.T) trace.TracerProvider {
			return provider(t, sdktrace.ParentBased(sdktrace.AlwaysSample()))
		},
			[]msgtrace.Option{func(c *msgtrace.Config) { c.AskSampler = true }}, ask},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, _ := underUnsampled(t, c.tp(t), parent, c.opts...)
			if got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// A skipped message is still counted, and its journey goes on unchanged.
func TestUnsampledPathCountsEveryMessage(t *testing.T) {
	_, tel := underUnsampled(t, nil, testenv.Parent(false), func(c *msgtrace.Config) {
		c.TracerProvider = provider(t, sdktrace.ParentBased(sdktrace.AlwaysSample()))
	})
	if n, _ := tel.SumInt(t, "messaging.client.sent.messages"); n != 1 {
		t.Errorf("sent.messages = %d, want 1", n)
	}
	if n, _ := tel.SumInt(t, "messaging.client.consumed.messages"); n != 1 {
		t.Errorf("consumed.messages = %d, want 1", n)
	}
}

// With the session sampler, a debug session is recorded under an unsampled
// parent, producer and consumer alike, whether the mark came with the
// journey or the sampler was told; every other session starts no span.
func TestUnsampledPathRecordsDebugSessions(t *testing.T) {
	marked := carrier.ContextWithDebug(testenv.Parent(false))
	got, _ := underUnsampled(t, provider(t, sampling.New(0)), marked)
	if got != (outcome{sendRecorded: true, processRecorded: true}) {
		t.Errorf("marked debug session: %+v, want both spans recorded", got)
	}
	named := sampling.New(0, sampling.WithDebugSessions(carrier.SessionFromContext(testenv.Parent(false))))
	if got, _ := underUnsampled(t, provider(t, named), testenv.Parent(false)); got != (outcome{sendRecorded: true, processRecorded: true}) {
		t.Errorf("debug session named to the sampler: %+v, want both spans recorded", got)
	}
	if got, _ := underUnsampled(t, provider(t, named), carrier.ContextWithSession(testenv.Parent(false), "someone-else")); got != (outcome{sendSkipped: true, processSkipped: true}) {
		t.Errorf("another session: %+v, want no span started", got)
	}
}

// The probe leaves nothing behind: a provider that records its probe spans
// never exports them (they are never ended).
func TestProbeSpansAreNeverExported(t *testing.T) {
	tel := testenv.NewTelemetry(t) // AlwaysSample: the first probe records
	msgtrace.New("kafka", []msgtrace.Option{func(c *msgtrace.Config) {
		c.TracerProvider, c.MeterProvider = tel.TracerProvider, tel.MeterProvider
	}})
	if n := len(tel.Ended()); n != 0 {
		t.Fatalf("%d probe spans ended (and were exported)", n)
	}
	if n := len(tel.Spans.Started()); n != 1 {
		t.Fatalf("%d probe spans started on a recording provider, want 1: the probe stops at the first", n)
	}
}

// countingProvider is a provider without an SDK (no decisions of its own:
// its spans are the parent's context) that counts the spans started on it.
type countingProvider struct {
	noop.TracerProvider
	starts *atomic.Int64
}

func (p countingProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return countingTracer{Tracer: p.TracerProvider.Tracer(name, opts...), starts: p.starts}
}

type countingTracer struct {
	trace.Tracer
	starts *atomic.Int64
}

func (t countingTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	t.starts.Add(1)
	return t.Tracer.Start(ctx, name, opts...)
}

// A provider that makes no decisions of its own (no SDK, or the global
// provider before one is installed) tells the probe nothing: its first
// probe span is the parent's context, and the probe stops there. Spans
// are then started as before, unless the user promised
// WithParentBasedSampling.
func TestUnsampledPathWithoutSDK(t *testing.T) {
	for _, c := range []struct {
		name    string
		promise bool
		want    int64 // the probe's one span, plus one per message asked
	}{{"unknown", false, 3}, {"promised", true, 1}} {
		t.Run(c.name, func(t *testing.T) {
			starts := &atomic.Int64{}
			underUnsampled(t, countingProvider{starts: starts}, testenv.Parent(false),
				func(cfg *msgtrace.Config) { cfg.ParentBasedSampling = c.promise })
			if got := starts.Load(); got != c.want {
				t.Fatalf("%d spans started (probe included) for a message produced and one consumed, want %d", got, c.want)
			}
		})
	}
}

// The root spans tracebridge starts for new traces (the link policy, an
// untrusted consumer) see the message's session, so the session sampler
// decides them from it, not from the fallback; whatever the creation
// context's own decision was.
func TestNewRootsAreDecidedBySession(t *testing.T) {
	in, out := "00000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000001" // sampled and not at 0.5
	if !sampling.Sampled(in, 0.5) || sampling.Sampled(out, 0.5) {
		t.Fatal("test sessions do not split at 0.5")
	}
	tp := provider(t, sampling.New(0.5, sampling.WithFallback(sdktrace.NeverSample())))
	for _, c := range []struct {
		name string
		opt  msgtrace.Option
	}{
		{"link policy", func(c *msgtrace.Config) { c.Parent = msgtrace.LinkToCreation }},
		{"untrusted", func(c *msgtrace.Config) {
			c.Propagator, c.Trust = carrier.NewPropagator(carrier.WithTrust(carrier.Untrusted)), carrier.Untrusted
		}},
	} {
		for _, sess := range []string{in, out} {
			for _, parentSampled := range []bool{false, true} {
				tr := msgtrace.New("kafka", []msgtrace.Option{func(c *msgtrace.Config) { c.TracerProvider = tp }, c.opt})
				h := propagation.MapCarrier{}
				carrier.NewPropagator().Inject(carrier.ContextWithSession(testenv.Parent(parentSampled), sess), h)
				ctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{Message: msgtrace.Message{Destination: "orders"}, Carrier: h})
				if got, want := p.Span.IsRecording(), sess == in; got != want || trace.SpanContextFromContext(ctx).TraceID() == trace.SpanContextFromContext(testenv.Parent(false)).TraceID() {
					t.Errorf("%s, session %s, creation sampled=%v: recording=%v, want %v (on a new trace)", c.name, sess, parentSampled, got, want)
				}
				p.End(ctx, nil, false)
			}
		}
	}
}
