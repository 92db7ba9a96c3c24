// Command tracebridge is tracebridge's command-line tool.
//
//	tracebridge journey <session-id> [--jaeger URL | --otlp FILE] [--logs FILE] [--json]
//
// journey draws everything recorded of one session: every trace that
// carries its session.id, joined through parents and links, as a
// waterfall, with its retry chains, dead letters and critical path, and
// what is wrong with it (orphans, broken links, cross-talk). It reads the
// traces from Jaeger's HTTP query API (--jaeger, default
// http://localhost:16686, the docker-compose Jaeger) or from OTLP JSON
// lines as the OpenTelemetry Collector's file exporter writes them
// (--otlp), and with --logs, JSON log lines as carrier.NewLogHandler writes
// them, prints the session's lines in time order. --json prints the
// assembled journey for scripts. Run `tracebridge journey -h` for every
// flag.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: tracebridge <command> [arguments]

commands:
  journey <session-id>   draw a session's journey from Jaeger or an OTLP JSON file

Run 'tracebridge <command> -h' for a command's flags.
`

// run runs the command line args and returns the exit code: 0 done, 1
// failed, 2 a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "journey":
		return journeyCmd(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "tracebridge: unknown command %q\n%s", args[0], usage)
	return 2
}
