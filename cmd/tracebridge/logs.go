package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/journey"
)

// logLine is one JSON log line of the session, as carrier.NewLogHandler
// wraps slog's JSON handler to write it: time, level, msg, the caller's
// attributes, and trace_id, span_id and session.id.
type logLine struct {
	raw    json.RawMessage
	fields map[string]any
	time   time.Time // zero when the line has none
	file   string
	n      int // line number in file
}

func (l logLine) str(key string) string {
	if v, ok := l.fields[key]; ok {
		return fmt.Sprint(v)
	}
	return ""
}

// readLogs returns the lines of files that belong to the journey (its
// session.id, or a trace_id of one of its traces), in time order, and how
// many lines were not JSON objects.
func readLogs(files []string, j *journey.Journey) (lines []logLine, skipped int, err error) {
	traces := map[string]bool{}
	for _, t := range j.Traces {
		traces[t.String()] = true
	}
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			return nil, 0, fmt.Errorf("--logs: %w", err)
		}
		br := bufio.NewReader(f)
		for n := 1; ; n++ {
			raw, rerr := br.ReadBytes('\n')
			if raw = bytes.TrimSpace(raw); len(raw) > 0 {
				var fields map[string]any
				if json.Unmarshal(raw, &fields) != nil {
					skipped++
				} else if l := (logLine{raw: raw, fields: fields, file: path, n: n}); l.str(carrier.LogSessionID) == j.Session ||
					traces[l.str(carrier.LogTraceID)] {
					l.time, _ = time.Parse(time.RFC3339Nano, l.str(slogTime))
					lines = append(lines, l)
				}
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				f.Close()
				return nil, 0, fmt.Errorf("--logs %s line %d: %w", path, n, rerr)
			}
		}
		f.Close()
	}
	// Lines without a time keep their place after those with one.
	slices.SortStableFunc(lines, func(a, b logLine) int {
		switch {
		case a.time.IsZero() || b.time.IsZero():
			return boolCmp(a.time.IsZero(), b.time.IsZero())
		default:
			return a.time.Compare(b.time)
		}
	})
	return lines, skipped, nil
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// slog's JSON handler keys.
const (
	slogTime  = "time"
	slogLevel = "level"
	slogMsg   = "msg"
)

// printLogs writes one line per log line: time, level, message, the span it
// was logged in (its number in the waterfall), and the line's other
// attributes.
func printLogs(w io.Writer, lines []logLine, j *journey.Journey) {
	if len(lines) == 0 {
		fmt.Fprintln(w, "  (none)")
		return
	}
	shown := map[string]bool{slogTime: true, slogLevel: true, slogMsg: true, carrier.LogTraceID: true,
		carrier.LogSpanID: true, carrier.LogSessionID: true}
	for _, l := range lines {
		at := "-"
		if !l.time.IsZero() {
			at = l.time.Format("15:04:05.000000")
		}
		span := ""
		if id, err := trace.SpanIDFromHex(l.str(carrier.LogSpanID)); err == nil {
			if n := j.Number(id); n > 0 {
				span = fmt.Sprintf("#%d", n)
			}
		}
		var rest []string
		keys := make([]string, 0, len(l.fields))
		for k := range l.fields {
			if !shown[k] {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			rest = append(rest, k+"="+l.str(k))
		}
		line := fmt.Sprintf("  %s %-5s %-4s %-40s %s", at, l.str(slogLevel), span, l.str(slogMsg), strings.Join(rest, " "))
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
}
