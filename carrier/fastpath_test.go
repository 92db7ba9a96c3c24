package carrier_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// TestCachedPathsMatchFreshDecode checks that the shortcuts Extract takes
// (cache hits, the baggage decoded as session plus a cached rest, tracestate
// built by Insert) give the same context and count the same drops as a
// propagator that has seen nothing, on random headers that mix valid,
// invalid, duplicate and Level 2 members. Messages share their baggage after
// the session, and each is extracted several times, so every path is taken.
func TestCachedPathsMatchFreshDecode(t *testing.T) {
	sessions := []string{
		"0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6071", "0190b3c4-5d6e-7f80-9a1b-000000000001",
		"abc", "has space", "pct%20x", "p;prop=1", "", "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6071 ",
	}
	bagMembers := []string{
		"tenant=acme", "user.id=u-12345", "feature=checkout-v2", "k=v;prop", "k=v2;p=%41",
		"bad key=1", "x=%41%42", "session.id=other", " y = z ", "", "dup=1", "dup=2",
		"v=%ff", "e=", "=novalue", "noeq", "u=caf%C3%A9", "token=secret",
	}
	tsMembers := []string{
		"rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE", "1vendor@x=l2", "a@b@c=1", "A=1",
		"rojo=again", " sp = x", "", "k=v ", "x=" + strings.Repeat("v", 200), "t@s=1",
	}
	r := rand.New(rand.NewPCG(1, 2))
	pick := func(pool []string, max int) []string {
		out := make([]string, r.IntN(max+1))
		for i := range out {
			out[i] = pool[r.IntN(len(pool))]
		}
		return out
	}
	// A few baggage tails, shared by many messages with different sessions.
	var tails []string
	for range 6 {
		tails = append(tails, strings.Join(pick(bagMembers, 5), ","))
	}
	tails = append(tails, "tenant=acme,user.id=u-12345,feature=checkout-v2", "tenant=acme,session.id=other",
		"k=v;prop,dup=1,dup=2,x=%41%42, y = z ", "tenant=a,,k=b;p=%41")

	for _, opts := range [][]carrier.Option{
		nil,
		{carrier.WithTrust(carrier.Untrusted), carrier.WithUntrustedBaggage("tenant", "k")},
	} {
		warm, warmDrops := newProp(t, opts...)
		for i := range 600 {
			var h kafkaHeaders
			h.add("traceparent", validTP)
			if n := r.IntN(4); n > 0 {
				h.add("tracestate", strings.Join(pick(tsMembers, n), ","))
				if r.IntN(8) == 0 {
					h.add("tracestate", strings.Join(pick(tsMembers, 2), ","))
				}
			}
			sess := sessions[r.IntN(len(sessions))]
			if r.IntN(3) > 0 {
				bag := tails[r.IntN(len(tails))]
				if sess != "" && r.IntN(4) > 0 {
					bag = "session.id=" + sess + "," + bag
				}
				h.add("baggage", bag)
				if r.IntN(10) == 0 {
					h.add("baggage", tails[r.IntN(len(tails))])
				}
			}
			if r.IntN(2) == 0 && sess != "" {
				h.add("session-id", sess)
			}

			fresh, freshDrops := newProp(t, opts...)
			want := describeContext(fresh.Extract(context.Background(), copyHeaders(&h)))
			wantDrops := freshDrops.counts(t)
			for j := range 3 {
				before := warmDrops.counts(t)
				got := describeContext(warm.Extract(context.Background(), copyHeaders(&h)))
				if got != want {
					t.Fatalf("message %d, extraction %d of %v:\n got %s\nwant %s", i, j, h.h, got, want)
				}
				if d := dropDelta(before, warmDrops.counts(t)); !equalCounts(d, wantDrops) {
					t.Fatalf("message %d, extraction %d of %v: drops %v, want %v", i, j, h.h, d, wantDrops)
				}
			}
		}
	}
}

// copyHeaders gives Extract its own bytes and scribbles over them afterwards
// would be the caller's right; the copy lets the test reuse h.
func copyHeaders(h *kafkaHeaders) *kafkaHeaders {
	c := &kafkaHeaders{}
	for _, e := range h.h {
		c.h = append(c.h, header{e.Key, slices.Clone(e.Value)})
	}
	return c
}

func dropDelta(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if v -= before[k]; v != 0 {
			d[k] = v
		}
	}
	return d
}

// describeContext renders everything Extract puts into a context, including
// the Level 2 tracestate members, which only show in what Inject writes.
func describeContext(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	link, _ := carrier.RemoteLink(ctx)
	var ms []string
	for _, m := range baggage.FromContext(ctx).Members() {
		ms = append(ms, m.String())
	}
	slices.Sort(ms)
	out := &kafkaHeaders{}
	carrier.NewPropagator(carrier.WithBaggageFilter(carrier.DenyKeys())).Inject(ctx, out)
	return fmt.Sprintf("sc=%v/%v/%s ts=%q link=%v/%s session=%q baggage=%q injected=%q",
		sc.IsValid(), sc.TraceID(), sc.SpanID(), sc.TraceState().String(), link.IsValid(), link.TraceState().String(),
		carrier.SessionFromContext(ctx), ms, out.h)
}

// TestInjectCacheMatchesFresh checks that Inject, which remembers the
// encoding of a Baggage it has written before, writes the same headers and
// counts the same drops as a propagator that has never seen the Baggage,
// when one Baggage is injected repeatedly with changing sessions.
func TestInjectCacheMatchesFresh(t *testing.T) {
	sc, _ := carrier.ParseTraceparent(validTP)
	mk := func(kv ...string) baggage.Baggage {
		var ms []baggage.Member
		for i := 0; i < len(kv); i += 2 {
			m, err := baggage.NewMemberRaw(kv[i], kv[i+1])
			if err != nil {
				t.Fatal(err)
			}
			ms = append(ms, m)
		}
		b, _ := baggage.New(ms...)
		return b
	}
	bags := []baggage.Baggage{
		mk("tenant", "acme", "user.id", "u-1"),
		mk("tenant", "acme", "password", "x", "api_token", "y", "v", "a b%c"),
		mk(carrier.BaggageSessionKey, "from-baggage", "k", "v"),
		mk("big", strings.Repeat("x", 5000), "bigger", strings.Repeat("y", 5000)),
	}
	sessions := []string{"", "s-1", "s-2", "bad session"}
	r := rand.New(rand.NewPCG(7, 8))
	for _, opts := range [][]carrier.Option{nil, {carrier.WithBaggageFilter(carrier.AllowKeys("tenant", "k"))}} {
		warm, warmDrops := newProp(t, opts...)
		for i := range 400 {
			ctx := baggage.ContextWithBaggage(context.Background(), bags[r.IntN(len(bags))])
			ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
			if s := sessions[r.IntN(len(sessions))]; s != "" {
				ctx = carrier.ContextWithSession(ctx, s)
			}
			fresh, freshDrops := newProp(t, opts...)
			want := &kafkaHeaders{}
			fresh.Inject(ctx, want)
			before := warmDrops.counts(t)
			got := &kafkaHeaders{}
			warm.Inject(ctx, got)
			if fmt.Sprint(got.h) != fmt.Sprint(want.h) {
				t.Fatalf("inject %d:\n got %q\nwant %q", i, got.h, want.h)
			}
			if d := dropDelta(before, warmDrops.counts(t)); !equalCounts(d, freshDrops.counts(t)) {
				t.Fatalf("inject %d: drops %v, want %v", i, d, freshDrops.counts(t))
			}
		}
	}
}
