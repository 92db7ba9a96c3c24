package carrier_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

const (
	trustTP      = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	trustAmbient = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
)

func baggageKeys(ctx context.Context) []string {
	var keys []string
	for _, m := range baggage.FromContext(ctx).Members() {
		keys = append(keys, m.Key()+"="+m.Value())
	}
	slices.Sort(keys)
	return keys
}

// TestWithTrustKeepsEverythingButTheTrust: the untrusted view of a
// propagator reads its header names, judges sessions by its format and
// counts drops on its meter provider; the propagator itself stays trusted.
func TestWithTrustKeepsEverythingButTheTrust(t *testing.T) {
	names := carrier.Names{Traceparent: "x-tp", Baggage: "x-bag", SessionID: "x-sess"}
	p, d := newProp(t, carrier.WithNames(names),
		carrier.WithSessionFormat(func(id string) bool { return strings.HasPrefix(id, "ok-") }))
	u := p.WithTrust(carrier.Untrusted, "tenant")
	if u.Trust() != carrier.Untrusted || p.Trust() != carrier.Trusted || u.Names() != p.Names() {
		t.Fatalf("view trust %v names %+v; original trust %v names %+v", u.Trust(), u.Names(), p.Trust(), p.Names())
	}
	c := propagation.MapCarrier{"x-tp": trustTP, "x-bag": "tenant=t,role=admin", "x-sess": "ok-1"}
	ctx := u.Extract(context.Background(), c)
	link, ok := carrier.RemoteLink(ctx)
	if trace.SpanContextFromContext(ctx).IsValid() || !ok || link.TraceID().String() != trustTP[3:35] {
		t.Fatalf("untrusted view: parent %v, link %v %v", trace.SpanContextFromContext(ctx), link, ok)
	}
	if got := baggageKeys(ctx); !slices.Equal(got, []string{"session.id=ok-1", "tenant=t"}) {
		t.Fatalf("untrusted view baggage %v", got)
	}
	if got := d.counts(t)["baggage/untrusted"]; got != 1 {
		t.Fatalf("untrusted baggage drops counted %d on the propagator's meter, want 1", got)
	}
	// The original is unchanged: same message, trusted.
	ctx = p.Extract(context.Background(), c)
	if !trace.SpanContextFromContext(ctx).IsValid() || len(baggageKeys(ctx)) != 3 {
		t.Fatalf("original propagator changed: parent %v baggage %v", trace.SpanContextFromContext(ctx), baggageKeys(ctx))
	}
}

// TestAdmitAppliesThePolicyToAForeignExtract: what OpenTelemetry's stock
// propagator extracted is admitted by the policy: untrusted, the span
// context becomes a link (the parent context's own span stays), baggage is
// cut to the allow-list and a session that fails the format is dropped.
func TestAdmitAppliesThePolicyToAForeignExtract(t *testing.T) {
	c := propagation.MapCarrier{"traceparent": trustTP, "baggage": "tenant=t,role=admin,session.id=not-a-uuid"}
	extracted := stockPropagator().Extract(context.Background(), c)
	ambient, _ := carrier.ParseTraceparent(trustAmbient)
	parent := trace.ContextWithSpanContext(context.Background(), ambient)

	u, d := newProp(t, carrier.WithTrust(carrier.Untrusted), carrier.WithUntrustedBaggage("tenant"))
	ctx := u.Admit(parent, extracted)
	if sc := trace.SpanContextFromContext(ctx); !sc.Equal(ambient) {
		t.Fatalf("admitted context's span %v, want the parent's own %v", sc, ambient)
	}
	if link, ok := carrier.RemoteLink(ctx); !ok || link.TraceID().String() != trustTP[3:35] {
		t.Fatalf("no link to the creation context: %v %v", link, ok)
	}
	if got := baggageKeys(ctx); !slices.Equal(got, []string{"tenant=t"}) || carrier.SessionFromContext(ctx) != "" {
		t.Fatalf("untrusted admit: baggage %v session %q", got, carrier.SessionFromContext(ctx))
	}
	if got := d.counts(t); got["baggage/untrusted"] != 1 || got["session-id/untrusted"] != 1 {
		t.Fatalf("drops %v, want one untrusted baggage member and one session", got)
	}

	tr := carrier.NewPropagator()
	ctx = tr.Admit(parent, extracted)
	if sc := trace.SpanContextFromContext(ctx); sc.TraceID().String() != trustTP[3:35] || !sc.IsRemote() {
		t.Fatalf("trusted admit: parent %v, want the creation context", sc)
	}
	if len(baggageKeys(ctx)) != 3 || carrier.SessionFromContext(ctx) != "not-a-uuid" {
		t.Fatalf("trusted admit: baggage %v session %q", baggageKeys(ctx), carrier.SessionFromContext(ctx))
	}
}
