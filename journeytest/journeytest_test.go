package journeytest_test

// The assertions are tested on real journeys: the fixture runs checkouts
// through an embedded Kafka broker and the jobs runner, with a retry that
// recovers and a message that ends in its dead-letter topic. Each failing
// case breaks a recorded journey the way a bug or a lost export would (a
// span dropped, a link dropped or pointed nowhere, a session changed, a
// dead letter sent from the wrong attempt) and checks that the assertion
// fails, names the defect, and draws the journey.

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/internal/journeyfixture"
	"github.com/tracebridge/tracebridge/journey"
	"github.com/tracebridge/tracebridge/journeytest"
)

// recT records what the assertions report.
type recT struct{ msgs []string }

func (r *recT) Helper() {}

func (r *recT) Errorf(format string, args ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}

// clone copies spans deeply enough to change attributes and links.
func clone(spans []journey.Span) []journey.Span {
	out := make([]journey.Span, len(spans))
	for i, s := range spans {
		s.Attrs = maps.Clone(s.Attrs)
		s.Links = slices.Clone(s.Links)
		out[i] = s
	}
	return out
}

// find returns the index of the span of session named name (with attempt
// n, when n > 0).
func find(t *testing.T, spans []journey.Span, session, name string, n int) int {
	t.Helper()
	for i, s := range spans {
		if s.Session() == session && s.Name == name && (n == 0 || s.Attempt() == n) {
			return i
		}
	}
	t.Fatalf("no span %q (attempt %d) of session %s", name, n, session)
	return -1
}

// checkFailure asserts that exactly one failure was reported, that it says
// each of want, and that it draws the journey as a tree.
func checkFailure(t *testing.T, rt *recT, want ...string) {
	t.Helper()
	if len(rt.msgs) != 1 {
		t.Fatalf("%d failures reported, want 1: %q", len(rt.msgs), rt.msgs)
	}
	msg := rt.msgs[0]
	for _, w := range append(want, "#   span", "└─ ") {
		if !strings.Contains(msg, w) {
			t.Errorf("the failure does not say %q:\n%s", w, msg)
		}
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("failure message:\n%s", msg)
	}
}

func TestAssertionsHoldOnRealJourneys(t *testing.T) {
	for _, newTraces := range []bool{false, true} {
		t.Run(fmt.Sprintf("new traces %v", newTraces), func(t *testing.T) {
			r := journeyfixture.Record(t, journeyfixture.Config{Sessions: 2, NewTraces: newTraces})
			for _, s := range r.Sessions {
				j := r.Rec.Journey(s)
				rt := &recT{}
				ok := journeytest.Whole(rt, j) && journeytest.Crosses(rt, j, "kafka", "tracebridge.jobs") &&
					journeytest.OneSession(rt, j) && journeytest.RetryChain(rt, j, r.ProcessOrders, 2) &&
					journeytest.RetryChain(rt, j, r.ProcessShipping, 3) && journeytest.DeadLetter(rt, j, r.ProcessShipping)
				if !ok || len(rt.msgs) > 0 {
					t.Fatalf("session %s: an assertion failed on a whole journey:\n%s", s, strings.Join(rt.msgs, "\n"))
				}
				wantTraces := 1
				if newTraces {
					wantTraces = 4 // the checkout's, one per attempt at orders, the job's
				}
				if len(j.Traces) != wantTraces {
					t.Errorf("session %s is on %d traces, want %d", s, len(j.Traces), wantTraces)
				}
				if newTraces {
					continue
				}
				end := j.Spans[find(t, j.Spans, s, r.ProcessJob, 1)].SpanID
				if held := journeytest.Chain(rt, j, end, r.Root, r.SendOrders, r.ProcessOrders, r.SendJob, r.ProcessJob); held != 4 || len(rt.msgs) > 0 {
					t.Errorf("Chain held %d of 4 links: %q", held, rt.msgs)
				}
			}
		})
	}
}

