package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tracebridge/tracebridge/journey"
)

const defaultJaeger = "http://localhost:16686"

// listFlag is a flag that may be given several times.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

type journeyOptions struct {
	jaeger   string
	otlp     listFlag
	logs     listFlag
	services listFlag
	lookback time.Duration
	limit    int
	timeout  time.Duration
	json     bool
}

func journeyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o journeyOptions
	fs := flag.NewFlagSet("tracebridge journey", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.jaeger, "jaeger", defaultJaeger, "read the traces from Jaeger's HTTP query API at `URL`")
	fs.Var(&o.otlp, "otlp", "read the traces from `FILE` of OTLP JSON lines, as the Collector's file exporter writes them (repeatable)")
	fs.Var(&o.logs, "logs", "print the session's lines of `FILE`, JSON lines as carrier.NewLogHandler writes them (repeatable)")
	fs.Var(&o.services, "service", "with --jaeger, search only this `service` (repeatable; default every service Jaeger knows)")
	fs.DurationVar(&o.lookback, "lookback", 48*time.Hour, "with --jaeger, how far back to search")
	fs.IntVar(&o.limit, "limit", 100, "with --jaeger, the most traces to take per service")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up reading the traces after this long")
	fs.BoolVar(&o.json, "json", false, "print the assembled journey as JSON")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: tracebridge journey <session-id> [flags]

Draws every trace that carries the session's session.id, joined through
parents and links: a waterfall of the spans, the retry chains, dead letters
and critical path, and any orphan, broken link or cross-talk.

flags:
`)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	if len(pos) != 1 || pos[0] == "" {
		fmt.Fprintf(stderr, "tracebridge journey: want one session ID, got %q\n", pos)
		fs.Usage()
		return 2
	}
	session := pos[0]
	if o.limit <= 0 || o.lookback <= 0 || o.timeout <= 0 {
		fmt.Fprintf(stderr, "tracebridge journey: --limit, --lookback and --timeout must be positive, got %d, %s, %s\n",
			o.limit, o.lookback, o.timeout)
		return 2
	}
	jaegerSet := false
	fs.Visit(func(f *flag.Flag) { jaegerSet = jaegerSet || f.Name == "jaeger" })
	if jaegerSet && len(o.otlp) > 0 {
		fmt.Fprintln(stderr, "tracebridge journey: read from --jaeger or --otlp, not both")
		return 2
	}

	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var spans []journey.Span
	var source string
	if len(o.otlp) > 0 {
		source = strings.Join(o.otlp, ", ")
		spans, err = readOTLPFiles(o.otlp)
	} else {
		source = o.jaeger
		spans, err = fetchJaeger(ctx, o, session)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tracebridge journey: %v\n", err)
		return 1
	}
	j := journey.Assemble(session, spans)
	if len(j.Spans) == 0 {
		fmt.Fprintf(stderr, "tracebridge journey: no span of session %q in %s (%d spans read)\n", session, source, len(spans))
		return 1
	}
	var lines []logLine
	skipped := 0
	if len(o.logs) > 0 {
		if lines, skipped, err = readLogs(o.logs, j); err != nil {
			fmt.Fprintf(stderr, "tracebridge journey: %v\n", err)
			return 1
		}
	}

	if o.json {
		out := struct {
			*journey.Journey
			Logs []json.RawMessage `json:"logs,omitempty"`
		}{Journey: j}
		for _, l := range lines {
			out.Logs = append(out.Logs, l.raw)
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "tracebridge journey: write JSON: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stdout, "session %s   %s, from %s\n\n", session, j.Size(), source)
	j.Draw(stdout)
	fmt.Fprintln(stdout)
	j.Describe(stdout)
	if len(o.logs) > 0 {
		fmt.Fprintf(stdout, "\nLog lines of session %s, in time order (%s):\n", session, strings.Join(o.logs, ", "))
		printLogs(stdout, lines, j)
		if skipped > 0 {
			fmt.Fprintf(stdout, "  (lines that are not JSON, skipped: %d)\n", skipped)
		}
	}
	return 0
}

// parseInterspersed parses flags that may come before or after the
// positional arguments (`journey <session> --otlp f` reads as naturally as
// `journey --otlp f <session>`), which flag.Parse alone stops at.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func readOTLPFiles(paths []string) ([]journey.Span, error) {
	var out []journey.Span
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("--otlp: %w", err)
		}
		spans, err := journey.ReadOTLP(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("--otlp %s: %w", p, err)
		}
		out = append(out, spans...)
	}
	return out, nil
}
