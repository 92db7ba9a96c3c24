package amqp

import (
	"maps"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"pgregory.net/rapid"
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

// TestAttackPubHeadersModel drives pooled tables through random Sets (six
// header names, more than the four boxes, the empty name among them;
// values of equal length, empty, and repeated), puts and gets with caller
// tables that hold some of the same names, against a plain map: the table
// always holds exactly the caller's headers overwritten by what was Set,
// never a value boxed for another name or an earlier message.
func TestAttackPubHeadersModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		keys := []string{"traceparent", "tracestate", "baggage", "session-id", "x-fifth", ""}
		vals := []string{"", "aa", "ab", "ba", "session.id=s1", "session.id=s2", "x"}
		newUser := func(t *rapid.T) amqp091.Table {
			u := amqp091.Table{}
			for _, k := range rapid.SliceOfNDistinct(rapid.SampledFrom(keys), 0, 3, rapid.ID).Draw(t, "user keys") {
				u[k] = strings.Clone(rapid.SampledFrom(vals).Draw(t, "user value"))
			}
			return u
		}
		user := newUser(t)
		snap := maps.Clone(user)
		ph := getPubHeaders(user)
		model := map[string]any{}
		for k, v := range user {
			model[k] = v
		}
		t.Repeat(map[string]func(*rapid.T){
			"set": func(t *rapid.T) {
				k, v := rapid.SampledFrom(keys).Draw(t, "key"), strings.Clone(rapid.SampledFrom(vals).Draw(t, "value"))
				ph.Set(k, v)
				model[k] = v
			},
			"next message": func(t *rapid.T) {
				ph.put()
				user = newUser(t)
				snap = maps.Clone(user)
				ph = getPubHeaders(user)
				model = map[string]any{}
				for k, v := range user {
					model[k] = v
				}
			},
			"": func(t *rapid.T) {
				if len(ph.h) != len(model) {
					t.Fatalf("table %v, want %v", ph.h, model)
				}
				for k, want := range model {
					if got, ok := ph.h[k]; !ok || got != want {
						t.Fatalf("%q = %#v, want %#v (table %v)", k, got, want, ph.h)
					}
					if ph.Get(k) != want {
						t.Fatalf("Get(%q) = %q, want %q", k, ph.Get(k), want)
					}
				}
				if !maps.Equal(user, snap) {
					t.Fatalf("the caller's table changed from %v to %v", snap, user)
				}
			},
		})
		ph.put()
	})
}
