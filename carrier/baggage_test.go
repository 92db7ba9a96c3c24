package carrier_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"

	"github.com/tracebridge/tracebridge/carrier"
)

// bagString renders baggage as sorted "key=value[;prop[=v]]" for comparison,
// with values decoded.
func bagString(b baggage.Baggage) string {
	ms := b.Members()
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		s := m.Key() + "=" + m.Value()
		for _, p := range m.Properties() {
			s += ";" + p.Key()
			if v, ok := p.Value(); ok {
				s += "=" + v
			}
		}
		out = append(out, s)
	}
	sortStrings(out)
	return strings.Join(out, "|")
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func extractBaggage(t *testing.T, p *carrier.Propagator, fields ...string) baggage.Baggage {
	t.Helper()
	h := propagation.HeaderCarrier{}
	for _, f := range fields {
		(map[string][]string)(h)["Baggage"] = append(h.Values("baggage"), f)
	}
	return baggage.FromContext(p.Extract(context.Background(), h))
}

// TestBaggageExtractRules covers the W3C Baggage grammar, one row per rule.
// want lists the decoded members, sorted, joined by "|".
func TestBaggageExtractRules(t *testing.T) {
	tests := []struct {
		rule   string
		fields []string
		want   string
		drops  map[string]int64
	}{
		{"simple members", []string{"k1=v1,k2=v2"}, "k1=v1|k2=v2", nil},
		{"OWS around members, = and ;", []string{" k1 = v1 ,\tk2=v2 ; p1 ; p2 = x "}, "k1=v1|k2=v2;p1;p2=x", nil},
		{"empty baggage", []string{""}, "", nil},
		{"empty members skipped", []string{",k=v,, ,"}, "k=v", nil},
		{"empty value allowed", []string{"k="}, "k=", nil},
		{"percent-decoded value", []string{"k=a%20b%2C%3B%25%3D"}, "k=a b,;%=", nil},
		{"lowercase percent escape", []string{"k=%c3%a9"}, "k=é", nil},
		{"non-ASCII via UTF-8 escapes", []string{"k=%E6%97%A5%E6%9C%AC"}, "k=日本", nil},
		{"invalid UTF-8 becomes U+FFFD", []string{"k=%FF"}, "k=\uFFFD", nil},
		{"token punctuation in key", []string{"a!#$%&'*+-.^_`|~9=v"}, "a!#$%&'*+-.^_`|~9=v", nil},
		{"key with separator invalid", []string{"k(=v,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"empty key invalid", []string{"=v,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"member without = invalid", []string{"k,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"space inside value invalid", []string{"k=a b,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"quote in value invalid", []string{"k=a\"b,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"backslash in value invalid", []string{"k=a\\b,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"non-ASCII raw byte invalid", []string{"k=é,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"truncated escape invalid", []string{"k=%2,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"non-hex escape invalid", []string{"k=%zz,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"property with value", []string{"k=v;p=x%20y"}, "k=v;p=x y", nil},
		{"property without value", []string{"k=v;flag"}, "k=v;flag", nil},
		{"several properties", []string{"k=v;a=1;b;c=3"}, "k=v;a=1;b;c=3", nil},
		{"invalid property key invalidates member", []string{"k=v;p(=1,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"invalid property value invalidates member", []string{"k=v;p=a b,ok=1"}, "ok=1", map[string]int64{"baggage/invalid_member": 1}},
		{"duplicate key: last wins", []string{"k=1,j=2,k=3"}, "j=2|k=3", nil},
		{"several fields combined", []string{"a=1", "b=2", "c=3"}, "a=1|b=2|c=3", nil},
		{"duplicate across fields: last wins", []string{"a=1", "a=2"}, "a=2", nil},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			p, d := newProp(t)
			if got := bagString(extractBaggage(t, p, tt.fields...)); got != tt.want {
				t.Fatalf("baggage\n got %q\nwant %q", got, tt.want)
			}
			want := tt.drops
			if want == nil {
				want = map[string]int64{}
			}
			if c := d.counts(t); !equalCounts(c, want) {
				t.Fatalf("drops %v, want %v", c, want)
			}
		})
	}
}

// TestBaggageLimits: at most 64 members and 8192 bytes are accepted; whole
// members beyond are dropped, never part of one.
func TestBaggageLimits(t *testing.T) {
	many := func(n, valueLen int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("k%02d=%s", i, strings.Repeat("v", valueLen))
		}
		return out
	}
	t.Run("64 members kept", func(t *testing.T) {
		p, d := newProp(t)
		if b := extractBaggage(t, p, strings.Join(many(64, 1), ",")); b.Len() != 64 {
			t.Fatalf("kept %d members", b.Len())
		}
		if c := d.counts(t); len(c) != 0 {
			t.Fatalf("drops %v", c)
		}
	})
	t.Run("65th member dropped", func(t *testing.T) {
		p, d := newProp(t)
		b := extractBaggage(t, p, strings.Join(many(65, 1), ","))
		if b.Len() != 64 || b.Member("k64").Key() != "" || b.Member("k63").Value() != "v" {
			t.Fatalf("got %d members, k64=%q", b.Len(), b.Member("k64").Value())
		}
		if c := d.counts(t); c["baggage/too_many_members"] != 1 {
			t.Fatalf("drops %v", c)
		}
	})
	t.Run("65 members over two fields", func(t *testing.T) {
		p, _ := newProp(t)
		all := many(65, 1)
		if b := extractBaggage(t, p, strings.Join(all[:40], ","), strings.Join(all[40:], ",")); b.Len() != 64 {
			t.Fatalf("kept %d members", b.Len())
		}
	})
	t.Run("over 8192 bytes drops whole members", func(t *testing.T) {
		p, d := newProp(t)
		// 9 members of 1004 bytes: 8 fit (8*1004+7 = 8039), the 9th does not.
		in := many(9, 1000)
		b := extractBaggage(t, p, strings.Join(in, ","))
		if b.Len() != 8 {
			t.Fatalf("kept %d members, want 8", b.Len())
		}
		for _, m := range b.Members() {
			if len(m.Value()) != 1000 {
				t.Fatalf("member %s cut to %d bytes", m.Key(), len(m.Value()))
			}
		}
		if c := d.counts(t); c["baggage/too_large"] != 1 {
			t.Fatalf("drops %v", c)
		}
	})
	t.Run("exactly 8192 bytes kept", func(t *testing.T) {
		p, _ := newProp(t)
		in := many(8, 1000)                                                    // 8*1004 + 7 commas = 8039
		in = append(in, "last="+strings.Repeat("x", 8192-8039-1-len("last="))) // fills to 8192
		if n := len(strings.Join(in, ",")); n != 8192 {
			t.Fatalf("test input is %d bytes", n)
		}
		if b := extractBaggage(t, p, strings.Join(in, ",")); b.Len() != 9 {
			t.Fatalf("kept %d members, want 9", b.Len())
		}
	})
	t.Run("small member after a large drop still fits", func(t *testing.T) {
		p, _ := newProp(t)
		in := append(many(8, 1000), "big="+strings.Repeat("x", 500), "small=1")
		b := extractBaggage(t, p, strings.Join(in, ","))
		if b.Member("big").Key() != "" || b.Member("small").Value() != "1" {
			t.Fatalf("big=%q small=%q", b.Member("big").Value(), b.Member("small").Value())
		}
	})
}

func ctxWithBaggage(t *testing.T, kv ...string) context.Context {
	t.Helper()
	var ms []baggage.Member
	for i := 0; i+1 < len(kv); i += 2 {
		m, err := baggage.NewMemberRaw(kv[i], kv[i+1])
		if err != nil {
			t.Fatalf("member %q: %v", kv[i], err)
		}
		ms = append(ms, m)
	}
	b, err := baggage.New(ms...)
	if err != nil {
		t.Fatal(err)
	}
	return baggage.ContextWithBaggage(context.Background(), b)
}

// TestBaggagePercentEncodingRoundTrip: every byte that is not a
// baggage-octet, and "%" itself, is percent-encoded on inject and decoded
// back exactly on extract.
func TestBaggagePercentEncodingRoundTrip(t *testing.T) {
	values := []string{
		"plain", "", "with space", "comma,here", "semi;colon", "per%cent", "%20", "eq=ual",
		"quote\"", "back\\slash", "ünïcødé", "日本語", "emoji 🎉", "tab\tnew\nline", "\x7f\x01",
		"all !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
	}
	p, _ := newProp(t, carrier.WithBaggageFilter(carrier.DenyKeys()))
	for i, v := range values {
		t.Run(fmt.Sprintf("%d", i), func(t *testing.T) {
			m, err := baggage.NewMemberRaw("k", v, mustProp(t, "p", v))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := baggage.New(m)
			out := propagation.MapCarrier{}
			p.Inject(baggage.ContextWithBaggage(context.Background(), b), out)
			wire := out["baggage"]
			for j := 0; j < len(wire); j++ {
				if c := wire[j]; c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
					t.Fatalf("unencoded byte %#x on the wire: %q", c, wire)
				}
			}
			got := baggage.FromContext(p.Extract(context.Background(), out)).Member("k")
			if got.Value() != v {
				t.Fatalf("value %q came back as %q (wire %q)", v, got.Value(), wire)
			}
			if pv, _ := got.Properties()[0].Value(); pv != v {
				t.Fatalf("property %q came back as %q (wire %q)", v, pv, wire)
			}
		})
	}
}

func mustProp(t *testing.T, k, v string) baggage.Property {
	t.Helper()
	p, err := baggage.NewKeyValuePropertyRaw(k, v)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBaggageInjectLimits: inject never writes more than 64 members or 8192
// bytes, and drops whole members.
func TestBaggageInjectLimits(t *testing.T) {
	t.Run("members", func(t *testing.T) {
		p, d := newProp(t)
		var kv []string
		for i := range 64 { // OpenTelemetry's own limit; the session makes 65
			kv = append(kv, fmt.Sprintf("k%02d", i), "v")
		}
		out := propagation.MapCarrier{}
		p.Inject(carrier.ContextWithSession(ctxWithBaggage(t, kv...), "s1"), out)
		parts := strings.Split(out["baggage"], ",")
		if len(parts) != 64 || parts[0] != "session.id=s1" || parts[63] != "k62=v" {
			t.Fatalf("%d members on the wire, first %q, last %q", len(parts), parts[0], parts[len(parts)-1])
		}
		if c := d.counts(t); c["baggage/too_many_members"] != 1 {
			t.Fatalf("drops %v", c)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		p, d := newProp(t)
		big := strings.Repeat("é", 300) // 1800 bytes encoded
		// 8169 bytes of baggage: within the limit until the session
		// member (48 bytes with its comma) is added.
		ctx := ctxWithBaggage(t, "k0", big, "k1", big, "k2", big, "k3", big, "k4", strings.Repeat("x", 950))
		sess := carrier.NewSessionID()
		out := propagation.MapCarrier{}
		p.Inject(carrier.ContextWithSession(ctx, sess), out)
		if n := len(out["baggage"]); n > 8192 {
			t.Fatalf("wire baggage is %d bytes", n)
		}
		b := baggage.FromContext(p.Extract(context.Background(), out))
		if b.Len() != 5 || b.Member("k4").Key() != "" || b.Member("session.id").Value() != sess {
			t.Fatalf("members %q", bagString(b))
		}
		for _, k := range []string{"k0", "k1", "k2", "k3"} {
			if b.Member(k).Value() != big {
				t.Fatalf("member %s was cut", k)
			}
		}
		if c := d.counts(t); c["baggage/too_large"] != 1 {
			t.Fatalf("drops %v", c)
		}
	})
	t.Run("sorted by key so equal baggage gives equal bytes", func(t *testing.T) {
		p, _ := newProp(t)
		out := propagation.MapCarrier{}
		p.Inject(ctxWithBaggage(t, "zeta", "1", "alpha", "2", "mid", "3"), out)
		if got := out["baggage"]; got != "alpha=2,mid=3,zeta=1" {
			t.Fatalf("baggage %q", got)
		}
	})
}

// TestBaggageFilter covers the produce-side filter: the default denies keys
// that look like secrets or personal data, in any case.
func TestBaggageFilter(t *testing.T) {
	denied := []string{"password", "db.Password", "client_secret", "X-Auth-Token", "authorization",
		"Cookie", "user.email", "SSN", "credit.card", "CARDNUMBER"}
	allowed := []string{"tenant", "user.id", "feature.flag", "region", "session.id"}
	for _, k := range denied {
		if carrier.DenySensitive(k) {
			t.Errorf("DenySensitive(%q) = true, want false", k)
		}
	}
	for _, k := range allowed {
		if !carrier.DenySensitive(k) {
			t.Errorf("DenySensitive(%q) = false, want true", k)
		}
	}

	var kv []string
	for _, k := range append(append([]string{}, denied...), allowed[:4]...) {
		kv = append(kv, k, "x")
	}
	ctx := ctxWithBaggage(t, kv...)
	tests := []struct {
		name    string
		opt     carrier.Option
		want    string
		dropped int64
	}{
		{"default denies sensitive", nil, "feature.flag=x,region=x,tenant=x,user.id=x", int64(len(denied))},
		{"AllowKeys", carrier.WithBaggageFilter(carrier.AllowKeys("tenant", "password")), "password=x,tenant=x", int64(len(denied) + 4 - 2)},
		{"DenyKeys custom", carrier.WithBaggageFilter(carrier.DenyKeys("TENANT", "region")), "", 2},
		{"DenyKeys none keeps all", carrier.WithBaggageFilter(carrier.DenyKeys()), "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, d := newProp(t, tt.opt)
			out := propagation.MapCarrier{}
			p.Inject(ctx, out)
			got := out["baggage"]
			if tt.want != "" && got != tt.want {
				t.Fatalf("baggage %q, want %q", got, tt.want)
			}
			if n := int64(len(strings.Split(got, ","))); n != int64(len(kv)/2)-tt.dropped {
				t.Fatalf("%d members sent (%q), want %d", n, got, int64(len(kv)/2)-tt.dropped)
			}
			if c := d.counts(t); c["baggage/filtered"] != tt.dropped {
				t.Fatalf("drops %v, want baggage/filtered %d", c, tt.dropped)
			}
		})
	}
}
