package carrier_test

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

const (
	tid = "4bf92f3577b34da6a3ce929d0e0e4736"
	sid = "00f067aa0ba902b7"
)

// TestTraceparentRules covers every rule of the W3C Trace Context Level 2
// traceparent grammar and processing model, one row per rule.
func TestTraceparentRules(t *testing.T) {
	tests := []struct {
		rule  string
		in    string
		ok    bool
		flags trace.TraceFlags
	}{
		{"version 00 sampled", "00-" + tid + "-" + sid + "-01", true, trace.FlagsSampled},
		{"version 00 not sampled", "00-" + tid + "-" + sid + "-00", true, 0},
		{"random flag kept", "00-" + tid + "-" + sid + "-02", true, trace.FlagsRandom},
		{"sampled and random", "00-" + tid + "-" + sid + "-03", true, trace.FlagsSampled | trace.FlagsRandom},
		{"unknown flag bits masked", "00-" + tid + "-" + sid + "-ff", true, trace.FlagsSampled | trace.FlagsRandom},
		{"unknown flag bit alone masked", "00-" + tid + "-" + sid + "-08", true, 0},
		{"uppercase trace-id invalid", "00-" + strings.ToUpper(tid) + "-" + sid + "-01", false, 0},
		{"uppercase parent-id invalid", "00-" + tid + "-00F067AA0BA902B7-01", false, 0},
		{"uppercase flags invalid", "00-" + tid + "-" + sid + "-0A", false, 0},
		{"uppercase version invalid", "0A-" + tid + "-" + sid + "-01", false, 0},
		{"version ff invalid", "ff-" + tid + "-" + sid + "-01", false, 0},
		{"version not hex invalid", "0g-" + tid + "-" + sid + "-01", false, 0},
		{"all-zero trace-id invalid", "00-00000000000000000000000000000000-" + sid + "-01", false, 0},
		{"all-zero parent-id invalid", "00-" + tid + "-0000000000000000-01", false, 0},
		{"non-hex trace-id invalid", "00-" + tid[:31] + "g-" + sid + "-01", false, 0},
		{"non-hex parent-id invalid", "00-" + tid + "-" + sid[:15] + "z-01", false, 0},
		{"non-hex flags invalid", "00-" + tid + "-" + sid + "-0x", false, 0},
		{"version 00 longer than 55 invalid", "00-" + tid + "-" + sid + "-01-", false, 0},
		{"version 00 with extra field invalid", "00-" + tid + "-" + sid + "-01-extra", false, 0},
		{"version 00 shorter than 55 invalid", "00-" + tid + "-" + sid + "-1", false, 0},
		{"short trace-id invalid", "00-" + tid[:30] + "-" + sid + "-01", false, 0},
		{"long trace-id invalid", "00-" + tid + "aa-" + sid[:14] + "-01", false, 0},
		{"wrong separator invalid", "00_" + tid + "-" + sid + "-01", false, 0},
		{"empty invalid", "", false, 0},
		{"garbage invalid", "not a traceparent", false, 0},
		{"future version exactly 55 valid", "01-" + tid + "-" + sid + "-01", true, trace.FlagsSampled},
		{"future version with extra field valid", "01-" + tid + "-" + sid + "-01-extra", true, trace.FlagsSampled},
		{"future version with empty extra field valid", "cc-" + tid + "-" + sid + "-00-", true, 0},
		{"future version flags not followed by dash invalid", "01-" + tid + "-" + sid + "-01extra", false, 0},
		{"future version shorter than 55 invalid", "01-" + tid + "-" + sid + "-1", false, 0},
		{"future version fe valid", "fe-" + tid + "-" + sid + "-01-what-ever", true, trace.FlagsSampled},
		{"future version uppercase extra still valid", "01-" + tid + "-" + sid + "-01-ABC", true, trace.FlagsSampled},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			sc, ok := carrier.ParseTraceparent(tt.in)
			if ok != tt.ok {
				t.Fatalf("ParseTraceparent(%q) ok = %v, want %v", tt.in, ok, tt.ok)
			}
			if !ok {
				if sc.IsValid() {
					t.Fatalf("invalid input returned a valid span context %v", sc)
				}
				return
			}
			if got := sc.TraceID().String(); got != tid {
				t.Errorf("trace-id %s, want %s", got, tid)
			}
			if got := sc.SpanID().String(); got != sid {
				t.Errorf("parent-id %s, want %s", got, sid)
			}
			if sc.TraceFlags() != tt.flags {
				t.Errorf("flags %02x, want %02x", byte(sc.TraceFlags()), byte(tt.flags))
			}
			if !sc.IsRemote() {
				t.Error("extracted span context must be remote")
			}
			// We always write version 00, whatever version we read.
			want := "00-" + tid + "-" + sid + "-" + []string{"00", "01", "02", "03"}[tt.flags]
			if got := carrier.FormatTraceparent(sc); got != want {
				t.Errorf("FormatTraceparent = %q, want %q", got, want)
			}
		})
	}
}

