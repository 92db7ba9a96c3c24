package carrier_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

const dbgSession = "0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a"

// journeyCtx is a context as a producer sees it: a parent span, baggage of
// its own and the session.
func journeyCtx(t testing.TB, session string) context.Context {
	t.Helper()
	m, err := baggage.NewMember("tenant", "acme")
	if err != nil {
		t.Fatal(err)
	}
	b, err := baggage.New(m)
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 2}, SpanID: trace.SpanID{3}})
	ctx := trace.ContextWithSpanContext(baggage.ContextWithBaggage(context.Background(), b), sc)
	return carrier.ContextWithSession(ctx, session)
}

func injected(p *carrier.Propagator, ctx context.Context) (string, *kafkaHeaders) {
	m := propagation.MapCarrier{}
	p.Inject(ctx, m)
	k := &kafkaHeaders{}
	p.Inject(ctx, k)
	return m.Get("baggage"), k
}

func hasMark(bag, session string) bool {
	for _, m := range strings.Split(bag, ",") {
		if m == carrier.BaggageDebugKey+"="+session {
			return true
		}
	}
	return false
}

// A propagator marks exactly its debug sessions, named by API or by
// TRACEBRIDGE_DEBUG_SESSIONS, on every inject: the same journey injected
// again and again (the caches admit it on its second sighting) keeps the
// mark, and other sessions never get it.
func TestInjectMarksDebugSessions(t *testing.T) {
	t.Setenv(carrier.DebugSessionsEnv, "env-session")
	p := carrier.NewPropagator(carrier.WithDebugSessions(dbgSession))
	for i := range 5 {
		for _, c := range []struct {
			session string
			want    bool
		}{{dbgSession, true}, {"env-session", true}, {"plain-session", false}} {
			bag, k := injected(p, journeyCtx(t, c.session))
			kbag := string(k.values("baggage")[0])
			if hasMark(bag, c.session) != c.want || hasMark(kbag, c.session) != c.want {
				t.Fatalf("round %d, session %s: baggage %q / %q, want mark=%v", i, c.session, bag, kbag, c.want)
			}
			if !strings.Contains(bag, "tenant=acme") || !strings.HasPrefix(bag, carrier.BaggageSessionKey+"=") {
				t.Fatalf("round %d: baggage %q lost the session first or the rest", i, bag)
			}
		}
	}
}

// The mark travels: extracted by a trusted propagator that was told
// nothing, it is in the context (DebugFromContext) and goes out again, to
// any depth. A mark for another session, or without one, does not go on.
func TestDebugMarkTravelsThroughUnconfiguredServices(t *testing.T) {
	origin := carrier.NewPropagator(carrier.WithDebugSessions(dbgSession))
	plain := carrier.NewPropagator()
	m := propagation.MapCarrier{}
	origin.Inject(journeyCtx(t, dbgSession), m)
	for hop := range 3 {
		ctx := plain.Extract(context.Background(), m)
		if !carrier.DebugFromContext(ctx) || carrier.SessionFromContext(ctx) != dbgSession {
			t.Fatalf("hop %d: debug=%v session %q after extracting %v", hop, carrier.DebugFromContext(ctx), carrier.SessionFromContext(ctx), m)
		}
		m = propagation.MapCarrier{}
		plain.Inject(ctx, m)
		if !hasMark(m.Get("baggage"), dbgSession) {
			t.Fatalf("hop %d: an unconfigured service dropped the mark: %q", hop, m.Get("baggage"))
		}
	}

	// ContextWithDebug marks where the session is known.
	bag, _ := injected(plain, carrier.ContextWithDebug(journeyCtx(t, "marked-here")))
	if !hasMark(bag, "marked-here") {
		t.Fatalf("ContextWithDebug: baggage %q has no mark", bag)
	}
	if ctx := carrier.ContextWithDebug(context.Background()); carrier.DebugFromContext(ctx) || baggage.FromContext(ctx).Len() != 0 {
		t.Fatal("ContextWithDebug without a session marked something")
	}
	// The session changed under the mark: the old mark stays behind.
	stale := carrier.ContextWithSession(carrier.ContextWithDebug(journeyCtx(t, "first")), "second")
	if carrier.DebugFromContext(stale) {
		t.Fatal("a mark for session first counts for session second")
	}
	if bag, _ := injected(plain, stale); strings.Contains(bag, carrier.BaggageDebugKey) {
		t.Fatalf("a stale mark was sent on: %q", bag)
	}
}

// Untrusted input never carries the mark, not even with session.debug on
// the allow-list and a session the propagator accepts; the rest of the
// journey (session, allowed baggage) is kept, so the strip is not a side
// effect of dropping everything.
func TestUntrustedExtractStripsDebugMark(t *testing.T) {
	m := propagation.MapCarrier{}
	carrier.NewPropagator(carrier.WithDebugSessions(dbgSession)).Inject(journeyCtx(t, dbgSession), m)
	if !hasMark(m.Get("baggage"), dbgSession) {
		t.Fatalf("setup: no mark in %q", m.Get("baggage"))
	}
	u := carrier.NewPropagator(carrier.WithTrust(carrier.Untrusted),
		carrier.WithUntrustedBaggage("tenant", carrier.BaggageDebugKey))
	for i := range 3 { // the parse caches must not bring it back
		ctx := u.Extract(context.Background(), m)
		if carrier.DebugFromContext(ctx) || baggage.FromContext(ctx).Member(carrier.BaggageDebugKey).Key() != "" {
			t.Fatalf("round %d: untrusted extract kept the mark: %v", i, baggage.FromContext(ctx))
		}
		if carrier.SessionFromContext(ctx) != dbgSession || baggage.FromContext(ctx).Member("tenant").Value() != "acme" {
			t.Fatalf("round %d: untrusted extract lost the session or allowed baggage: %v", i, baggage.FromContext(ctx))
		}
		out := propagation.MapCarrier{}
		carrier.NewPropagator().Inject(ctx, out)
		if strings.Contains(out.Get("baggage"), carrier.BaggageDebugKey) {
			t.Fatalf("round %d: the mark travels on after an untrusted hop: %q", i, out.Get("baggage"))
		}
	}
}

func TestParseDebugSessions(t *testing.T) {
	ids, err := carrier.ParseDebugSessions(" a , ,b,bad id,c\x00,")
	if strings.Join(ids, "|") != "a|b" {
		t.Fatalf("ids %q, want a and b", ids)
	}
	if err == nil || !strings.Contains(err.Error(), `"bad id"`) || !strings.Contains(err.Error(), `"c\x00"`) {
		t.Fatalf("error %v does not name both invalid entries", err)
	}
	if ids, err := carrier.ParseDebugSessions(""); len(ids) != 0 || err != nil {
		t.Fatalf("empty list: %q %v", ids, err)
	}
	// A propagator uses the valid ones and logs the rest.
	t.Setenv(carrier.DebugSessionsEnv, "ok-session,not ok")
	var logs bytes.Buffer
	p := carrier.NewPropagator(carrier.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if bag, _ := injected(p, journeyCtx(t, "ok-session")); !hasMark(bag, "ok-session") {
		t.Fatalf("valid env session not marked: %q", bag)
	}
	if !strings.Contains(logs.String(), "not ok") {
		t.Fatalf("invalid env entry not logged: %q", logs.String())
	}
}
