package sampling_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/sampling"
)

// sessions returns n session IDs from a fixed seed, so a statistical
// bound either always holds or always fails.
func sessions(n int) []string {
	r := rand.New(rand.NewPCG(13, 13))
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%08x-%04x-7%03x-%04x-%012x", r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xfff,
			r.Uint32()&0x3fff|0x8000, r.Uint64()&0xffffffffffff)
	}
	return out
}

// binomialBounds returns the smallest and largest count of successes in n
// trials with probability p that lie within the central 99.9% of the
// binomial distribution.
func binomialBounds(n int, p float64) (lo, hi int) {
	logPMF := func(k int) float64 {
		a, _ := math.Lgamma(float64(n + 1))
		b, _ := math.Lgamma(float64(k + 1))
		c, _ := math.Lgamma(float64(n - k + 1))
		return a - b - c + float64(k)*math.Log(p) + float64(n-k)*math.Log1p(-p)
	}
	cum := 0.0
	lo, hi = -1, n
	for k := 0; k <= n; k++ {
		cum += math.Exp(logPMF(k))
		if lo < 0 && cum > 0.0005 {
			lo = k
		}
		if cum >= 0.9995 {
			hi = k
			break
		}
	}
	return lo, hi
}

func root(ctx context.Context, tid trace.TraceID, name string) sdktrace.SamplingParameters {
	return sdktrace.SamplingParameters{ParentContext: ctx, TraceID: tid, Name: name, Kind: trace.SpanKindServer}
}

func sampled(r sdktrace.SamplingResult) bool { return r.Decision == sdktrace.RecordAndSample }

// A root's decision depends on the session alone: two sampler instances
// (two services), any trace ID, span name or kind, the session as a
// context value or only as the baggage member, a root by WithNewRoot under
// another trace: the same decision, and the recorded share of sessions is
// the ratio within 99.9% binomial bounds.
func TestRootDecidedBySessionAlone(t *testing.T) {
	const ratio = 0.1
	a, b := sampling.New(ratio), sampling.New(ratio)
	ids := sessions(3000)
	kept := 0
	for i, id := range ids {
		byValue := carrier.ContextWithSession(context.Background(), id)
		m, _ := baggage.NewMemberRaw(carrier.BaggageSessionKey, id)
		bag, _ := baggage.New(m)
		byBaggage := baggage.ContextWithBaggage(context.Background(), bag)
		decisions := []bool{
			sampled(a.ShouldSample(root(byValue, trace.TraceID{byte(i), 1}, "POST"))),
			sampled(b.ShouldSample(root(byValue, trace.TraceID{0xff, byte(i)}, "process orders"))),
			sampled(b.ShouldSample(root(byBaggage, trace.TraceID{2, byte(i >> 8), byte(i)}, "process jobs"))),
			// What the SDK hands the sampler for trace.WithNewRoot: the
			// parent's context with an empty span context.
			sampled(a.ShouldSample(root(trace.ContextWithSpanContext(byValue, trace.SpanContext{}), trace.TraceID{3, byte(i)}, "x"))),
		}
		for _, d := range decisions[1:] {
			if d != decisions[0] {
				t.Fatalf("session %s: decisions differ: %v", id, decisions)
			}
		}
		if decisions[0] != sampling.Sampled(id, ratio) {
			t.Fatalf("session %s: sampler says %v, Sampled %v", id, decisions[0], !decisions[0])
		}
		if decisions[0] {
			kept++
		}
	}
	lo, hi := binomialBounds(len(ids), ratio)
	t.Logf("%d of %d sessions sampled at %g (99.9%% bounds %d..%d)", kept, len(ids), ratio, lo, hi)
	if kept < lo || kept > hi {
		t.Fatalf("%d of %d sessions sampled at ratio %g, outside the 99.9%% bounds %d..%d", kept, len(ids), ratio, lo, hi)
	}
}

func parentCtx(session string, sampled, remote bool, ts string) context.Context {
	state, err := trace.ParseTraceState(ts)
	if err != nil {
		panic(err)
	}
	cfg := trace.SpanContextConfig{TraceID: trace.TraceID{9, 9}, SpanID: trace.SpanID{7}, Remote: remote, TraceState: state}
	if sampled {
		cfg.TraceFlags = trace.FlagsSampled
	}
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(cfg))
	if session != "" {
		ctx = carrier.ContextWithSession(ctx, session)
	}
	return ctx
}

// A span with a parent follows it, whatever its session says, and carries
// the parent's tracestate on.
func TestChildrenFollowParent(t *testing.T) {
	in, out := "s1", "0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a" // sampled and not at 0.1 (README vectors)
	s := sampling.New(0.1)
	for _, remote := range []bool{true, false} {
		for _, c := range []struct {
			session string
			parent  bool
		}{{in, false}, {out, true}, {"", true}, {"", false}} {
			r := s.ShouldSample(root(parentCtx(c.session, c.parent, remote, "vendor=x"), trace.TraceID{9, 9}, "child"))
			if sampled(r) != c.parent {
				t.Errorf("remote=%v session %q parent sampled=%v: child sampled=%v", remote, c.session, c.parent, sampled(r))
			}
			if r.Tracestate.String() != "vendor=x" {
				t.Errorf("child tracestate %q, want the parent's", r.Tracestate.String())
			}
		}
	}
}