// TestTraceparentInvalidStartsNewTraceAndDropsTracestate checks that an
// invalid traceparent yields no parent, that the tracestate that came with
// it is not parsed, and that both are counted.
func TestTraceparentInvalidStartsNewTraceAndDropsTracestate(t *testing.T) {
	p, d := newProp(t)
	c := propagation.MapCarrier{
		"traceparent": "00-" + strings.ToUpper(tid) + "-" + sid + "-01",
		"tracestate":  "a=1",
	}
	ctx := p.Extract(context.Background(), c)
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() || sc.TraceState().Len() != 0 {
		t.Fatalf("invalid traceparent produced %v", sc)
	}
	want := map[string]int64{"traceparent/invalid": 1, "tracestate/orphan": 1}
	if got := d.counts(t); !equalCounts(got, want) {
		t.Fatalf("drops %v, want %v", got, want)
	}
	out := propagation.MapCarrier{}
	p.Inject(ctx, out)
	if _, ok := out["tracestate"]; ok {
		t.Fatalf("tracestate forwarded without its traceparent: %q", out["tracestate"])
	}
}

// TestTracestateWithoutTraceparentIgnored: tracestate is only read when a
// valid traceparent came with it.
func TestTracestateWithoutTraceparentIgnored(t *testing.T) {
	p, d := newProp(t)
	ctx := p.Extract(context.Background(), propagation.MapCarrier{"tracestate": "a=1"})
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() || sc.TraceState().Len() != 0 {
		t.Fatalf("got span context %v", sc)
	}
	if got := d.counts(t); got["tracestate/orphan"] != 1 {
		t.Fatalf("drops %v, want tracestate/orphan 1", got)
	}
}

// TestDuplicateTraceparentIsAbsent: W3C treats several traceparent fields as
// invalid, so the message starts a new trace. Both multi-value carriers are
// checked, including two identical values.
func TestDuplicateTraceparentIsAbsent(t *testing.T) {
	tp := "00-" + tid + "-" + sid + "-01"
	other := "00-" + tid + "-" + "1111111111111111" + "-01"
	for _, second := range []string{tp, other} {
		carriers := map[string]propagation.TextMapCarrier{
			"http.Header": func() propagation.TextMapCarrier {
				h := propagation.HeaderCarrier{}
				h.Set("traceparent", tp)
				(map[string][]string)(h)["Traceparent"] = append(h.Values("traceparent"), second)
				h.Set("tracestate", "a=1")
				return h
			}(),
			"ByteCarrier": func() propagation.TextMapCarrier {
				k := &kafkaHeaders{}
				k.add("traceparent", tp)
				k.add("tracestate", "a=1")
				k.add("traceparent", second)
				return k
			}(),
		}
		for name, c := range carriers {
			t.Run(name, func(t *testing.T) {
				p, d := newProp(t)
				ctx := p.Extract(context.Background(), c)
				if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
					t.Fatalf("duplicate traceparent accepted as %v", sc)
				}
				want := map[string]int64{"traceparent/duplicate": 1, "tracestate/orphan": 1}
				if got := d.counts(t); !equalCounts(got, want) {
					t.Fatalf("drops %v, want %v", got, want)
				}
			})
		}
	}
}

// TestInjectReplacesTraceparent: inject never leaves a second traceparent in
// a carrier whose keys may repeat.
func TestInjectReplacesTraceparent(t *testing.T) {
	p, _ := newProp(t)
	k := &kafkaHeaders{}
	k.add("traceparent", "00-"+tid+"-1111111111111111-01")
	k.add("traceparent", "00-"+tid+"-2222222222222222-01")
	k.add("tracestate", "old=1")
	k.add("other", "x")
	sc, _ := carrier.ParseTraceparent("00-" + tid + "-" + sid + "-01")
	p.Inject(trace.ContextWithRemoteSpanContext(context.Background(), sc), k)
	if got := k.values("traceparent"); len(got) != 1 || got[0] != "00-"+tid+"-"+sid+"-01" {
		t.Fatalf("traceparent values %q", got)
	}
	if got := k.values("other"); len(got) != 1 {
		t.Fatalf("unrelated header lost: %q", got)
	}
	// The old tracestate belonged to the old traceparent; it must not be
	// paired with the new one.
	for _, v := range k.values("tracestate") {
		if v != "" {
			t.Fatalf("stale tracestate %q left beside the new traceparent", v)
		}
	}
	m := propagation.MapCarrier{"traceparent": "00-" + tid + "-1111111111111111-01", "tracestate": "old=1"}
	p.Inject(trace.ContextWithRemoteSpanContext(context.Background(), sc), m)
	if m["tracestate"] != "" {
		t.Fatalf("stale tracestate %q left in map carrier", m["tracestate"])
	}
}
