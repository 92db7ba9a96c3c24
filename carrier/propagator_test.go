package carrier_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// TestUntrustedPolicy: untrusted input cannot steer the system. Its
// traceparent becomes a RemoteLink, not a parent; its baggage is dropped
// but for the allow-list; its session must match the format.
func TestUntrustedPolicy(t *testing.T) {
	sess := carrier.NewSessionID()
	c := propagation.MapCarrier{
		"traceparent": validTP,
		"tracestate":  "a=1",
		"baggage":     "tenant=t1,debug=true,session.id=" + sess,
		"session-id":  sess,
	}
	p, d := newProp(t, carrier.WithTrust(carrier.Untrusted), carrier.WithUntrustedBaggage("tenant"))
	if p.Trust() != carrier.Untrusted || p.Trust().String() != "untrusted" {
		t.Fatalf("Trust() = %v", p.Trust())
	}
	ctx := p.Extract(context.Background(), c)
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		t.Fatalf("untrusted traceparent became the parent: %v", sc)
	}
	link, ok := carrier.RemoteLink(ctx)
	if !ok || link.TraceID().String() != tid || link.SpanID().String() != sid || link.TraceState().Get("a") != "1" {
		t.Fatalf("RemoteLink = %v, %v", link, ok)
	}
	if got := bagString(baggage.FromContext(ctx)); got != "session.id="+sess+"|tenant=t1" {
		t.Fatalf("baggage %q", got)
	}
	if carrier.SessionFromContext(ctx) != sess {
		t.Fatalf("session %q", carrier.SessionFromContext(ctx))
	}
	if got := d.counts(t); !equalCounts(got, map[string]int64{"baggage/untrusted": 1}) {
		t.Fatalf("drops %v", got)
	}

	// Trusted: the same input is the parent and no RemoteLink is set.
	tp, _ := newProp(t)
	ctx = tp.Extract(context.Background(), c)
	if sc := trace.SpanContextFromContext(ctx); !sc.IsValid() || !sc.IsRemote() {
		t.Fatalf("trusted traceparent not the parent: %v", sc)
	}
	if _, ok := carrier.RemoteLink(ctx); ok {
		t.Fatal("trusted extract set a RemoteLink")
	}
	if baggage.FromContext(ctx).Len() != 3 {
		t.Fatalf("trusted baggage %q", bagString(baggage.FromContext(ctx)))
	}
}

// TestMultiValueCarriersAgree: the same headers give the same context through
// http.Header (a ValuesGetter), a ByteCarrier and, where one value per key
// suffices, a plain map.
func TestMultiValueCarriersAgree(t *testing.T) {
	fields := [][2]string{
		{"traceparent", validTP},
		{"tracestate", "a=1,b@x=2"},
		{"tracestate", "c=3"},
		{"baggage", "k1=v1;p=1"},
		{"baggage", "k2=v%202"},
		{"session-id", "s1"},
	}
	h := http.Header{}
	k := &kafkaHeaders{}
	for _, f := range fields {
		h.Add(f[0], f[1])
		k.add(f[0], f[1])
	}
	p, _ := newProp(t)
	summary := func(c propagation.TextMapCarrier) string {
		ctx := p.Extract(context.Background(), c)
		out := propagation.MapCarrier{}
		p.Inject(ctx, out)
		return out["traceparent"] + " | " + out["tracestate"] + " | " + bagString(baggage.FromContext(ctx)) + " | " + carrier.SessionFromContext(ctx)
	}
	want := validTP + " | a=1,b@x=2,c=3 | k1=v1;p=1|k2=v 2|session.id=s1 | s1"
	if got := summary(propagation.HeaderCarrier(h)); got != want {
		t.Fatalf("http.Header:\n got %s\nwant %s", got, want)
	}
	if got := summary(k); got != want {
		t.Fatalf("ByteCarrier:\n got %s\nwant %s", got, want)
	}
	m := propagation.MapCarrier{"traceparent": validTP, "tracestate": "a=1,b@x=2,c=3", "baggage": "k1=v1;p=1,k2=v%202", "session-id": "s1"}
	if got := summary(m); got != want {
		t.Fatalf("map:\n got %s\nwant %s", got, want)
	}
	// A ByteCarrier's values are copied: changing the message afterwards
	// must not change the extracted context.
	ctx := p.Extract(context.Background(), k)
	for i := range k.h {
		for j := range k.h[i].Value {
			k.h[i].Value[j] = 'X'
		}
	}
	out := propagation.MapCarrier{}
	p.Inject(ctx, out)
	if out["tracestate"] != "a=1,b@x=2,c=3" || out["session-id"] != "s1" || !strings.Contains(out["baggage"], "k2=v%202") {
		t.Fatalf("context aliases the carrier's bytes: %v", out)
	}
}