func TestAssertionsFailOnBrokenJourneys(t *testing.T) {
	r := journeyfixture.Record(t, journeyfixture.Config{Sessions: 2})
	recorded := r.Spans()
	s1, s2 := r.Sessions[0], r.Sessions[1]

	t.Run("a span dropped", func(t *testing.T) {
		spans := clone(recorded)
		i := find(t, spans, s1, r.SendOrders, 0)
		spans = slices.Delete(spans, i, i+1)
		j := journey.Assemble(s1, spans)
		rt := &recT{}
		if journeytest.Whole(rt, j) {
			t.Fatal("Whole holds with the send span dropped")
		}
		lost := recorded[find(t, recorded, s1, r.SendOrders, 0)].SpanID.String()
		checkFailure(t, rt, "is not whole: 2 orphans, 0 broken links", `orphan #3 "`+r.ProcessOrders+`"`,
			"⚠ orphan: parent "+lost+" never arrived")
		rt = &recT{}
		end := j.Spans[find(t, j.Spans, s1, r.ProcessJob, 1)].SpanID
		if held := journeytest.Chain(rt, j, end, r.Root, r.SendOrders, r.ProcessOrders, r.SendJob, r.ProcessJob); held != 2 {
			t.Errorf("Chain held %d links, want 2 (process jobs ← send jobs ← process orders)", held)
		}
		checkFailure(t, rt, `breaks above #3 "`+r.ProcessOrders+`": its parent `+lost+` never arrived, want "`+r.SendOrders+`" above it`,
			"◀ the chain breaks here")
	})

	t.Run("a link pointed nowhere", func(t *testing.T) {
		spans := clone(recorded)
		a2 := &spans[find(t, spans, s1, r.ProcessOrders, 2)]
		lost := trace.SpanID{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4}
		for k := range a2.Links {
			if a2.Links[k].Type == journey.LinkPreviousAttempt {
				a2.Links[k].SpanID = lost
			}
		}
		rt := &recT{}
		if journeytest.Whole(rt, journey.Assemble(s1, spans)) {
			t.Fatal("Whole holds with a link to a span that was never recorded")
		}
		checkFailure(t, rt, "is not whole: 0 orphans, 1 broken link",
			`broken link from #4 "`+r.ProcessOrders+`" (previous_attempt) to span deadbeef01020304`,
			"span not found on its trace", "✗ broken")
	})

	t.Run("a retry link dropped", func(t *testing.T) {
		spans := clone(recorded)
		a2 := &spans[find(t, spans, s1, r.ProcessOrders, 2)]
		a2.Links = slices.DeleteFunc(a2.Links, func(l journey.Link) bool { return l.Type == journey.LinkPreviousAttempt })
		j := journey.Assemble(s1, spans)
		if rt := (&recT{}); !journeytest.Whole(rt, j) {
			t.Fatalf("Whole fails on a journey that only lost a link: %q", rt.msgs) // the chain is what is broken
		}
		rt := &recT{}
		if journeytest.RetryChain(rt, j, r.ProcessOrders, 2) {
			t.Fatal("RetryChain holds with attempt 2 not linked to attempt 1")
		}
		checkFailure(t, rt, "no retry chain of 2 linked attempts at "+fmt.Sprintf("%q", r.ProcessOrders),
			`attempt 2 #4 "`+r.ProcessOrders+`" does not link to attempt 1 #3`, "◀ attempt 2: no link to attempt 1")
	})

	t.Run("a session changed", func(t *testing.T) {
		spans := clone(recorded)
		spans[find(t, spans, s1, r.ProcessJob, 1)].Attrs[journey.SessionKey] = s2
		rt := &recT{}
		if journeytest.OneSession(rt, journey.Assemble(s1, spans)) {
			t.Fatal("OneSession holds with a span of another session on the journey's trace")
		}
		checkFailure(t, rt, `#6 "process jobs" names session `+s2+", on a trace of session "+s1,
			"⚠ session "+s2+" on a trace of session "+s1)
		// The other session's journey now reaches onto this trace.
		rt = &recT{}
		j2 := journey.Assemble(s2, spans)
		if journeytest.OneSession(rt, j2) {
			t.Fatal("OneSession holds for the session whose span sits on another session's trace")
		}
		checkFailure(t, rt, "names session "+s2+", on a trace of session "+s1, "(a trace of session "+s1+")")
		if len(j2.Traces) != 2 {
			t.Errorf("session %s is on %d traces, want 2 (its own and the one its span strayed onto)", s2, len(j2.Traces))
		}
	})

	t.Run("a system not crossed", func(t *testing.T) {
		rt := &recT{}
		if journeytest.Crosses(rt, journey.Assemble(s1, recorded), "kafka", "rabbitmq") {
			t.Fatal("Crosses holds for rabbitmq, which the journey never reached")
		}
		checkFailure(t, rt, "does not cross rabbitmq: it crosses kafka → tracebridge.jobs")
	})

	t.Run("a dead letter sent by an earlier attempt", func(t *testing.T) {
		spans := clone(recorded)
		dl := &spans[find(t, spans, s1, r.SendDLQ, 0)]
		dl.Parent = spans[find(t, spans, s1, r.ProcessShipping, 2)].SpanID
		rt := &recT{}
		if journeytest.DeadLetter(rt, journey.Assemble(s1, spans), r.ProcessShipping) {
			t.Fatal("DeadLetter holds with the dead letter under attempt 2 of 3")
		}
		checkFailure(t, rt, "no dead letter linked to the last attempt",
			`the last attempt #11 "`+r.ProcessShipping+`" (attempt 3) failed finally, but no dead-letter send is its child`,
			"◀ last attempt")
	})

	t.Run("a dead letter lost", func(t *testing.T) {
		spans := clone(recorded)
		i := find(t, spans, s1, r.SendDLQ, 0)
		spans = slices.Delete(spans, i, i+1)
		rt := &recT{}
		if journeytest.DeadLetter(rt, journey.Assemble(s1, spans), r.ProcessShipping) {
			t.Fatal("DeadLetter holds with no dead-letter send")
		}
		checkFailure(t, rt, "failed finally, but no dead-letter send is its child")
	})

	t.Run("an attempt lost", func(t *testing.T) {
		spans := clone(recorded)
		i := find(t, spans, s1, r.ProcessShipping, 2)
		spans = slices.Delete(spans, i, i+1)
		rt := &recT{}
		if journeytest.RetryChain(rt, journey.Assemble(s1, spans), r.ProcessShipping, 3) {
			t.Fatal("RetryChain holds with attempt 2 of 3 lost")
		}
		checkFailure(t, rt, "2 attempts (numbered 1, 3), want 3", "◀ attempt 1", "◀ attempt 3", "✗ broken: span not found on its trace")
	})

	t.Run("a chain that breaks", func(t *testing.T) {
		j := journey.Assemble(s1, recorded)
		end := j.Spans[find(t, j.Spans, s1, r.ProcessJob, 1)].SpanID
		rt := &recT{}
		held := journeytest.Chain(rt, j, end, r.Root, r.SendOrders, r.ProcessOrders, "send payments", r.ProcessJob)
		if held != 0 {
			t.Errorf("Chain held %d links, want 0: the link into process jobs is the one broken", held)
		}
		checkFailure(t, rt, `breaks at #5 "send jobs": want "send payments"`, `◀ want "send payments" here`)
	})

	t.Run("a session never recorded", func(t *testing.T) {
		j := journey.Assemble("no-such-session", recorded)
		for name, assert := range map[string]func(journeytest.T) bool{
			"Whole":      func(t journeytest.T) bool { return journeytest.Whole(t, j) },
			"Crosses":    func(t journeytest.T) bool { return journeytest.Crosses(t, j, "kafka") },
			"OneSession": func(t journeytest.T) bool { return journeytest.OneSession(t, j) },
			"RetryChain": func(t journeytest.T) bool { return journeytest.RetryChain(t, j, r.ProcessOrders, 2) },
			"DeadLetter": func(t journeytest.T) bool { return journeytest.DeadLetter(t, j, r.ProcessShipping) },
			"Chain":      func(t journeytest.T) bool { return journeytest.Chain(t, j, trace.SpanID{1}, "a", "b") == 1 },
		} {
			rt := &recT{}
			if assert(rt) || len(rt.msgs) != 1 || !strings.Contains(rt.msgs[0], `no span of session "no-such-session" was recorded`) {
				t.Errorf("%s on a session never recorded: %q", name, rt.msgs)
			}
		}
	})
}
