package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// telemetry is the demo's OpenTelemetry setup: every span is recorded in
// memory for the terminal waterfall, stamped with the session by
// carrier.SessionSpanProcessor, and exported over OTLP too when the standard
// OTEL_EXPORTER_OTLP_ENDPOINT is set (Jaeger from docker-compose).
type telemetry struct {
	spans *tracetest.SpanRecorder
	tps   []*sdktrace.TracerProvider
	otlp  sdktrace.SpanExporter
	logs  *syncBuffer
	log   *slog.Logger
}

func newTelemetry(ctx context.Context) (*telemetry, error) {
	t := &telemetry{spans: tracetest.NewSpanRecorder(), logs: &syncBuffer{}}
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("OTLP exporter: %w", err)
		}
		t.otlp = exp
	}
	// Every line goes to the buffer as JSON, so the demo can find the
	// session's lines afterwards the way `grep <session>` would.
	t.log = slog.New(carrier.NewLogHandler(slog.NewJSONHandler(t.logs, nil), "tenant"))
	return t, nil
}

// service returns a tracer provider for one simulated service, so spans
// show which service made them (service.name on the resource).
func (t *telemetry) service(name string) trace.TracerProvider {
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(name))),
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()),
		sdktrace.WithSpanProcessor(t.spans),
	}
	if t.otlp != nil {
		opts = append(opts, sdktrace.WithBatcher(t.otlp))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	t.tps = append(t.tps, tp)
	return tp
}

func (t *telemetry) shutdown(ctx context.Context) {
	for _, tp := range t.tps {
		_ = tp.Shutdown(ctx)
	}
}

// trace returns the ended spans of one trace.
func (t *telemetry) trace(id trace.TraceID) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range t.spans.Ended() {
		if s.SpanContext().TraceID() == id {
			out = append(out, s)
		}
	}
	return out
}

// printSessionLogs prints the log lines that carry the session ID.
func (t *telemetry) printSessionLogs(w io.Writer, session string) int {
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(t.logs.Bytes()))
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, session) {
			continue
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		n++
		fmt.Fprintf(w, "  %-5v %-44v service=%-9v trace_id=%v span_id=%v\n",
			rec["level"], rec["msg"], rec["service"], rec["trace_id"], rec["span_id"])
	}
	return n
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