type countingSampler struct {
	calls atomic.Int64
	inner sdktrace.Sampler
}

func (c *countingSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	c.calls.Add(1)
	return c.inner.ShouldSample(p)
}
func (c *countingSampler) Description() string { return "counting" }

// Roots without a session go to the fallback, and only roots do.
func TestFallbackForRootsWithoutSession(t *testing.T) {
	fb := &countingSampler{inner: sdktrace.AlwaysSample()}
	s := sampling.New(0, sampling.WithFallback(fb))
	if r := s.ShouldSample(root(context.Background(), trace.TraceID{1}, "GET /health")); !sampled(r) || fb.calls.Load() != 1 {
		t.Fatalf("root without session: sampled=%v, fallback asked %d times", sampled(r), fb.calls.Load())
	}
	s.ShouldSample(root(parentCtx("", false, true, ""), trace.TraceID{9, 9}, "child"))
	s.ShouldSample(root(parentCtx("", true, false, ""), trace.TraceID{9, 9}, "child"))
	s.ShouldSample(root(carrier.ContextWithSession(context.Background(), "s1"), trace.TraceID{1}, "root"))
	if n := fb.calls.Load(); n != 1 {
		t.Fatalf("fallback asked %d times, want once: only for the root without a session", n)
	}
	if !strings.Contains(s.Description(), "fallback:counting") {
		t.Fatalf("description %q does not name the fallback", s.Description())
	}
	// The default fallback is the trace-ID ratio at the session ratio.
	if d := sampling.New(0.25).Description(); !strings.Contains(d, "TraceIDRatioBased{0.25}") || !strings.Contains(d, "th:c") {
		t.Fatalf("default description %q", d)
	}
}

func withMark(ctx context.Context, value string) context.Context {
	m, err := baggage.NewMemberRaw(carrier.BaggageDebugKey, value)
	if err != nil {
		panic(err)
	}
	b, err := baggage.FromContext(ctx).SetMember(m)
	if err != nil {
		panic(err)
	}
	return baggage.ContextWithBaggage(ctx, b)
}

// Debug sessions are recorded at ratio 0, as roots and under unsampled
// parents, whether named to the sampler (API or environment) or marked in
// the baggage; a mark for another session does nothing; and a recorded
// debug span carries no threshold, since no probability chose it.
func TestDebugSessions(t *testing.T) {
	t.Setenv(carrier.DebugSessionsEnv, " from-env , bad id ,")
	s := sampling.New(0, sampling.WithDebugSessions("from-api", "also\nbad"))
	cases := []struct {
		name string
		ctx  context.Context
		want bool
	}{
		{"api root", carrier.ContextWithSession(context.Background(), "from-api"), true},
		{"env root", carrier.ContextWithSession(context.Background(), "from-env"), true},
		{"api under unsampled parent", parentCtx("from-api", false, true, "ot=th:8;rv:00000000000001,v=1"), true},
		{"marked root", carrier.ContextWithDebug(carrier.ContextWithSession(context.Background(), "marked")), true},
		{"marked under unsampled parent", carrier.ContextWithDebug(parentCtx("marked", false, true, "")), true},
		{"mark for another session", withMark(carrier.ContextWithSession(context.Background(), "other"), "marked"), false},
		{"mark without session", withMark(context.Background(), "marked"), false},
		{"plain session", carrier.ContextWithSession(context.Background(), "plain"), false},
		{"invalid env entry", carrier.ContextWithSession(context.Background(), "bad id"), false},
	}
	for _, c := range cases {
		r := s.ShouldSample(root(c.ctx, trace.TraceID{5}, "span"))
		if sampled(r) != c.want {
			t.Errorf("%s: sampled=%v, want %v", c.name, sampled(r), c.want)
		}
		if strings.Contains(r.Tracestate.String(), "th:") {
			t.Errorf("%s: debug span keeps a threshold: %q", c.name, r.Tracestate.String())
		}
	}
	// The rest of the parent's tracestate stays.
	r := s.ShouldSample(root(parentCtx("from-api", false, true, "ot=th:8;rv:00000000000001,v=1"), trace.TraceID{9, 9}, "span"))
	if got := r.Tracestate.String(); got != "ot=rv:00000000000001,v=1" {
		t.Errorf("debug child tracestate %q, want th removed and the rest kept", got)
	}
	if !strings.Contains(s.Description(), "debug:2") {
		t.Errorf("description %q: want the two valid debug sessions counted", s.Description())
	}
}