// TestRoundTripHTTPMapHTTP: HTTP → propagator → map carrier → propagator →
// HTTP keeps traceparent, tracestate and session byte for byte and baggage
// as the same set of members. That is what a broker hop between two HTTP
// services must do.
func TestRoundTripHTTPMapHTTP(t *testing.T) {
	sess := carrier.NewSessionID()
	in := http.Header{}
	in.Set("traceparent", "00-"+tid+"-"+sid+"-03")
	in.Set("tracestate", "congo=t61rcWkgMzE,a@abcdefghijklmnop=1,rojo=00f067aa0ba902b7,1abc= lead")
	in.Set("baggage", "session.id="+sess+",userId=alice,serverNode=DF%2028,isProduction=false;ttl=3,text=%E6%97%A5%25%2C%3B%20x")
	in.Set("session-id", sess)

	p, d := newProp(t)
	ctx := p.Extract(context.Background(), propagation.HeaderCarrier(in))
	mid := propagation.MapCarrier{}
	p.Inject(ctx, mid)
	ctx2 := p.Extract(context.Background(), mid)
	out := http.Header{}
	p.Inject(ctx2, propagation.HeaderCarrier(out))

	for _, h := range []string{"traceparent", "tracestate", "session-id"} {
		if got, want := out.Values(h), in.Values(h); len(got) != 1 || got[0] != want[0] {
			t.Errorf("%s:\n got %q\nwant %q", h, got, want)
		}
	}
	inBag, _ := baggage.Parse(in.Get("baggage"))
	outBag, err := baggage.Parse(out.Get("baggage"))
	if err != nil {
		t.Fatalf("outgoing baggage %q: %v", out.Get("baggage"), err)
	}
	if a, b := bagString(inBag), bagString(outBag); a != b {
		t.Errorf("baggage members differ:\n got %s\nwant %s", b, a)
	}
	if c := d.counts(t); len(c) != 0 {
		t.Errorf("drops %v", c)
	}
}

// TestRetryHeaders covers retry-attempt and retry-previous.
func TestRetryHeaders(t *testing.T) {
	prev, _ := carrier.ParseTraceparent(validTP)
	p, d := newProp(t)

	none := propagation.MapCarrier{}
	p.InjectRetry(none, carrier.Retry{Attempt: 1, Previous: prev})
	if len(none) != 0 {
		t.Fatalf("attempt 1 wrote %v", none)
	}
	c := propagation.MapCarrier{}
	p.InjectRetry(c, carrier.Retry{Attempt: 3, Previous: prev})
	if c["retry-attempt"] != "3" || c["retry-previous"] != validTP {
		t.Fatalf("headers %v", c)
	}
	if r := p.ExtractRetry(c); r.Attempt != 3 || r.Previous.SpanID() != prev.SpanID() {
		t.Fatalf("ExtractRetry = %+v", r)
	}
	if r := p.ExtractRetry(propagation.MapCarrier{}); r.Attempt != 0 || r.Previous.IsValid() {
		t.Fatalf("absent headers gave %+v", r)
	}
	for _, bad := range []string{"1", "0", "-4", "abc", "2.5", "99999999999"} {
		if r := p.ExtractRetry(propagation.MapCarrier{"retry-attempt": bad}); r.Attempt != 0 {
			t.Errorf("retry-attempt %q accepted as %d", bad, r.Attempt)
		}
	}
	if r := p.ExtractRetry(propagation.MapCarrier{"retry-previous": "00-zz"}); r.Previous.IsValid() {
		t.Error("invalid retry-previous accepted")
	}
	if got := d.counts(t); got["retry/invalid"] != 7 {
		t.Fatalf("drops %v, want retry/invalid 7", got)
	}
}

// TestDeadLetterHeaders: the reason is one line of at most 512 bytes, cut on
// a UTF-8 boundary, with control characters replaced.
func TestDeadLetterHeaders(t *testing.T) {
	p, _ := newProp(t)
	c := propagation.MapCarrier{}
	p.InjectDeadLetter(c, carrier.DeadLetter{Reason: "boom\nstack\x00trace", Attempts: 5, Source: "orders"})
	d, ok := p.ExtractDeadLetter(c)
	if !ok || d.Reason != "boom stack trace" || d.Attempts != 5 || d.Source != "orders" {
		t.Fatalf("got %+v, %v", d, ok)
	}
	long := strings.Repeat("a", 511) + "é" + strings.Repeat("b", 100)
	p.InjectDeadLetter(c, carrier.DeadLetter{Reason: long, Attempts: 1})
	if got := c["dead-letter-reason"]; got != strings.Repeat("a", 511) {
		t.Fatalf("reason cut to %d bytes: %q", len(got), got[500:])
	}
	if _, ok := p.ExtractDeadLetter(propagation.MapCarrier{}); ok {
		t.Fatal("no dead-letter headers reported as a dead letter")
	}
}

