package journey

import (
	"cmp"
	"slices"
	"strings"
	"time"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Journey is everything recorded of one session: every trace that carries
// its session.id, whole, with its spans joined through parents and links,
// and what a user debugging the session looks for. Build one with Assemble
// or AssembleAll. A Journey is read-only once built and safe for concurrent
// reads; its JSON form is what `tracebridge journey --json` prints.
type Journey struct {
	Session string `json:"session"`
	// Traces are the traces that carry the session, in the order they
	// started.
	Traces []trace.TraceID `json:"traces"`
	// Systems are the systems crossed (messaging.system values, and "http"
	// for HTTP server and client spans), in the order first reached.
	Systems []string `json:"systems"`
	// Services are the service.name values, in the order first reached.
	Services []string  `json:"services"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	// Spans are every span of Traces, in the order the waterfall draws
	// them: trace by trace, each as a tree, children by start time. A
	// span's number in the waterfall is its index here plus one.
	Spans []Span `json:"spans"`
	// Orphans are spans whose parent never arrived.
	Orphans []Orphan `json:"orphans"`
	// BrokenLinks are links to spans that are not in the spans given.
	BrokenLinks []BrokenLink `json:"brokenLinks"`
	// Retries are the messages handled more than once or that failed: one
	// chain of attempts each.
	Retries []RetryChain `json:"retries"`
	// DeadLetters are the messages moved to a dead-letter destination.
	DeadLetters []DeadLetter `json:"deadLetters"`
	// CrossTalk are spans that name another session than the trace they
	// sit on: this session's spans on a trace of another session, and
	// other sessions' spans on this session's traces.
	CrossTalk []CrossTalk `json:"crossTalk"`
	// CriticalPath is the chain of spans that leads to the span that ended
	// last, root first, following parents and, where a trace begins with a
	// link into the journey, that link.
	CriticalPath []Step `json:"criticalPath"`

	byKey    map[spanKey]int          // index into Spans
	bySpan   map[trace.SpanID]int     // index into Spans, by span ID alone
	children map[spanKey][]int        // indexes into Spans, by start time
	roots    []int                    // the spans drawn at the top of a tree: roots and orphans
	outside  map[spanKey]Span         // link targets present in the input but not in the journey
	owner    map[trace.TraceID]string // each trace's session
}

// Ref names a span in a report.
type Ref struct {
	TraceID trace.TraceID `json:"traceId"`
	SpanID  trace.SpanID  `json:"spanId"`
	Name    string        `json:"name"`
}

func refOf(s Span) Ref { return Ref{s.TraceID, s.SpanID, s.Name} }

// Orphan is a span whose parent is not among the spans: it was never
// exported, or was lost on the way to the store.
type Orphan struct {
	Span   Ref          `json:"span"`
	Parent trace.SpanID `json:"parentSpanId"`
}

// BrokenLink is a link to a span that is not among the spans.
type BrokenLink struct {
	From    Ref           `json:"from"`
	TraceID trace.TraceID `json:"traceId"`
	SpanID  trace.SpanID  `json:"spanId"`
	Type    string        `json:"type,omitempty"`
	// Reason says what is missing: the span (its trace is there) or its
	// whole trace.
	Reason string `json:"reason"`
}

// CrossTalk is a span whose session.id differs from its trace's session.
type CrossTalk struct {
	Span         Ref    `json:"span"`
	Session      string `json:"session"`      // the span's session.id
	TraceSession string `json:"traceSession"` // the session of the trace it sits on
}

// Outcome is how a retry chain ended.
type Outcome string

// Outcomes of a retry chain.
const (
	// Succeeded: the last attempt succeeded.
	Succeeded Outcome = "succeeded"
	// Retrying: the last attempt failed and will be retried, but the next
	// attempt is not among the spans (not yet run, or lost).
	Retrying Outcome = "retrying"
	// DeadLettered: the last attempt failed finally and the message was
	// sent to its dead-letter destination.
	DeadLettered Outcome = "dead-lettered"
	// Failed: the last attempt failed finally with no dead-letter
	// destination (a dead job, or a message given up).
	Failed Outcome = "failed"
)

// RetryChain is the attempts at one message: process spans with
// tracebridge.attempt that share the message's creation context or are
// linked as previous attempts.
type RetryChain struct {
	Name     string    `json:"name"` // the first attempt's span name
	Attempts []Attempt `json:"attempts"`
	// Linked is whether every attempt after the first links to the attempt
	// before it.
	Linked  bool    `json:"linked"`
	Outcome Outcome `json:"outcome"`
}

// Attempt is one attempt of a retry chain.
type Attempt struct {
	Span   Ref  `json:"span"`
	Number int  `json:"number"` // tracebridge.attempt
	Failed bool `json:"failed"`
	// Final is whether the attempt was the last one allowed
	// (tracebridge.retry.final, or status Error).
	Final bool `json:"final"`
	// Error is the status description of a final failure, or the
	// error.type of one that was retried.
	Error string `json:"error,omitempty"`
	// LinksPrevious is whether the attempt links to the attempt numbered
	// one less (always false for attempt 1).
	LinksPrevious bool          `json:"linksPrevious"`
	Start         time.Time     `json:"start"`
	Duration      time.Duration `json:"durationNanos"`
}

// DeadLetter is a message sent to its dead-letter destination: the send
// span, child of the chain's last attempt.
type DeadLetter struct {
	Span        Ref    `json:"span"`
	Destination string `json:"destination"`
	LastAttempt Ref    `json:"lastAttempt"`
	Attempts    int    `json:"attempts"` // the last attempt's number
}

// Step is one span of the critical path.
type Step struct {
	Span    Ref    `json:"span"`
	Service string `json:"service,omitempty"`
	// Via is how the step follows the one before: "parent", or "link
	// (type)" where a trace begins with a link; "" for the first.
	Via string `json:"via,omitempty"`
	// Offset is the step's start after the journey's start.
	Offset   time.Duration `json:"offsetNanos"`
	Duration time.Duration `json:"durationNanos"`
	// Wait is the time between the end of the step before and the start
	// of this one: time in a broker, a backoff, a queue. Zero when this
	// step starts before the one before has ended.
	Wait time.Duration `json:"waitNanos"`
}

type spanKey struct {
	trace trace.TraceID
	span  trace.SpanID
}

// index is the spans given to Assemble, deduplicated (a store may return
// a span twice) and indexed once for every journey built from them.
type index struct {
	spans    []Span
	byKey    map[spanKey]int
	traces   map[trace.TraceID][]int           // spans of each trace
	sessions map[string]map[trace.TraceID]bool // the traces each session is on
	owner    map[trace.TraceID]string
}

func newIndex(spans []Span) *index {
	x := &index{byKey: make(map[spanKey]int, len(spans)), traces: map[trace.TraceID][]int{},
		sessions: map[string]map[trace.TraceID]bool{}, owner: map[trace.TraceID]string{}}
	for _, s := range spans {
		if _, dup := x.byKey[s.key()]; dup {
			continue
		}
		x.byKey[s.key()] = len(x.spans)
		x.traces[s.TraceID] = append(x.traces[s.TraceID], len(x.spans))
		x.spans = append(x.spans, s)
		if id := s.Session(); id != "" {
			if x.sessions[id] == nil {
				x.sessions[id] = map[trace.TraceID]bool{}
			}
			x.sessions[id][s.TraceID] = true
		}
	}
	for t, idx := range x.traces {
		x.owner[t] = x.traceSession(idx)
	}
	return x
}

// traceSession is the session a trace belongs to: its root's (the first
// root with one, by start), or else the one most of its spans name.
func (x *index) traceSession(idx []int) string {
	var root *Span
	count := map[string]int{}
	for _, i := range idx {
		s := &x.spans[i]
		id := s.Session()
		if id == "" {
			continue
		}
		count[id]++
		if !s.Parent.IsValid() && (root == nil || s.Start.Before(root.Start)) {
			root = s
		}
	}
	if root != nil {
		return root.Session()
	}
	best := ""
	for id, n := range count {
		if n > count[best] || n == count[best] && id < best {
			best = id
		}
	}
	return best
}

// Assemble builds the journey of session from spans: every trace on which
// a span names the session, whole. Spans of other traces resolve links but
// are not part of the journey. A session no span names gives an empty
// journey.
func Assemble(session string, spans []Span) *Journey {
	return newIndex(spans).journey(session)
}

// AssembleAll builds the journey of every session the spans name, sorted
// by session. It indexes the spans once, so it is the way to check many
// sessions.
func AssembleAll(spans []Span) []*Journey {
	x := newIndex(spans)
	ids := make([]string, 0, len(x.sessions))
	for id := range x.sessions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]*Journey, len(ids))
	for i, id := range ids {
		out[i] = x.journey(id)
	}
	return out
}

func (x *index) journey(session string) *Journey {
	j := &Journey{Session: session, Traces: []trace.TraceID{}, Systems: []string{}, Services: []string{},
		Spans: []Span{}, Orphans: []Orphan{}, BrokenLinks: []BrokenLink{}, Retries: []RetryChain{},
		DeadLetters: []DeadLetter{}, CrossTalk: []CrossTalk{}, CriticalPath: []Step{},
		byKey: map[spanKey]int{}, bySpan: map[trace.SpanID]int{}, children: map[spanKey][]int{},
		outside: map[spanKey]Span{}, owner: map[trace.TraceID]string{}}
	if session == "" {
		return j
	}
	type traceStart struct {
		id    trace.TraceID
		start time.Time
	}
	var ts []traceStart
	for t := range x.sessions[session] {
		start := x.spans[x.traces[t][0]].Start
		for _, i := range x.traces[t] {
			if x.spans[i].Start.Before(start) {
				start = x.spans[i].Start
			}
		}
		ts = append(ts, traceStart{t, start})
	}
	slices.SortFunc(ts, func(a, b traceStart) int {
		return cmp.Or(a.start.Compare(b.start), strings.Compare(a.id.String(), b.id.String()))
	})
	for _, t := range ts {
		j.Traces = append(j.Traces, t.id)
		j.owner[t.id] = x.owner[t.id]
		j.addTrace(x, t.id)
	}
	j.resolveLinks(x)
	j.findOrder()
	j.findCrossTalk()
	j.findRetries()
	j.findCriticalPath()
	return j
}

// addTrace appends one trace's spans in waterfall order: roots (and
// orphans) by start, each followed by its subtree, children by start.
func (j *Journey) addTrace(x *index, t trace.TraceID) {
	spans := make([]Span, 0, len(x.traces[t]))
	for _, i := range x.traces[t] {
		s := x.spans[i]
		s.Links = slices.Clone(s.Links) // Assemble infers link types into its own copy
		spans = append(spans, s)
	}
	byStart := func(a, b Span) int {
		return cmp.Or(a.Start.Compare(b.Start), strings.Compare(a.SpanID.String(), b.SpanID.String()))
	}
	slices.SortFunc(spans, byStart)
	kids := map[trace.SpanID][]Span{}
	var roots []Span
	for _, s := range spans {
		if _, ok := x.byKey[spanKey{t, s.Parent}]; ok && s.Parent.IsValid() && s.Parent != s.SpanID {
			kids[s.Parent] = append(kids[s.Parent], s)
			continue
		}
		roots = append(roots, s)
		if s.Parent.IsValid() {
			j.Orphans = append(j.Orphans, Orphan{Span: refOf(s), Parent: s.Parent})
		}
	}
	var walk func(s Span)
	walk = func(s Span) {
		j.byKey[s.key()] = len(j.Spans)
		j.bySpan[s.SpanID] = len(j.Spans)
		j.Spans = append(j.Spans, s)
		for _, c := range kids[s.SpanID] {
			if _, seen := j.byKey[c.key()]; seen {
				continue
			}
			j.children[s.key()] = append(j.children[s.key()], len(j.Spans))
			walk(c)
		}
	}
	for _, r := range roots {
		j.roots = append(j.roots, len(j.Spans))
		walk(r)
	}
	// A parent cycle (corrupt data) leaves spans no root reaches: draw them
	// as roots rather than lose them.
	for _, s := range spans {
		if _, ok := j.byKey[s.key()]; !ok {
			j.Orphans = append(j.Orphans, Orphan{Span: refOf(s), Parent: s.Parent})
			j.roots = append(j.roots, len(j.Spans))
			walk(s)
		}
	}
}

// resolveLinks finds every link's target, infers the type of links that
// carry none, and records the broken ones.
func (j *Journey) resolveLinks(x *index) {
	for i := range j.Spans {
		s := &j.Spans[i]
		for li := range s.Links {
			l := &s.Links[li]
			k := spanKey{l.TraceID, l.SpanID}
			var target *Span
			if ti, ok := x.byKey[k]; ok {
				target = &x.spans[ti]
				if _, in := j.byKey[k]; !in {
					j.outside[k] = *target
				}
			}
			if l.Type == "" {
				l.Type = inferLinkType(*s, target)
			}
			if target == nil {
				reason := "trace not found"
				if _, ok := x.traces[l.TraceID]; ok {
					reason = "span not found on its trace"
				}
				j.BrokenLinks = append(j.BrokenLinks, BrokenLink{From: refOf(*s), TraceID: l.TraceID, SpanID: l.SpanID,
					Type: l.Type, Reason: reason})
			}
		}
	}
}

// inferLinkType guesses the tracebridge.link.type of a link that lost it
// (Jaeger keeps links as FOLLOWS_FROM references, without attributes), from
// what tracebridge links: a process span to the previous attempt or to the
// creation context, a send span to the context it forwards, a batch span
// to its messages. to is nil when the target is not among the spans.
func inferLinkType(from Span, to *Span) string {
	switch {
	case to != nil && from.Kind == trace.SpanKindConsumer && to.Kind == trace.SpanKindConsumer &&
		to.Attempt() > 0 && from.Attempt() == to.Attempt()+1:
		return LinkPreviousAttempt
	case from.Attrs[string(semconv.MessagingBatchMessageCountKey)] != "":
		return LinkBatchMessage
	case from.Kind == trace.SpanKindProducer:
		return LinkCreation
	case from.Kind == trace.SpanKindConsumer && to != nil && to.Kind == trace.SpanKindProducer:
		return LinkCreation
	case from.Kind == trace.SpanKindConsumer && to != nil:
		return LinkAmbient
	}
	return ""
}

// findOrder fills the journey's time bounds, systems and services.
func (j *Journey) findOrder() {
	if len(j.Spans) == 0 {
		return
	}
	byStart := slices.Clone(j.Spans)
	slices.SortStableFunc(byStart, func(a, b Span) int { return a.Start.Compare(b.Start) })
	j.Start, j.End = byStart[0].Start, byStart[0].End
	for _, s := range byStart {
		if s.End.After(j.End) {
			j.End = s.End
		}
		if sys := s.System(); sys != "" && !slices.Contains(j.Systems, sys) {
			j.Systems = append(j.Systems, sys)
		}
		if s.Service != "" && !slices.Contains(j.Services, s.Service) {
			j.Services = append(j.Services, s.Service)
		}
	}
}

func (j *Journey) findCrossTalk() {
	for _, s := range j.Spans {
		if id, owner := s.Session(), j.owner[s.TraceID]; id != "" && owner != "" && id != owner {
			j.CrossTalk = append(j.CrossTalk, CrossTalk{Span: refOf(s), Session: id, TraceSession: owner})
		}
	}
}

// creation is the key of the context a process span's message was created
// in: its parent, or with a link policy its creation link; zero if neither.
func creation(s Span) spanKey {
	if s.Parent.IsValid() {
		return spanKey{s.TraceID, s.Parent}
	}
	for _, l := range s.Links {
		if l.Type == LinkCreation {
			return spanKey{l.TraceID, l.SpanID}
		}
	}
	return spanKey{}
}

// findRetries groups the process spans with an attempt number into one
// chain per message: the spans that share a creation context, joined with
// those they link to as previous attempts.
func (j *Journey) findRetries() {
	var attempts []int
	for i, s := range j.Spans {
		if s.Kind == trace.SpanKindConsumer && s.Attempt() > 0 {
			attempts = append(attempts, i)
		}
	}
	group := map[int]int{} // span index → union-find parent
	var find func(i int) int
	find = func(i int) int {
		if p := group[i]; p != i {
			group[i] = find(p)
		}
		return group[i]
	}
	union := func(a, b int) { group[find(a)] = find(b) }
	byCreation := map[spanKey]int{}
	for _, i := range attempts {
		group[i] = i
	}
	for _, i := range attempts {
		if c := creation(j.Spans[i]); c != (spanKey{}) {
			if first, ok := byCreation[c]; ok {
				union(i, first)
			} else {
				byCreation[c] = i
			}
		}
		for _, l := range j.Spans[i].Links {
			if ti, ok := j.byKey[spanKey{l.TraceID, l.SpanID}]; ok && l.Type == LinkPreviousAttempt {
				if _, isAttempt := group[ti]; isAttempt {
					union(i, ti)
				}
			}
		}
	}
	chains := map[int][]int{}
	var roots []int
	for _, i := range attempts {
		r := find(i)
		if chains[r] == nil {
			roots = append(roots, r)
		}
		chains[r] = append(chains[r], i)
	}
	for _, r := range roots {
		members := chains[r]
		failed := false
		for _, i := range members {
			failed = failed || j.Spans[i].Failed()
		}
		if len(members) < 2 && !failed {
			continue // handled once, successfully: not a retry
		}
		j.addChain(members)
	}
}

func (j *Journey) addChain(members []int) {
	slices.SortStableFunc(members, func(a, b int) int {
		return cmp.Or(cmp.Compare(j.Spans[a].Attempt(), j.Spans[b].Attempt()), j.Spans[a].Start.Compare(j.Spans[b].Start))
	})
	c := RetryChain{Name: j.Spans[members[0]].Name, Linked: true}
	for n, i := range members {
		s := j.Spans[i]
		a := Attempt{Span: refOf(s), Number: s.Attempt(), Failed: s.Failed(),
			Final: s.Attrs[RetryFinalKey] == "true" || s.Error, Start: s.Start, Duration: s.Duration()}
		if s.Error {
			a.Error = s.StatusMessage
		}
		if a.Error == "" {
			a.Error = s.Attrs[ErrorTypeKey]
		}
		for _, l := range s.Links {
			if ti, ok := j.byKey[spanKey{l.TraceID, l.SpanID}]; ok && slices.Contains(members, ti) &&
				j.Spans[ti].Attempt() == a.Number-1 {
				a.LinksPrevious = true
			}
		}
		if n > 0 && !a.LinksPrevious {
			c.Linked = false
		}
		c.Attempts = append(c.Attempts, a)
	}
	last := j.Spans[members[len(members)-1]]
	lastA := c.Attempts[len(c.Attempts)-1]
	switch {
	case !lastA.Failed:
		c.Outcome = Succeeded
	case !lastA.Final:
		c.Outcome = Retrying
	default:
		c.Outcome = Failed
		if dl, ok := j.deadLetterOf(last); ok {
			c.Outcome = DeadLettered
			j.DeadLetters = append(j.DeadLetters, DeadLetter{Span: refOf(dl), Destination: destination(dl),
				LastAttempt: refOf(last), Attempts: lastA.Number})
		}
	}
	j.Retries = append(j.Retries, c)
}

// deadLetterOf finds the dead-letter send of a final attempt: a producer
// child that forwards the message, linking to its creation context. (A
// handler's own sends start new messages: they link to nothing.)
func (j *Journey) deadLetterOf(last Span) (Span, bool) {
	want := creation(last)
	var found Span
	ok := false
	for _, ci := range j.children[last.key()] {
		c := j.Spans[ci]
		if c.Kind != trace.SpanKindProducer {
			continue
		}
		for _, l := range c.Links {
			if (spanKey{l.TraceID, l.SpanID}) == want && l.Type == LinkCreation {
				found, ok = c, true // the last publish, after any that failed
			}
		}
	}
	return found, ok
}

func destination(s Span) string {
	if d := s.Attrs[DestinationKey]; d != "" {
		return d
	}
	_, d, _ := strings.Cut(s.Name, " ")
	return d
}

// findCriticalPath walks back from the span that ended last.
func (j *Journey) findCriticalPath() {
	if len(j.Spans) == 0 {
		return
	}
	end := 0
	for i, s := range j.Spans {
		if e := j.Spans[end]; s.End.After(e.End) || s.End.Equal(e.End) && s.Start.After(e.Start) {
			end = i
		}
	}
	type hop struct {
		i   int
		via string
	}
	seen := map[int]bool{}
	var path []hop
	for cur, via := end, ""; ; {
		seen[cur] = true
		path = append(path, hop{cur, via})
		s := j.Spans[cur]
		if p, ok := j.byKey[spanKey{s.TraceID, s.Parent}]; ok && s.Parent.IsValid() && !seen[p] {
			cur, via = p, "parent"
			continue
		}
		next := -1
		for _, want := range []string{LinkCreation, LinkPreviousAttempt, ""} {
			for _, l := range s.Links {
				if ti, ok := j.byKey[spanKey{l.TraceID, l.SpanID}]; ok && !seen[ti] && (want == "" || l.Type == want) && next < 0 {
					next, via = ti, linkName(l.Type)
				}
			}
		}
		if next < 0 {
			break
		}
		cur = next
	}
	slices.Reverse(path)
	// Each hop's via says how it was reached walking back; the step it
	// belongs to is the one after it in time.
	for k, h := range path {
		s := j.Spans[h.i]
		st := Step{Span: refOf(s), Service: s.Service, Offset: s.Start.Sub(j.Start), Duration: s.Duration()}
		if k > 0 {
			prev := j.Spans[path[k-1].i]
			st.Via = path[k-1].via
			if w := s.Start.Sub(prev.End); w > 0 {
				st.Wait = w
			}
		}
		j.CriticalPath = append(j.CriticalPath, st)
	}
}

// Whole reports whether the journey has no orphans and no broken links.
func (j *Journey) Whole() bool { return len(j.Orphans) == 0 && len(j.BrokenLinks) == 0 }

// Duration is the time from the journey's first start to its last end.
func (j *Journey) Duration() time.Duration { return j.End.Sub(j.Start) }

// Span returns the journey's span with the given ID.
func (j *Journey) Span(id trace.SpanID) (Span, bool) {
	i, ok := j.bySpan[id]
	if !ok {
		return Span{}, false
	}
	return j.Spans[i], true
}

// Number is the span's number in the waterfall (1-based), 0 if the span is
// not in the journey.
func (j *Journey) Number(id trace.SpanID) int {
	if i, ok := j.bySpan[id]; ok {
		return i + 1
	}
	return 0
}

// Path returns the span and its ancestors, root first, following parents
// within its trace. It is empty when the span is not in the journey.
func (j *Journey) Path(id trace.SpanID) []Span {
	i, ok := j.bySpan[id]
	if !ok {
		return nil
	}
	var out []Span
	seen := map[int]bool{}
	for ok && !seen[i] {
		seen[i] = true
		s := j.Spans[i]
		out = append(out, s)
		if !s.Parent.IsValid() {
			break
		}
		i, ok = j.byKey[spanKey{s.TraceID, s.Parent}]
	}
	slices.Reverse(out)
	return out
}

// TraceSession is the session a trace of the journey belongs to: its root
// span's session.id, or the one most of its spans name.
func (j *Journey) TraceSession(t trace.TraceID) string { return j.owner[t] }