// A sampled parent's threshold travels on while it agrees with the
// randomness, and is erased when it contradicts it (OpenTelemetry's
// parent-based consistency check).
func TestParentThresholdConsistency(t *testing.T) {
	s := sampling.New(0.1)
	for _, c := range []struct{ in, want string }{
		{"ot=rv:e8bc163c82eee1;th:e666", "ot=rv:e8bc163c82eee1;th:e666"},
		{"ot=rv:0000000000000a;th:e666", "ot=rv:0000000000000a"},
		{"ot=th:zz", ""},
		{"ot=th:e666,v=1", "ot=th:e666,v=1"}, // no rv and no random flag: nothing to check against
		{"v=1,ot=foo:bar;th:8;rv:00000000000000", "ot=foo:bar;rv:00000000000000,v=1"},
	} {
		r := s.ShouldSample(root(parentCtx("", true, true, c.in), trace.TraceID{9, 9}, "child"))
		if !sampled(r) || r.Tracestate.String() != c.want {
			t.Errorf("parent %q: child sampled=%v tracestate %q, want %q", c.in, sampled(r), r.Tracestate.String(), c.want)
		}
	}
	// With the W3C random flag, the trace ID's last 7 bytes are the
	// randomness.
	ts, _ := trace.ParseTraceState("ot=th:e666")
	for _, c := range []struct {
		low  byte
		want string
	}{{0xff, "ot=th:e666"}, {0x00, ""}} {
		tid := trace.TraceID{9, 9, 0, 0, 0, 0, 0, 0, 0, c.low, c.low, c.low, c.low, c.low, c.low, c.low}
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: trace.SpanID{7}, Remote: true,
			TraceFlags: trace.FlagsSampled | trace.FlagsRandom, TraceState: ts})
		r := s.ShouldSample(root(trace.ContextWithSpanContext(context.Background(), sc), tid, "child"))
		if r.Tracestate.String() != c.want {
			t.Errorf("random trace ID ending %02x: tracestate %q, want %q", c.low, r.Tracestate.String(), c.want)
		}
	}
}

// edgeRun sends a request through an HTTP edge whose provider samples
// sessions at ratio 0, and returns the spans it recorded and whether the
// handler saw the debug mark.
func edgeRun(t *testing.T, edgeOpts []carrier.MiddlewareOption, prepare func(r *http.Request, edgeURL string)) (spans int, marked bool) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampling.New(0)), sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	var sawMark atomic.Bool
	h := carrier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawMark.Store(carrier.DebugFromContext(r.Context()))
	}), append([]carrier.MiddlewareOption{carrier.WithEdgeTracerProvider(tp)}, edgeOpts...)...)
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	prepare(req, srv.URL)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	return len(rec.Ended()), sawMark.Load()
}

// An untrusted edge strips the debug mark, even from a session it issued
// itself and even when session.debug is on its baggage allow-list: an
// outsider cannot have their traffic recorded. A trusted edge keeps it.
func TestUntrustedEdgeStripsDebugMark(t *testing.T) {
	issued := func(t *testing.T, url string) string {
		res, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		return res.Header.Get(carrier.DefaultSessionHeader)
	}
	markFor := func(sess string) string {
		return carrier.BaggageSessionKey + "=" + sess + "," + carrier.BaggageDebugKey + "=" + sess
	}
	signer, err := carrier.NewSessionSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	untrusted := []carrier.MiddlewareOption{carrier.WithSessionSigner(signer), carrier.WithPropagator(
		carrier.NewPropagator(carrier.WithTrust(carrier.Untrusted), carrier.WithUntrustedBaggage(carrier.BaggageDebugKey)))}
	spans, marked := edgeRun(t, untrusted, func(r *http.Request, url string) {
		sess := signer.NewID()
		r.Header.Set(carrier.DefaultSessionHeader, sess)
		r.Header.Set("baggage", markFor(sess))
	})
	if spans != 0 || marked {
		t.Errorf("untrusted edge: %d spans recorded, handler saw the mark: %v; want 0 and false", spans, marked)
	}
	// The default untrusted edge too, with a session it issued.
	spans, marked = edgeRun(t, nil, func(r *http.Request, url string) {
		sess := issued(t, url)
		if sess == "" {
			t.Fatal("edge issued no session")
		}
		r.Header.Set(carrier.DefaultSessionHeader, sess)
		r.Header.Set("baggage", markFor(sess))
	})
	if spans != 0 || marked {
		t.Errorf("default edge: %d spans recorded, handler saw the mark: %v; want 0 and false", spans, marked)
	}
	// Trusted: the same request is recorded, which is what makes the two
	// above meaningful.
	spans, marked = edgeRun(t, []carrier.MiddlewareOption{carrier.WithPropagator(carrier.NewPropagator())},
		func(r *http.Request, url string) {
			r.Header.Set(carrier.DefaultSessionHeader, "trusted-session")
			r.Header.Set("baggage", markFor("trusted-session"))
		})
	if spans != 1 || !marked {
		t.Errorf("trusted edge: %d spans recorded, mark seen %v; want 1 and true", spans, marked)
	}
}