// TestDropsLoggedOncePerKind: every drop is counted, but each kind is logged
// once at debug level, so hostile input cannot flood the log.
func TestDropsLoggedOncePerKind(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, d := newProp(t, carrier.WithLogger(logger))
	for range 5 {
		p.Extract(context.Background(), propagation.MapCarrier{"traceparent": "garbage"})
	}
	p.Extract(context.Background(), propagation.MapCarrier{"traceparent": validTP, "baggage": "bad key=1"})
	if got := d.counts(t); !equalCounts(got, map[string]int64{"traceparent/invalid": 5, "baggage/invalid_member": 1}) {
		t.Fatalf("drops %v", got)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "level=DEBUG") ||
		!strings.Contains(lines[0], "header=traceparent") || !strings.Contains(lines[1], "reason=invalid_member") {
		t.Fatalf("log:\n%s", buf.String())
	}
}

// TestCustomNames: renamed headers are read and written, and Fields
// reports them.
func TestCustomNames(t *testing.T) {
	p, _ := newProp(t, carrier.WithNames(carrier.Names{Traceparent: "x-tp", SessionID: "x-session"}))
	if got := strings.Join(p.Fields(), ","); got != "x-tp,tracestate,baggage,x-session" {
		t.Fatalf("Fields() = %s", got)
	}
	ctx := p.Extract(context.Background(), propagation.MapCarrier{"x-tp": validTP, "x-session": "s", "traceparent": "junk"})
	out := propagation.MapCarrier{}
	p.Inject(ctx, out)
	if out["x-tp"] != validTP || out["x-session"] != "s" || out["traceparent"] != "" {
		t.Fatalf("headers %v", out)
	}
}

// TestStockOpenTelemetryDiffers documents each case where the stock
// OpenTelemetry-Go propagators (TraceContext + Baggage) break W3C Trace
// Context Level 2 or Baggage and tracebridge does not. Each row asserts
// both behaviours, so the test fails if either side changes.
func TestStockOpenTelemetryDiffers(t *testing.T) {
	longBag := func() string {
		var ms []string
		for i := range 9 {
			ms = append(ms, "k"+string(rune('a'+i))+"="+strings.Repeat("v", 1000))
		}
		return strings.Join(ms, ",")
	}()
	tenant242 := strings.Repeat("t", 242) + "@s"
	tests := []struct {
		rule       string
		headers    [][2]string
		stock, our string // "traceparent span-id | forwarded tracestate | baggage member count"
	}{
		{"L2 key: system part longer than 14 characters",
			[][2]string{{"traceparent", validTP}, {"tracestate", "a=1,t@abcdefghijklmnop=2"}},
			sid + " |  | 0", sid + " | a=1,t@abcdefghijklmnop=2 | 0"},
		{"L2 key: several @",
			[][2]string{{"traceparent", validTP}, {"tracestate", "a@b@c=1"}},
			sid + " |  | 0", sid + " | a@b@c=1 | 0"},
		{"L2 key: digit first without @",
			[][2]string{{"traceparent", validTP}, {"tracestate", "9lives=1"}},
			sid + " |  | 0", sid + " | 9lives=1 | 0"},
		{"L2 key: tenant over 241 characters",
			[][2]string{{"traceparent", validTP}, {"tracestate", tenant242 + "=1"}},
			sid + " |  | 0", sid + " | " + tenant242 + "=1 | 0"},
		{"tracestate split over several header fields",
			[][2]string{{"traceparent", validTP}, {"tracestate", "a=1"}, {"tracestate", "b=2"}},
			sid + " | a=1 | 0", sid + " | a=1,b=2 | 0"},
		{"duplicate traceparent is invalid",
			[][2]string{{"traceparent", validTP}, {"traceparent", "00-" + tid + "-1111111111111111-01"}},
			sid + " |  | 0", " |  | 0"},
		{"version 00 with unknown flag bits: mask, do not reject",
			[][2]string{{"traceparent", "00-" + tid + "-" + sid + "-09"}},
			" |  | 0", sid + " |  | 0"},
		{"baggage over 8192 bytes keeps the members that fit",
			[][2]string{{"baggage", longBag}},
			" |  | 0", " |  | 8"},
	}
	summary := func(p propagation.TextMapPropagator, hs [][2]string) string {
		h := http.Header{}
		for _, kv := range hs {
			h.Add(kv[0], kv[1])
		}
		ctx := p.Extract(context.Background(), propagation.HeaderCarrier(h))
		out := propagation.MapCarrier{}
		p.Inject(ctx, out)
		span := ""
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			span = sc.SpanID().String()
		}
		n := baggage.FromContext(ctx).Len()
		return span + " | " + out["tracestate"] + " | " + string(rune('0'+n%10))
	}
	ours, _ := newProp(t, carrier.WithBaggageFilter(carrier.DenyKeys()))
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			if got := summary(stockPropagator(), tt.headers); got != tt.stock {
				t.Errorf("stock:\n got %q\nwant %q", got, tt.stock)
			}
			if got := summary(ours, tt.headers); got != tt.our {
				t.Errorf("tracebridge:\n got %q\nwant %q", got, tt.our)
			}
		})
	}
}
