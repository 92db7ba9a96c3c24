// Package journeytest checks journeys in a test: a span recorder to install
// in the test's tracer provider, and assertions over the journeys it
// recorded. An assertion that fails draws the journey as a tree (the
// waterfall of package journey) with the spans at fault marked, and names
// the defect:
//
//	rec := journeytest.NewRecorder()
//	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
//	// ... run the system under test with tracebridge.WithTracerProvider(tp) ...
//	j := rec.Await(session, 10*time.Second, func(j *journey.Journey) bool { return len(j.DeadLetters) > 0 })
//	journeytest.Whole(t, j)
//	journeytest.Crosses(t, j, "http", "kafka", "rabbitmq")
//	journeytest.OneSession(t, j)
//	journeytest.RetryChain(t, j, "process payments", 2)
//	journeytest.DeadLetter(t, j, "process shipping")
//
// Each assertion reports through t.Errorf (the test goes on) and returns
// whether it held.
package journeytest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/journey"
)

// T is the part of testing.TB the assertions use; a *testing.T is one. A
// suite that checks many journeys can pass its own, to count failures or
// print only the first few.
type T interface {
	Helper()
	Errorf(format string, args ...any)
}

// Recorder is a span processor that keeps every span that ends, for the
// assertions. Install it in the test's tracer provider with
// sdktrace.WithSpanProcessor (behind the sampler: it records what the
// provider records). It is safe for concurrent use.
type Recorder struct {
	mu    sync.Mutex
	spans []journey.Span
}

var _ sdktrace.SpanProcessor = (*Recorder)(nil)

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder { return &Recorder{} }

// OnStart does nothing: only ended spans belong to a journey.
func (r *Recorder) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd records the span.
func (r *Recorder) OnEnd(s sdktrace.ReadOnlySpan) {
	js := journey.FromSDK(s)
	r.mu.Lock()
	r.spans = append(r.spans, js)
	r.mu.Unlock()
}

// Shutdown does nothing; the recorded spans stay readable.
func (r *Recorder) Shutdown(context.Context) error { return nil }

// ForceFlush does nothing: spans are recorded as they end.
func (r *Recorder) ForceFlush(context.Context) error { return nil }

// Spans returns the spans recorded so far, in the order they ended.
func (r *Recorder) Spans() []journey.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.spans)
}

// Reset forgets every span recorded so far.
func (r *Recorder) Reset() {
	r.mu.Lock()
	r.spans = nil
	r.mu.Unlock()
}

// Journey assembles the journey of session from the spans recorded so far.
func (r *Recorder) Journey(session string) *journey.Journey {
	return journey.Assemble(session, r.Spans())
}

// Journeys assembles the journey of every session recorded so far, sorted
// by session.
func (r *Recorder) Journeys() []*journey.Journey { return journey.AssembleAll(r.Spans()) }

