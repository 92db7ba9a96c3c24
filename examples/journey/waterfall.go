package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// printWaterfall draws the spans of one trace as a tree with a time bar per
// span: service, span name, broker, attempt, links and duration. Links are
// shown by the short name of the span they point to, so a retry's link to
// its previous attempt is visible at a glance.
func printWaterfall(w io.Writer, spans []sdktrace.ReadOnlySpan) {
	if len(spans) == 0 {
		fmt.Fprintln(w, "(no spans)")
		return
	}
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	start, end := spans[0].StartTime(), spans[0].EndTime()
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = s
		if s.StartTime().Before(start) {
			start = s.StartTime()
		}
		if s.EndTime().After(end) {
			end = s.EndTime()
		}
	}
	var roots []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if _, ok := byID[s.Parent().SpanID()]; ok && s.Parent().IsValid() {
			children[s.Parent().SpanID()] = append(children[s.Parent().SpanID()], s)
		} else {
			roots = append(roots, s)
		}
	}
	byStart := func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) }
	slices.SortFunc(roots, byStart)
	for _, c := range children {
		slices.SortFunc(c, byStart)
	}
	// Number the spans so links can name their targets.
	index := map[trace.SpanID]int{}
	var order []sdktrace.ReadOnlySpan
	var walk func(s sdktrace.ReadOnlySpan)
	walk = func(s sdktrace.ReadOnlySpan) {
		index[s.SpanContext().SpanID()] = len(order) + 1
		order = append(order, s)
		for _, c := range children[s.SpanContext().SpanID()] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	total := end.Sub(start)
	if total <= 0 {
		total = time.Millisecond
	}
	const barWidth = 30
	fmt.Fprintf(w, "%-3s %-62s %-9s %-16s %-3s %9s  %s\n", "#", "span", "service", "broker", "try", "duration", "timeline")
	var line func(s sdktrace.ReadOnlySpan, prefix string, last bool, depth int)
	line = func(s sdktrace.ReadOnlySpan, prefix string, last bool, depth int) {
		branch, next := "", ""
		if depth > 0 {
			branch, next = "├─ ", "│  "
			if last {
				branch, next = "└─ ", "   "
			}
		}
		name := prefix + branch + s.Name() + " (" + strings.ToLower(s.SpanKind().String()) + ")"
		attrs := attrMap(s.Attributes())
		off := int(float64(s.StartTime().Sub(start)) / float64(total) * barWidth)
		width := max(1, int(float64(s.EndTime().Sub(s.StartTime()))/float64(total)*barWidth))
		off = min(off, barWidth-1)
		width = min(width, barWidth-off)
		bar := strings.Repeat(" ", off) + strings.Repeat("█", width) + strings.Repeat(" ", barWidth-off-width)
		mark := ""
		if s.Status().Code.String() == "Error" {
			mark = " ✗ " + s.Status().Description
		} else if attrs["error.type"] != "" {
			mark = " ✗ " + attrs["error.type"] + " (retried)"
		}
		fmt.Fprintf(w, "%-3d %-62s %-9s %-16s %-3s %9s  |%s|%s\n", index[s.SpanContext().SpanID()],
			truncate(name, 62), truncate(serviceName(s), 9),
			attrs["messaging.system"], attrs["tracebridge.attempt"], s.EndTime().Sub(s.StartTime()).Round(10*time.Microsecond), bar, mark)
		for _, l := range s.Links() {
			target := "another trace"
			if i, ok := index[l.SpanContext.SpanID()]; ok {
				target = fmt.Sprintf("#%d", i)
			} else if t, ok := byID[l.SpanContext.SpanID()]; ok {
				target = t.Name()
			}
			kind := attrMap(l.Attributes)["tracebridge.link.type"]
			fmt.Fprintf(w, "    %s%s   ↪ link (%s) to %s\n", prefix, next, kind, target)
		}
		kids := children[s.SpanContext().SpanID()]
		for i, c := range kids {
			line(c, prefix+next, i == len(kids)-1, depth+1)
		}
	}
	for _, r := range roots {
		line(r, "", true, 0)
	}
}

func attrMap(kvs []attribute.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func serviceName(s sdktrace.ReadOnlySpan) string {
	if v, ok := s.Resource().Set().Value("service.name"); ok {
		return v.AsString()
	}
	return "?"
}
