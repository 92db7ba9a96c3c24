// Command journey is tracebridge's main demo: one checkout request crosses
// HTTP → Kafka → RabbitMQ → NATS JetStream → a background job, one consumer
// fails once and succeeds on retry, and the whole journey is printed as a
// waterfall under one trace ID and one session, followed by the log lines
// found by that session ID.
//
//	go run ./examples/journey
//
// It runs on embedded defaults: an in-process Kafka-protocol broker and an
// embedded NATS server, unless KAFKA_BROKERS or NATS_URL name real ones. It
// uses RabbitMQ at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/)
// when one is reachable, and otherwise says how to start one and goes from
// Kafka straight to NATS. With OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set it also exports the spans over
// OTLP/HTTP, so Jaeger shows the same journey, and its verdict counts the
// spans the endpoint accepted: a failed export fails the run.
//
// With --otlp-out FILE it writes its spans to FILE as OTLP JSON lines, and
// with --logs-out FILE its log lines as JSON lines, so the tracebridge CLI
// can draw the session with no trace store at all:
//
//	go run ./examples/journey --otlp-out spans.jsonl --logs-out logs.jsonl
//	go run ./cmd/tracebridge journey <session> --otlp spans.jsonl --logs logs.jsonl
//
// Topics, queues and subjects have the same names on every run, and stay on
// the brokers between runs (the JetStream stream keeps messages for a day).
// Runs are kept apart by their session: each service handles only the
// messages of this run's session, so a message an interrupted earlier run
// left on a broker is settled and skipped, never joined to this run's
// journey, and the JetStream consumer is ephemeral and starts at the first
// new message.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.otlpOut, "otlp-out", "", "also write the spans to `FILE` as OTLP JSON lines (what tracebridge journey --otlp reads)")
	flag.StringVar(&cfg.logsOut, "logs-out", "", "also write the log lines to `FILE` as JSON lines (what tracebridge journey --logs reads)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "journey: unexpected arguments %q\n", flag.Args())
		flag.Usage()
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := run(ctx, os.Stdout, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "journey:", err)
		if errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintln(os.Stderr, "the journey did not finish within 60s")
		}
		os.Exit(1)
	}
}
