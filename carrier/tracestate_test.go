package carrier_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

const validTP = "00-" + tid + "-" + sid + "-01"

// forwardTracestate extracts fields as tracestate header fields (in an
// http.Header, so several fields are possible) beside a valid traceparent and
// injects the result again: what a hop that forwards the context sends on.
func forwardTracestate(t *testing.T, p *carrier.Propagator, fields ...string) (string, bool) {
	t.Helper()
	h := propagation.HeaderCarrier{}
	h.Set("traceparent", validTP)
	for _, f := range fields {
		(map[string][]string)(h)["Tracestate"] = append(h.Values("tracestate"), f)
	}
	ctx := p.Extract(context.Background(), h)
	if !trace.SpanContextFromContext(ctx).IsValid() {
		t.Fatal("valid traceparent not extracted")
	}
	out := propagation.MapCarrier{}
	p.Inject(ctx, out)
	v, ok := out["tracestate"]
	return v, ok
}

func members(prefix string, n, valueLen int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d=%s", prefix, i, strings.Repeat("v", valueLen))
	}
	return out
}

// TestTracestateRules covers the Level 2 tracestate grammar and processing
// model. want is what is forwarded; drops is what the metric must show.
func TestTracestateRules(t *testing.T) {
	key256 := "k" + strings.Repeat("@", 255)
	tenant242 := strings.Repeat("t", 242) + "@s"
	val256 := strings.Repeat("x", 255) + "y"
	long := "long=" + strings.Repeat("l", 130)
	tests := []struct {
		rule   string
		fields []string
		want   string
		drops  map[string]int64
	}{
		{"simple list keeps order", []string{"b=2,a=1"}, "b=2,a=1", nil},
		{"OWS around members removed", []string{" a=1 ,\tb=2\t, c=3 "}, "a=1,b=2,c=3", nil},
		{"empty tracestate accepted", []string{""}, "", nil},
		{"whitespace-only tracestate accepted", []string{" \t "}, "", nil},
		{"empty members allowed", []string{",a=1,,  ,b=2,"}, "a=1,b=2", nil},
		{"multi-tenant key", []string{"tenant@sys=1"}, "tenant@sys=1", nil},
		{"L2: @ with system longer than 14", []string{"a@abcdefghijklmnop=1"}, "a@abcdefghijklmnop=1", nil},
		{"L2: several @", []string{"a@b@c=1"}, "a@b@c=1", nil},
		{"L2: trailing @", []string{"abc@=1"}, "abc@=1", nil},
		{"L2: digit-first key without @", []string{"1abc=1"}, "1abc=1", nil},
		{"L2: tenant over 241 characters", []string{tenant242 + "=1"}, tenant242 + "=1", nil},
		{"L2: 256-character key", []string{key256 + "=1"}, key256 + "=1", nil},
		{"257-character key invalid", []string{"k" + strings.Repeat("a", 256) + "=1", "b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"key starting with @ invalid", []string{"@a=1,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"key starting with _ invalid", []string{"_a=1,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"uppercase key invalid", []string{"Abc=1,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"key with dot invalid", []string{"a.b=1,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"member without = invalid", []string{"a,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"empty value invalid", []string{"a=,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"value with = invalid", []string{"a=b=c,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"value with non-ASCII invalid", []string{"a=é,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"value with control character invalid", []string{"a=x\x01y,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"value leading space preserved", []string{"a=  v"}, "a=  v", nil},
		{"value inner space preserved", []string{"a=v w"}, "a=v w", nil},
		{"value trailing space is OWS", []string{"a=v  ,b=2"}, "a=v,b=2", nil},
		{"value of 256 characters", []string{"a=" + val256}, "a=" + val256, nil},
		{"value of 257 characters invalid", []string{"a=x" + val256 + ",b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"value printable punctuation", []string{"a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~"}, "a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~", nil},
		{"duplicate key discards all", []string{"a=1,b=2,a=3"}, "", map[string]int64{"tracestate/duplicate": 1}},
		{"several fields combined", []string{"a=1", "b=2", "c=3"}, "a=1,b=2,c=3", nil},
		{"several fields with empty one", []string{"a=1", "", "b=2"}, "a=1,b=2", nil},
		{"duplicate across fields discards all", []string{"a=1", "a=2,b=2"}, "", map[string]int64{"tracestate/duplicate": 1}},
		{"32 members kept", members("k", 32, 1), strings.Join(members("k", 32, 1), ","), nil},
		{"33 members discard all", members("k", 33, 1), "", map[string]int64{"tracestate/too_many_members": 1}},
		{"33 members over several fields discard all", []string{strings.Join(members("k", 20, 1), ","), strings.Join(members("z", 13, 1), ",")},
			"", map[string]int64{"tracestate/too_many_members": 1}},
		{"32 members over several fields kept", []string{strings.Join(members("k", 20, 1), ","), strings.Join(members("z", 12, 1), ",")},
			strings.Join(append(members("k", 20, 1), members("z", 12, 1)...), ","), nil},
		{"empty members do not count towards 32", []string{",, ," + strings.Join(members("k", 32, 1), " , ,") + ",,", " , "},
			strings.Join(members("k", 32, 1), ","), nil},
		{"invalid 34th member: the 33rd decides", []string{strings.Join(members("k", 33, 1), ",") + ",@x=1"}, "", map[string]int64{"tracestate/too_many_members": 1}},
		{"invalid member before the 33rd decides", []string{strings.Join(members("k", 20, 1), ",") + ",@x=1," + strings.Join(members("z", 20, 1), ",")},
			"", map[string]int64{"tracestate/invalid_member": 1}},
		{"invalid member in a later field discards the earlier ones", []string{"a=1", "b=2", "c="}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"value of only spaces invalid", []string{"a=   ,b=2"}, "", map[string]int64{"tracestate/invalid_member": 1}},
		{"OWS before = invalid", []string{"a =1"}, "", map[string]int64{"tracestate/invalid_member": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			p, d := newProp(t)
			got, _ := forwardTracestate(t, p, tt.fields...)
			if got != tt.want {
				t.Fatalf("forwarded tracestate\n got %q\nwant %q", got, tt.want)
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

	t.Run("33 members with long entries discarded whole, not truncated", func(t *testing.T) {
		p, d := newProp(t)
		in := members("k", 32, 1)
		in = append(in[:3], append([]string{long}, in[3:]...)...) // 33 members, long at index 3
		if got, _ := forwardTracestate(t, p, strings.Join(in, ",")); got != "" {
			t.Fatalf("got %q, want the tracestate discarded", got)
		}
		if c := d.counts(t); !equalCounts(c, map[string]int64{"tracestate/too_many_members": 1}) {
			t.Fatalf("drops %v", c)
		}
	})
	t.Run("32 members with long entries kept whole", func(t *testing.T) {
		p, _ := newProp(t)
		in := append([]string{long}, members("k", 31, 1)...)
		got, _ := forwardTracestate(t, p, strings.Join(in, ","))
		if got != strings.Join(in, ",") {
			t.Fatalf("32 members with a long one must be kept whole, got %q", got)
		}
	})
	t.Run("traceparent stays when tracestate is discarded", func(t *testing.T) {
		p, _ := newProp(t)
		for _, c := range []propagation.TextMapCarrier{
			propagation.MapCarrier{"traceparent": validTP, "tracestate": "a=1,@b=2"},
			&kafkaHeaders{h: []header{{"traceparent", []byte(validTP)}, {"tracestate", []byte("a=1,@b=2")}}},
		} {
			sc := trace.SpanContextFromContext(p.Extract(context.Background(), c))
			if !sc.IsValid() || sc.TraceID().String() != tid || sc.SpanID().String() != sid || sc.TraceState().Len() != 0 {
				t.Fatalf("span context %v with tracestate %q", sc, sc.TraceState().String())
			}
		}
	})
}

// TestEmptyTracestateWritesNoHeader: an empty tracestate is accepted and not
// forwarded as a header of its own.
func TestEmptyTracestateWritesNoHeader(t *testing.T) {
	p, _ := newProp(t)
	if v, ok := forwardTracestate(t, p, ""); ok {
		t.Fatalf("empty tracestate forwarded as %q", v)
	}
}

// TestLevelTwoTracestateSurvivesChildSpan is the end-to-end check of the
// Level 2 mechanism: members that OpenTelemetry-Go cannot hold in a
// TraceState are still sent on after a child span of the SDK tracer, in
// their original order.
func TestLevelTwoTracestateSurvivesChildSpan(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := tp.Tracer("test")
	key256 := "v" + strings.Repeat("a", 199) + "@" + strings.Repeat("b", 55) // 256 characters
	ts := "ot=p:8,a@abcdefghijklmnop=1,1abc=x,rojo=00f067aa0ba902b7,a@b@c=2," + key256 + "=3,congo=t61rcWkgMzE"
	for name, c := range map[string]propagation.TextMapCarrier{
		"map":         propagation.MapCarrier{"traceparent": validTP, "tracestate": ts},
		"ByteCarrier": &kafkaHeaders{h: []header{{"traceparent", []byte(validTP)}, {"tracestate", []byte(ts)}}},
	} {
		t.Run(name, func(t *testing.T) {
			p, d := newProp(t)
			ctx := p.Extract(context.Background(), c)
			sc := trace.SpanContextFromContext(ctx)
			if got := sc.TraceState().String(); got != "ot=p:8,rojo=00f067aa0ba902b7,congo=t61rcWkgMzE" {
				t.Fatalf("OpenTelemetry TraceState %q", got)
			}
			ctx, span := tr.Start(ctx, "child")
			defer span.End()
			if span.SpanContext().SpanID() == sc.SpanID() {
				t.Fatal("child span did not start")
			}
			out := &kafkaHeaders{}
			p.Inject(ctx, out)
			if got := out.Get("tracestate"); got != ts {
				t.Fatalf("forwarded tracestate\n got %q\nwant %q", got, ts)
			}
			if got := out.Get("traceparent"); !strings.Contains(got, tid) || strings.Contains(got, sid) {
				t.Fatalf("traceparent %q must name the child span", got)
			}
			if c := d.counts(t); len(c) != 0 {
				t.Fatalf("unexpected drops %v", c)
			}

			// A vendor that updates its own key moves it to the front;
			// the Level 2 members follow the span context's own.
			ts2, err := span.SpanContext().TraceState().Insert("rojo", "new")
			if err != nil {
				t.Fatal(err)
			}
			ctx2 := trace.ContextWithSpanContext(ctx, span.SpanContext().WithTraceState(ts2))
			out2 := propagation.MapCarrier{}
			p.Inject(ctx2, out2)
			want := "rojo=new,ot=p:8,congo=t61rcWkgMzE,a@abcdefghijklmnop=1,1abc=x,a@b@c=2," + key256 + "=3"
			if got := out2["tracestate"]; got != want {
				t.Fatalf("after mutation\n got %q\nwant %q", got, want)
			}

			// A different trace must not inherit them.
			other, _ := carrier.ParseTraceparent("00-11111111111111111111111111111111-" + sid + "-01")
			out3 := propagation.MapCarrier{}
			p.Inject(trace.ContextWithRemoteSpanContext(ctx, other), out3)
			if got, ok := out3["tracestate"]; ok {
				t.Fatalf("Level 2 members leaked into another trace: %q", got)
			}
		})
	}
}
