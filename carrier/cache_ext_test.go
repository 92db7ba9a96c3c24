package carrier_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// TestCacheHitCountsDropsAgain: a decoded header served from the cache
// reports the same drops as decoding it, every time.
func TestCacheHitCountsDropsAgain(t *testing.T) {
	p, d := newProp(t)
	for _, c := range []propagation.TextMapCarrier{
		propagation.MapCarrier{"traceparent": validTP, "tracestate": "a=1,B=2,a=3", "baggage": "k=v,bad key=1"},
		&kafkaHeaders{h: []header{{"traceparent", []byte(validTP)}, {"tracestate", []byte("a=1,B=2,a=3")}, {"baggage", []byte("k=v,bad key=1")}}},
	} {
		for range 3 {
			ctx := p.Extract(context.Background(), c)
			if got := trace.SpanContextFromContext(ctx).TraceState().String(); got != "" {
				t.Fatalf("tracestate %q", got)
			}
			if got := bagString(baggage.FromContext(ctx)); got != "k=v" {
				t.Fatalf("baggage %q", got)
			}
		}
	}
	// The tracestate is discarded whole at its first invalid member, so
	// the duplicate after it is never reached.
	want := map[string]int64{"tracestate/invalid_member": 6, "baggage/invalid_member": 6}
	if got := d.counts(t); !equalCounts(got, want) {
		t.Fatalf("drops %v, want %v", got, want)
	}
}

// TestCacheNotSharedAcrossTrust: propagators with different trust policies
// decode the same bytes differently.
func TestCacheNotSharedAcrossTrust(t *testing.T) {
	c := propagation.MapCarrier{"baggage": "tenant=t1,debug=1"}
	trusted, _ := newProp(t)
	untrusted, _ := newProp(t, carrier.WithTrust(carrier.Untrusted), carrier.WithUntrustedBaggage("tenant"))
	for range 2 {
		if got := bagString(baggage.FromContext(trusted.Extract(context.Background(), c))); got != "debug=1|tenant=t1" {
			t.Fatalf("trusted baggage %q", got)
		}
		if got := bagString(baggage.FromContext(untrusted.Extract(context.Background(), c))); got != "tenant=t1" {
			t.Fatalf("untrusted baggage %q", got)
		}
	}
}

// TestCacheDoesNotAliasCarrierBytes: a Kafka client may reuse a message's
// memory. Rewriting the bytes in place after Extract must neither change
// the extracted context nor poison the cache for later messages.
func TestCacheDoesNotAliasCarrierBytes(t *testing.T) {
	p, _ := newProp(t)
	mk := func(ts, bag, sess string) *kafkaHeaders {
		return &kafkaHeaders{h: []header{{"traceparent", []byte(validTP)}, {"tracestate", []byte(ts)}, {"baggage", []byte(bag)}, {"session-id", []byte(sess)}}}
	}
	msg := mk("a=1", "k=aaaa", "sess-A")
	ctxA := p.Extract(context.Background(), msg)
	copy(msg.h[1].Value, "b=2")
	copy(msg.h[2].Value, "k=bbbb")
	copy(msg.h[3].Value, "sess-B")
	ctxB := p.Extract(context.Background(), msg)
	ctxA2 := p.Extract(context.Background(), mk("a=1", "k=aaaa", "sess-A"))
	for name, tc := range map[string]struct {
		ctx           context.Context
		ts, bag, sess string
	}{
		"first":  {ctxA, "a=1", "k=aaaa|session.id=sess-A", "sess-A"},
		"reused": {ctxB, "b=2", "k=bbbb|session.id=sess-B", "sess-B"},
		"again":  {ctxA2, "a=1", "k=aaaa|session.id=sess-A", "sess-A"},
	} {
		if got := trace.SpanContextFromContext(tc.ctx).TraceState().String(); got != tc.ts {
			t.Errorf("%s: tracestate %q, want %q", name, got, tc.ts)
		}
		if got := bagString(baggage.FromContext(tc.ctx)); got != tc.bag {
			t.Errorf("%s: baggage %q, want %q", name, got, tc.bag)
		}
		if got := carrier.SessionFromContext(tc.ctx); got != tc.sess {
			t.Errorf("%s: session %q, want %q", name, got, tc.sess)
		}
	}
}

