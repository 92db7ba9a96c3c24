package amqp

import (
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestPubHeadersBoxesRepeatedValues covers the pooled publish table's
// carrier: a value set again under the same key reuses its interface value
// (no allocation), a changed value is stored as given, keys past the four
// it remembers and the empty key still work, and put leaves nothing behind.
func TestPubHeadersBoxesRepeatedValues(t *testing.T) {
	ph := getPubHeaders(amqp091.Table{"app": "x"})
	// Values built at run time, as the propagator builds them: equal
	// bytes, different memory.
	sess := func(s string) string { return strings.Clone(s) }
	ph.Set("baggage", sess("session.id=s1"))
	ph.Set("session-id", sess("s1"))
	if n := testing.AllocsPerRun(100, func() {
		ph.Set("baggage", sess("session.id=s1"))
		ph.Set("session-id", sess("s1"))
	}); n > 2 { // the two clones of the test itself
		t.Errorf("setting repeated values allocates %.0f times, want only the test's own 2", n)
	}
	ph.Set("session-id", sess("s2"))
	for k, want := range map[string]string{"app": "x", "baggage": "session.id=s1", "session-id": "s2"} {
		if got := ph.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	for _, k := range []string{"traceparent", "tracestate", "fifth", ""} {
		ph.Set(k, "v-"+k)
	}
	for _, k := range []string{"traceparent", "tracestate", "fifth", ""} {
		if got, _ := ph.h[k].(string); got != "v-"+k {
			t.Errorf("%q = %#v, want %q", k, ph.h[k], "v-"+k)
		}
	}
	ph.Set("", "")
	if v, ok := ph.h[""]; !ok || v != "" {
		t.Errorf(`"" = %#v, want ""`, v)
	}
	ph.put()
	next := getPubHeaders(nil)
	if len(next.h) != 0 {
		t.Errorf("a pooled table comes back with %v", next.h)
	}
	next.put()
}
