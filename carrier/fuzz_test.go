package carrier_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// The fuzz targets check two properties on arbitrary input: nothing panics,
// and what tracebridge writes after reading x reads back to the same thing,
// so format(parse(x)) is a fixed point. Seeds live in testdata/fuzz/<Name>/;
// the hostile ones are up to 80 KiB, and minimizing an input grown from
// them takes the fuzzer minutes, so fuzz with -fuzzminimizetime=1s.

func FuzzTraceparent(f *testing.F) {
	f.Fuzz(func(t *testing.T, v string) {
		sc, ok := carrier.ParseTraceparent(v)
		if !ok {
			if sc.IsValid() {
				t.Fatalf("rejected %q but returned %v", v, sc)
			}
			return
		}
		// Independent checks of what acceptance implies.
		if len(v) < 55 || v[:2] == "ff" || (v[:2] == "00" && len(v) != 55) || (len(v) > 55 && v[55] != '-') {
			t.Fatalf("accepted malformed %q", v)
		}
		if v[3:35] != sc.TraceID().String() || v[36:52] != sc.SpanID().String() {
			t.Fatalf("%q parsed as %v (IDs must be the input's lowercase hex)", v, sc)
		}
		if sc.TraceFlags()&^(trace.FlagsSampled|trace.FlagsRandom) != 0 {
			t.Fatalf("unknown flags kept: %02x", byte(sc.TraceFlags()))
		}
		out := carrier.FormatTraceparent(sc)
		sc2, ok := carrier.ParseTraceparent(out)
		if !ok || !sc2.Equal(sc) || carrier.FormatTraceparent(sc2) != out {
			t.Fatalf("%q -> %q does not re-parse to the same value", v, out)
		}
	})
}

// validL2Member is an independent check of the Level 2 list-member grammar.
func validL2Member(m string) bool {
	k, v, ok := strings.Cut(m, "=")
	if !ok || len(k) == 0 || len(k) > 256 || len(v) == 0 || len(v) > 256 || v[len(v)-1] == ' ' {
		return false
	}
	if c := k[0]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
		return false
	}
	for _, c := range []byte(k[1:]) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("_-*/@", c) >= 0) {
			return false
		}
	}
	for _, c := range []byte(v) {
		if c < 0x20 || c > 0x7e || c == ',' || c == '=' {
			return false
		}
	}
	return true
}

// normalL2List is an independent model of the Level 2 tracestate list:
// the fields combined with ",", OWS around each member and empty members
// removed, and "" for a list that cannot be parsed (an invalid member, a
// repeated key, more than 32 members).
func normalL2List(fields ...string) string {
	var ms []string
	seen := map[string]bool{}
	for _, m := range strings.Split(strings.Join(fields, ","), ",") {
		m = strings.Trim(m, " \t")
		if m == "" {
			continue
		}
		k, _, _ := strings.Cut(m, "=")
		if !validL2Member(m) || seen[k] || len(ms) == 32 {
			return ""
		}
		seen[k] = true
		ms = append(ms, m)
	}
	return strings.Join(ms, ",")
}

func FuzzTracestate(f *testing.F) {
	p := carrier.NewPropagator()
	forward := func(fields ...string) string {
		h := http.Header{}
		h.Set("traceparent", validTP)
		for _, v := range fields {
			h.Add("tracestate", v)
		}
		out := propagation.MapCarrier{}
		p.Inject(p.Extract(context.Background(), propagation.HeaderCarrier(h)), out)
		return out["tracestate"]
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		out := forward(a, b)
		// Level 2 discards a list that cannot be parsed whole: what is
		// forwarded is either nothing or exactly the input's members, in
		// order, with the optional whitespace and empty members gone.
		if want := normalL2List(a, b); out != want {
			t.Fatalf("forwarded %q from %q, %q; want %q", out, a, b, want)
		}
		if out == "" {
			return
		}
		ms := strings.Split(out, ",")
		if len(ms) > 32 {
			t.Fatalf("%d members forwarded", len(ms))
		}
		seen := map[string]bool{}
		for _, m := range ms {
			if !validL2Member(m) {
				t.Fatalf("invalid member %q forwarded from %q, %q", m, a, b)
			}
			k, _, _ := strings.Cut(m, "=")
			if seen[k] {
				t.Fatalf("key %q forwarded twice", k)
			}
			seen[k] = true
			if !strings.Contains(a+","+b, m) {
				t.Fatalf("member %q was not in the input", m)
			}
		}
		if again := forward(out); again != out {
			t.Fatalf("not a fixed point:\n %q\n %q", out, again)
		}
	})
}

func FuzzBaggage(f *testing.F) {
	p := carrier.NewPropagator(carrier.WithBaggageFilter(carrier.DenyKeys()))
	f.Fuzz(func(t *testing.T, a, b string) {
		h := http.Header{}
		h.Add("baggage", a)
		h.Add("baggage", b)
		ctx := p.Extract(context.Background(), propagation.HeaderCarrier(h))
		bag := baggage.FromContext(ctx)
		out := propagation.MapCarrier{}
		p.Inject(ctx, out)
		wire := out["baggage"]
		if len(wire) > 8192 || bag.Len() > 64 {
			t.Fatalf("limits exceeded: %d bytes, %d members", len(wire), bag.Len())
		}
		ctx2 := p.Extract(context.Background(), out)
		if x, y := bagString(bag), bagString(baggage.FromContext(ctx2)); x != y {
			t.Fatalf("members changed across a hop:\n %q\n %q\nwire %q", x, y, wire)
		}
		out2 := propagation.MapCarrier{}
		p.Inject(ctx2, out2)
		if out2["baggage"] != wire {
			t.Fatalf("not a fixed point:\n %q\n %q", wire, out2["baggage"])
		}
		// What we send must parse cleanly with stock OpenTelemetry too.
		if wire != "" {
			if sb, err := baggage.Parse(wire); err != nil || sb.Len() != bag.Len() {
				t.Fatalf("stock parse of %q: %v (%d members, want %d)", wire, err, sb.Len(), bag.Len())
			}
		}
	})
}

func FuzzSession(f *testing.F) {
	p := carrier.NewPropagator()
	f.Fuzz(func(t *testing.T, hdr, bag string) {
		ok := carrier.ValidateSessionID(hdr) == nil
		indep := len(hdr) > 0 && len(hdr) <= 128
		for _, c := range []byte(hdr) {
			if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
				indep = false
			}
		}
		if ok != indep {
			t.Fatalf("ValidateSessionID(%q) ok=%v, want %v", hdr, ok, indep)
		}
		c := propagation.MapCarrier{"session-id": hdr, "baggage": bag}
		ctx := p.Extract(context.Background(), c)
		s := carrier.SessionFromContext(ctx)
		if s != "" && carrier.ValidateSessionID(s) != nil {
			t.Fatalf("invalid session %q accepted", s)
		}
		if ok && s != hdr {
			t.Fatalf("valid header %q lost to %q", hdr, s)
		}
		out := propagation.MapCarrier{}
		p.Inject(ctx, out)
		if out["session-id"] != s {
			t.Fatalf("session %q sent as %q", s, out["session-id"])
		}
		if got := carrier.SessionFromContext(p.Extract(context.Background(), out)); got != s {
			t.Fatalf("session %q came back as %q", s, got)
		}
	})
}