// TestRepeatedInjectReusesOutputFaithfully: injecting one span context,
// baggage and session again and again (messages under one parent that
// starts no span) reuses the whole output, without allocating, yet writes
// exactly what a fresh inject would, clears a stale tracestate and counts
// every drop every time.
func TestRepeatedInjectReusesOutputFaithfully(t *testing.T) {
	p, d := newProp(t)
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, Remote: true}))
	k1, _ := baggage.NewMember("tenant", "acme")
	k2, _ := baggage.NewMember("password", "hunter2") // dropped by the default filter
	bag, _ := baggage.New(k1, k2)
	ctx = baggage.ContextWithBaggage(ctx, bag)
	good := carrier.ContextWithSession(ctx, "0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a")
	bad := carrier.ContextWithSession(ctx, "bad\x01session")

	want := propagation.MapCarrier{}
	p.Inject(good, want)
	for i := range 4 {
		m := propagation.MapCarrier{"tracestate": "stale=1"}
		p.Inject(good, m)
		if len(m) != len(want)+1 || m["tracestate"] != "" {
			t.Fatalf("inject %d: %v, want %v with the stale tracestate cleared", i, m, want)
		}
		for k, v := range want {
			if m[k] != v {
				t.Fatalf("inject %d: %s = %q, want %q", i, k, m[k], v)
			}
		}
		kh := &kafkaHeaders{}
		p.Inject(good, kh)
		for k, v := range want {
			if got := kh.Get(k); got != v {
				t.Fatalf("byte carrier inject %d: %s = %q, want %q", i, k, got, v)
			}
		}
	}
	for range 3 {
		m := propagation.MapCarrier{}
		p.Inject(bad, m)
		if m["session-id"] != "" || m["traceparent"] != want["traceparent"] {
			t.Fatalf("invalid session: %v", m)
		}
	}
	wantDrops := map[string]int64{"baggage/filtered": 12, "session-id/invalid": 3} // 1 + 4×2 + 3 injects
	if got := d.counts(t); !equalCounts(got, wantDrops) {
		t.Fatalf("drops %v, want %v", got, wantDrops)
	}

	m := propagation.MapCarrier{}
	p.Inject(good, m)
	if n := testing.AllocsPerRun(100, func() { p.Inject(good, m) }); n != 0 {
		t.Fatalf("repeated inject allocates %v times", n)
	}
	other := carrier.ContextWithSession(ctx, "0193a5c4-7d2e-7c1a-9f3b-000000000000")
	p.Inject(other, m)
	if m["session-id"] != "0193a5c4-7d2e-7c1a-9f3b-000000000000" {
		t.Fatalf("another session got %q: the cache served a stale output", m["session-id"])
	}
}

// TestSessionOnlyBaggageCached: without baggage the baggage header holds
// the session member alone; it is cached per session, so alternating
// sessions never see each other's.
func TestSessionOnlyBaggageCached(t *testing.T) {
	p, _ := newProp(t)
	sessions := []string{"0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a", "0193a5c4-7d2e-7c1a-9f3b-000000000001"}
	for i := range 8 {
		sess := sessions[i%2]
		ctx := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: trace.TraceID{byte(i + 1)}, SpanID: trace.SpanID{byte(i + 1)}, Remote: true}))
		m := propagation.MapCarrier{}
		p.Inject(carrier.ContextWithSession(ctx, sess), m)
		if m["baggage"] != "session.id="+sess || m["session-id"] != sess {
			t.Fatalf("inject %d: baggage %q session %q, want session %q", i, m["baggage"], m["session-id"], sess)
		}
	}
}

// TestRepeatedInjectBytesAreTheCarriers: a byte carrier owns the values it
// is given even when the output is reused; editing one message's header in
// place changes no other message and no later inject.
func TestRepeatedInjectBytesAreTheCarriers(t *testing.T) {
	p, _ := newProp(t)
	ctx := carrier.ContextWithSession(trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(
		trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, Remote: true})), "0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a")
	var msgs []*kafkaHeaders
	for range 4 {
		kh := &kafkaHeaders{}
		p.Inject(ctx, kh)
		msgs = append(msgs, kh)
	}
	want := msgs[0].Get("traceparent")
	for i := range msgs[2].h {
		for j := range msgs[2].h[i].Value {
			msgs[2].h[i].Value[j] = 'X'
		}
	}
	after := &kafkaHeaders{}
	p.Inject(ctx, after)
	for i, kh := range append(msgs, after) {
		if got := kh.Get("traceparent"); i != 2 && got != want {
			t.Fatalf("message %d: traceparent %q after another message's bytes were edited, want %q", i, got, want)
		}
	}
}
