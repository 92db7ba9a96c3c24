package journey

import (
	"fmt"
	"io"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Mark is a note drawn at the end of a span's line in the waterfall, to
// point at it (journeytest marks the spans an assertion is about).
type Mark struct {
	SpanID trace.SpanID
	Note   string
}

const barWidth = 30

// Draw writes the journey as a waterfall: each trace as a tree with a time
// bar per span (service, span name, broker, attempt, duration), traces in
// the order they started, each headed by its ID when there are several.
// Spans are numbered; a link names the span it points to by number (#4), by
// name when it lies outside the journey, and says what is missing when it
// is broken. Orphans, cross-talk and failures are marked on their line.
func (j *Journey) Draw(w io.Writer, marks ...Mark) {
	if len(j.Spans) == 0 {
		fmt.Fprintln(w, "(no spans)")
		return
	}
	notes := map[trace.SpanID][]string{}
	for _, m := range marks {
		notes[m.SpanID] = append(notes[m.SpanID], m.Note)
	}
	orphan := map[spanKey]bool{}
	for _, o := range j.Orphans {
		orphan[spanKey{o.Span.TraceID, o.Span.SpanID}] = true
	}
	total := j.Duration()
	if total <= 0 {
		total = time.Millisecond
	}
	fmt.Fprintf(w, "%-3s %-62s %-9s %-16s %-3s %9s  %s\n", "#", "span", "service", "system", "try", "duration", "timeline")
	var line func(i int, prefix string, last bool, depth int)
	line = func(i int, prefix string, last bool, depth int) {
		s := j.Spans[i]
		branch, next := "", ""
		if depth > 0 {
			branch, next = "├─ ", "│  "
			if last {
				branch, next = "└─ ", "   "
			}
		}
		name := prefix + branch + s.Name + " (" + kindName(s.Kind) + ")"
		off := int(float64(s.Start.Sub(j.Start)) / float64(total) * barWidth)
		width := max(1, int(float64(s.Duration())/float64(total)*barWidth))
		off = min(max(off, 0), barWidth-1)
		width = min(width, barWidth-off)
		bar := strings.Repeat(" ", off) + strings.Repeat("█", width) + strings.Repeat(" ", barWidth-off-width)
		mark := ""
		if s.Error {
			mark = " ✗ " + s.StatusMessage
		} else if t := s.Attrs[ErrorTypeKey]; t != "" {
			mark = " ✗ " + t + " (retried)"
		}
		if orphan[s.key()] {
			mark += fmt.Sprintf(" ⚠ orphan: parent %s never arrived", s.Parent)
		}
		if id, owner := s.Session(), j.owner[s.TraceID]; id != "" && owner != "" && id != owner {
			mark += fmt.Sprintf(" ⚠ session %s on a trace of session %s", id, owner)
		}
		for _, n := range notes[s.SpanID] {
			mark += " ◀ " + n
		}
		try := ""
		if a := s.Attempt(); a > 0 {
			try = fmt.Sprint(a)
		}
		fmt.Fprintf(w, "%-3d %-62s %-9s %-16s %-3s %9s  |%s|%s\n", i+1, truncate(name, 62), truncate(s.Service, 9),
			s.System(), try, s.Duration().Round(10*time.Microsecond), bar, mark)
		for _, l := range s.Links {
			fmt.Fprintf(w, "    %s%s   ↪ %s to %s\n", prefix, next, linkName(l.Type), j.linkTarget(l))
		}
		kids := j.children[s.key()]
		for k, c := range kids {
			line(c, prefix+next, k == len(kids)-1, depth+1)
		}
	}
	var cur trace.TraceID
	for _, i := range j.roots {
		if t := j.Spans[i].TraceID; t != cur {
			cur = t
			if len(j.Traces) > 1 {
				header := "── trace " + cur.String()
				if owner := j.owner[cur]; owner != j.Session {
					header += " (a trace of session " + owner + ")"
				}
				fmt.Fprintln(w, header)
			}
		}
		line(i, "", true, 0)
	}
}

// linkName is "link (type)", or "link" when the type is unknown.
func linkName(typ string) string {
	if typ == "" {
		return "link"
	}
	return "link (" + typ + ")"
}

// linkTarget describes where a link points.
func (j *Journey) linkTarget(l Link) string {
	k := spanKey{l.TraceID, l.SpanID}
	if i, ok := j.byKey[k]; ok {
		return fmt.Sprintf("#%d", i+1)
	}
	if s, ok := j.outside[k]; ok {
		return fmt.Sprintf("%q on trace %s (outside this journey)", s.Name, l.TraceID)
	}
	for _, b := range j.BrokenLinks {
		if b.TraceID == l.TraceID && b.SpanID == l.SpanID {
			return fmt.Sprintf("%s on trace %s ✗ broken: %s", l.SpanID, l.TraceID, b.Reason)
		}
	}
	return fmt.Sprintf("%s on trace %s", l.SpanID, l.TraceID)
}

// Size says how big the journey is: "11 spans on 1 trace".
func (j *Journey) Size() string {
	return plural(len(j.Spans), "span") + " on " + plural(len(j.Traces), "trace")
}

// plural says "1 span", "2 spans".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// Describe writes what the waterfall does not show at a glance: the
// systems and services crossed, the retry chains and dead letters, the
// critical path with its durations, and every defect found (orphans,
// broken links, cross-talk), or that there is none.
func (j *Journey) Describe(w io.Writer) {
	fmt.Fprintf(w, "Crosses %s (services %s) in %s\n", strings.Join(j.Systems, " → "),
		strings.Join(j.Services, ", "), j.Duration().Round(10*time.Microsecond))

	fmt.Fprintln(w)
	if len(j.Retries) == 0 {
		fmt.Fprintln(w, "Retry chains: none")
	} else {
		fmt.Fprintln(w, "Retry chains:")
	}
	for _, c := range j.Retries {
		linked := "each attempt linked to the one before"
		if !c.Linked {
			linked = "NOT linked attempt to attempt"
		}
		fmt.Fprintf(w, "  %s: %s, %s, %s\n", c.Name, plural(len(c.Attempts), "attempt"), linked, c.Outcome)
		for _, a := range c.Attempts {
			note := ""
			switch {
			case a.Failed && a.Final:
				note = "✗ final: " + a.Error
			case a.Failed:
				note = "✗ " + a.Error + " (retried)"
			default:
				note = "ok"
			}
			if a.Number > 1 && !a.LinksPrevious {
				note += fmt.Sprintf("; no link to attempt %d", a.Number-1)
			}
			fmt.Fprintf(w, "    attempt %-2d #%-3d %9s  %s\n", a.Number, j.Number(a.Span.SpanID),
				a.Duration.Round(10*time.Microsecond), note)
		}
	}
	if len(j.DeadLetters) == 0 {
		fmt.Fprintln(w, "Dead letters: none")
	} else {
		fmt.Fprintln(w, "Dead letters:")
	}
	for _, d := range j.DeadLetters {
		fmt.Fprintf(w, "  #%d %s: to %s after %s, sent by attempt #%d\n", j.Number(d.Span.SpanID), d.Span.Name,
			d.Destination, plural(d.Attempts, "attempt"), j.Number(d.LastAttempt.SpanID))
	}

	fmt.Fprintln(w)
	fmt.Fprintf(w, "Critical path (%s):\n", j.Duration().Round(10*time.Microsecond))
	for _, st := range j.CriticalPath {
		wait := ""
		if st.Wait > 0 {
			wait = "waited " + st.Wait.Round(10*time.Microsecond).String()
		}
		if st.Via != "" && st.Via != "parent" {
			wait = strings.TrimSpace(wait + " via " + st.Via)
		}
		line := fmt.Sprintf("  #%-3d %-40s %-9s +%-9s %9s  %s", j.Number(st.Span.SpanID), truncate(st.Span.Name, 40),
			truncate(st.Service, 9), st.Offset.Round(10*time.Microsecond), st.Duration.Round(10*time.Microsecond), wait)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}

	fmt.Fprintln(w)
	j.describeDefects(w)
}

func (j *Journey) describeDefects(w io.Writer) {
	if j.Whole() && len(j.CrossTalk) == 0 {
		fmt.Fprintf(w, "Whole: no orphans, no broken links, no cross-talk; %s.\n", j.Size())
		return
	}
	for _, o := range j.Orphans {
		fmt.Fprintf(w, "Orphan #%d %q: parent %s never arrived\n", j.Number(o.Span.SpanID), o.Span.Name, o.Parent)
	}
	for _, b := range j.BrokenLinks {
		fmt.Fprintf(w, "Broken %s from #%d %q to %s on trace %s: %s\n", linkName(b.Type), j.Number(b.From.SpanID),
			b.From.Name, b.SpanID, b.TraceID, b.Reason)
	}
	for _, c := range j.CrossTalk {
		fmt.Fprintf(w, "Cross-talk: #%d %q names session %s, on a trace of session %s\n", j.Number(c.Span.SpanID),
			c.Span.Name, c.Session, c.TraceSession)
	}
}