// Await assembles the journey of session until ready holds for it, or d
// has passed, and returns the last one assembled. Spans end asynchronously
// (a consumer's process span ends after its settle, a send span on its
// broker's confirm), so wait for what the test is about before asserting.
func (r *Recorder) Await(session string, d time.Duration, ready func(*journey.Journey) bool) *journey.Journey {
	deadline := time.Now().Add(d)
	for {
		j := r.Journey(session)
		if ready(j) || time.Now().After(deadline) {
			return j
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fail reports a failed assertion: what is wrong, then the journey drawn
// with the spans at fault marked.
func fail(t T, j *journey.Journey, marks []journey.Mark, format string, args ...any) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, format, args...)
	b.WriteString("\n")
	if len(j.Spans) == 0 {
		fmt.Fprintf(&b, "(no span of session %q was recorded)\n", j.Session)
	} else {
		fmt.Fprintf(&b, "journey of session %s: %s\n", j.Session, j.Size())
		j.Draw(&b, marks...)
	}
	t.Errorf("%s", b.String())
}

// count says "1 orphan", "2 orphans".
func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// empty fails t when the journey has no spans: every assertion needs a
// journey to hold of, or a typo in a session ID would pass.
func empty(t T, j *journey.Journey, what string) bool {
	t.Helper()
	if len(j.Spans) == 0 {
		fail(t, j, nil, "%s: no span of session %q was recorded", what, j.Session)
		return true
	}
	return false
}

func ref(j *journey.Journey, r journey.Ref) string {
	return fmt.Sprintf("#%d %q", j.Number(r.SpanID), r.Name)
}

// Whole asserts that the journey has spans, no orphan (a span whose parent
// never arrived) and no broken link (a link to a span that was not
// recorded).
func Whole(t T, j *journey.Journey) bool {
	t.Helper()
	if empty(t, j, "whole") {
		return false
	}
	if j.Whole() {
		return true
	}
	// The waterfall marks orphans and broken links itself.
	var lines []string
	for _, o := range j.Orphans {
		lines = append(lines, fmt.Sprintf("  orphan %s: its parent %s never arrived", ref(j, o.Span), o.Parent))
	}
	for _, l := range j.BrokenLinks {
		typ := ""
		if l.Type != "" {
			typ = " (" + l.Type + ")"
		}
		lines = append(lines, fmt.Sprintf("  broken link from %s%s to span %s on trace %s: %s", ref(j, l.From),
			typ, l.SpanID, l.TraceID, l.Reason))
	}
	fail(t, j, nil, "journey of session %s is not whole: %s, %s\n%s", j.Session, count(len(j.Orphans), "orphan"),
		count(len(j.BrokenLinks), "broken link"), strings.Join(lines, "\n"))
	return false
}

// Crosses asserts that the journey crosses every one of systems: a span
// with that messaging.system ("kafka", "rabbitmq", "nats",
// "tracebridge.jobs", ...), or "http" for an HTTP server or client span.
func Crosses(t T, j *journey.Journey, systems ...string) bool {
	t.Helper()
	if empty(t, j, "crosses "+strings.Join(systems, ", ")) {
		return false
	}
	var missing []string
	for _, s := range systems {
		if !slices.Contains(j.Systems, s) {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		fail(t, j, nil, "journey of session %s does not cross %s: it crosses %s", j.Session,
			strings.Join(missing, ", "), strings.Join(j.Systems, " → "))
		return false
	}
	return true
}

// OneSession asserts that the journey holds one session and hears no
// other: no span of it sits on a trace of another session, and no span of
// its traces names another session.
func OneSession(t T, j *journey.Journey) bool {
	t.Helper()
	if empty(t, j, "one session") {
		return false
	}
	if len(j.CrossTalk) == 0 {
		return true
	}
	// The waterfall marks the spans of another session itself.
	var lines []string
	for _, c := range j.CrossTalk {
		lines = append(lines, fmt.Sprintf("  %s names session %s, on a trace of session %s", ref(j, c.Span), c.Session, c.TraceSession))
	}
	fail(t, j, nil, "journey of session %s has cross-talk (%s on a trace of another session)\n%s",
		j.Session, count(len(j.CrossTalk), "span"), strings.Join(lines, "\n"))
	return false
}

// chainsAt returns the journey's retry chains with an attempt named name.
func chainsAt(j *journey.Journey, name string) []journey.RetryChain {
	var out []journey.RetryChain
	for _, c := range j.Retries {
		for _, a := range c.Attempts {
			if a.Span.Name == name {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

// chainDefect says what keeps c from being a chain of n linked attempts,
// numbered 1 to n; "" if nothing does.
func chainDefect(j *journey.Journey, c journey.RetryChain, n int) (string, []journey.Mark) {
	var marks []journey.Mark
	for _, a := range c.Attempts {
		marks = append(marks, journey.Mark{SpanID: a.Span.SpanID, Note: fmt.Sprintf("attempt %d", a.Number)})
	}
	if len(c.Attempts) != n {
		var nums []string
		for _, a := range c.Attempts {
			nums = append(nums, fmt.Sprint(a.Number))
		}
		return fmt.Sprintf("%s (numbered %s), want %d", count(len(c.Attempts), "attempt"), strings.Join(nums, ", "), n), marks
	}
	for i, a := range c.Attempts {
		if a.Number != i+1 {
			return fmt.Sprintf("attempt %s is numbered %d, want %d", ref(j, a.Span), a.Number, i+1), marks
		}
		if i > 0 && !a.LinksPrevious {
			marks[i].Note += fmt.Sprintf(": no link to attempt %d", i)
			return fmt.Sprintf("attempt %d %s does not link to attempt %d %s", a.Number, ref(j, a.Span), i,
				ref(j, c.Attempts[i-1].Span)), marks
		}
	}
	return "", marks
}

// RetryChain asserts that the message handled by the process span named
// name was attempted exactly attempts times: attempts numbered 1 to
// attempts (tracebridge.attempt), each after the first linked to the one
// before (tracebridge.link.type=previous_attempt). One such chain in the
// journey is enough.
func RetryChain(t T, j *journey.Journey, name string, attempts int) bool {
	t.Helper()
	if empty(t, j, fmt.Sprintf("retry chain of %d attempts at %q", attempts, name)) {
		return false
	}
	chains := chainsAt(j, name)
	if len(chains) == 0 {
		fail(t, j, nil, "journey of session %s has no retry chain at %q (chains: %s)", j.Session, name, chainNames(j))
		return false
	}
	var defects []string
	var marks []journey.Mark
	for _, c := range chains {
		d, m := chainDefect(j, c, attempts)
		if d == "" {
			return true
		}
		defects = append(defects, "  "+d)
		marks = append(marks, m...)
	}
	fail(t, j, marks, "journey of session %s: no retry chain of %d linked attempts at %q\n%s", j.Session, attempts,
		name, strings.Join(defects, "\n"))
	return false
}

func chainNames(j *journey.Journey) string {
	if len(j.Retries) == 0 {
		return "none"
	}
	var names []string
	for _, c := range j.Retries {
		names = append(names, fmt.Sprintf("%q ×%d", c.Name, len(c.Attempts)))
	}
	return strings.Join(names, ", ")
}

// DeadLetter asserts that the message handled by the process span named
// name went to its dead-letter destination from its last attempt: the
// chain's last attempt failed finally (tracebridge.retry.final, status
// Error), and the dead-letter send, which forwards the message (a link to
// its creation context), is that attempt's child.
func DeadLetter(t T, j *journey.Journey, name string) bool {
	t.Helper()
	if empty(t, j, fmt.Sprintf("dead letter at %q", name)) {
		return false
	}
	chains := chainsAt(j, name)
	if len(chains) == 0 {
		fail(t, j, nil, "journey of session %s: no dead letter at %q: no message failed there (retry chains: %s)",
			j.Session, name, chainNames(j))
		return false
	}
	var defects []string
	var marks []journey.Mark
	for _, c := range chains {
		if c.Outcome == journey.DeadLettered {
			return true
		}
		last := c.Attempts[len(c.Attempts)-1]
		marks = append(marks, journey.Mark{SpanID: last.Span.SpanID, Note: "last attempt"})
		switch {
		case !last.Failed:
			defects = append(defects, fmt.Sprintf("  the last attempt %s (attempt %d) succeeded", ref(j, last.Span), last.Number))
		case !last.Final:
			defects = append(defects, fmt.Sprintf("  the last attempt %s (attempt %d) failed but was not final: the next attempt is missing",
				ref(j, last.Span), last.Number))
		default:
			defects = append(defects, fmt.Sprintf("  the last attempt %s (attempt %d) failed finally, but no dead-letter send is its child",
				ref(j, last.Span), last.Number))
		}
	}
	fail(t, j, marks, "journey of session %s: no dead letter linked to the last attempt at %q\n%s", j.Session, name,
		strings.Join(defects, "\n"))
	return false
}

// Chain asserts that the span end is reached from its trace's root through
// exactly the spans named names, root first, each the parent of the next:
// for example "POST", "send orders", "process orders", "send jobs",
// "process jobs". It reports how many of the len(names)-1 parent links
// held, walking back from end (all of them when it passes), so a suite can
// tally links.
func Chain(t T, j *journey.Journey, end trace.SpanID, names ...string) (held int) {
	t.Helper()
	want := max(len(names)-1, 0)
	if empty(t, j, "chain "+strings.Join(names, " → ")) {
		return 0
	}
	path := j.Path(end)
	if len(path) == 0 {
		fail(t, j, nil, "journey of session %s: chain %s: span %s is not in the journey", j.Session,
			strings.Join(names, " → "), end)
		return 0
	}
	// Walk back from end, as a message travels back to where it started.
	for k := 1; k <= len(names) && k <= len(path); k++ {
		got, wantName := path[len(path)-k], names[len(names)-k]
		if got.Name != wantName {
			fail(t, j, []journey.Mark{{SpanID: got.SpanID, Note: fmt.Sprintf("want %q here", wantName)}},
				"journey of session %s: chain %s breaks at %s: want %q", j.Session, strings.Join(names, " → "),
				ref(j, journey.Ref{SpanID: got.SpanID, Name: got.Name}), wantName)
			return max(k-2, 0)
		}
	}
	switch {
	case len(path) < len(names):
		root := path[0]
		why := "it is a root"
		if root.Parent.IsValid() {
			why = fmt.Sprintf("its parent %s never arrived", root.Parent)
		}
		fail(t, j, []journey.Mark{{SpanID: root.SpanID, Note: "the chain breaks here"}},
			"journey of session %s: chain %s breaks above %s: %s, want %q above it", j.Session,
			strings.Join(names, " → "), ref(j, journey.Ref{SpanID: root.SpanID, Name: root.Name}), why,
			names[len(names)-len(path)-1])
		return len(path) - 1
	case len(path) > len(names):
		top := path[len(path)-len(names)]
		fail(t, j, []journey.Mark{{SpanID: top.SpanID, Note: "want the root here"}},
			"journey of session %s: chain %s goes on above %s: its parent is %q", j.Session,
			strings.Join(names, " → "), ref(j, journey.Ref{SpanID: top.SpanID, Name: top.Name}),
			path[len(path)-len(names)-1].Name)
		return want
	}
	return want
}
