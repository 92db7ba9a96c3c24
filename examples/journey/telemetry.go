package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	"github.com/tracebridge/tracebridge/journey"
)

// telemetry is the demo's OpenTelemetry setup: every span is recorded in
// memory for the terminal waterfall, stamped with the session by
// carrier.SessionSpanProcessor, and exported over OTLP/HTTP too when the
// standard OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set, to
// Jaeger from docker-compose for instance.
//
// Each simulated service has a tracer provider of its own, so its spans
// carry its service.name. The providers share one OTLP exporter, which none
// of them may shut down: a provider's Shutdown shuts its exporter down, and
// the first one to stop would cut off the others' spans. So the providers
// get a sharedExporter whose Shutdown does nothing, and flush shuts the real
// exporter down once every provider has handed over its spans.
//
// With --otlp-out every provider also writes its spans to a file as OTLP
// JSON lines (journey.OTLPWriter), and with --logs-out the log lines go to a
// file too: what `tracebridge journey` reads.
type telemetry struct {
	spans    *tracetest.SpanRecorder
	endpoint string          // "" without OTLP
	exp      *sharedExporter // nil without OTLP
	logs     *syncBuffer
	log      *slog.Logger
	files    []*os.File          // --otlp-out and --logs-out, closed by flush
	otlpFile *journey.OTLPWriter // nil without --otlp-out

	mu  sync.Mutex
	tps map[string]*sdktrace.TracerProvider

	flushOnce sync.Once
	flushErr  error
}

// config is what the command line sets.
type config struct {
	otlpOut string // write the spans here as OTLP JSON lines
	logsOut string // write the log lines here as JSON lines
}

func newTelemetry(ctx context.Context, cfg config) (t *telemetry, err error) {
	t = &telemetry{spans: tracetest.NewSpanRecorder(), logs: &syncBuffer{}, tps: map[string]*sdktrace.TracerProvider{}}
	defer func() {
		if err != nil {
			for _, f := range t.files {
				_ = f.Close()
			}
		}
	}()
	var logs io.Writer = t.logs
	if cfg.otlpOut != "" {
		f, err := os.Create(cfg.otlpOut)
		if err != nil {
			return nil, fmt.Errorf("--otlp-out: %w", err)
		}
		t.files = append(t.files, f)
		t.otlpFile = journey.NewOTLPWriter(f)
	}
	if cfg.logsOut != "" {
		f, err := os.Create(cfg.logsOut)
		if err != nil {
			return nil, fmt.Errorf("--logs-out: %w", err)
		}
		t.files = append(t.files, f)
		logs = io.MultiWriter(t.logs, f)
	}
	t.endpoint = os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if t.endpoint == "" {
		t.endpoint = os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	if t.endpoint != "" {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("OTLP exporter for %s: %w", t.endpoint, err)
		}
		t.exp = &sharedExporter{next: exp, accepted: map[trace.SpanID]bool{}}
	}
	// Every line goes to the buffer as JSON, so the demo can find the
	// session's lines afterwards the way `grep <session>` would.
	t.log = slog.New(carrier.NewLogHandler(slog.NewJSONHandler(logs, nil), "tenant"))
	return t, nil
}

// service returns the tracer provider of one simulated service, so spans
// show which service made them (service.name on the resource).
func (t *telemetry) service(name string) trace.TracerProvider {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tp, ok := t.tps[name]; ok {
		return tp
	}
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(name))),
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()),
		sdktrace.WithSpanProcessor(t.spans),
	}
	if t.exp != nil {
		opts = append(opts, sdktrace.WithBatcher(t.exp))
	}
	if t.otlpFile != nil {
		opts = append(opts, sdktrace.WithSyncer(t.otlpFile))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	t.tps[name] = tp
	return tp
}

// flush shuts every tracer provider down, which exports what their batchers
// hold, and then the OTLP exporter. Only the first call does the work; every
// call returns its result.
func (t *telemetry) flush(ctx context.Context) error {
	t.flushOnce.Do(func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		var errs []error
		for name, tp := range t.tps {
			if err := tp.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("flush the spans of %s: %w", name, err))
			}
		}
		if t.exp != nil {
			if err := t.exp.next.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("shut the OTLP exporter down: %w", err))
			}
		}
		// Every provider has written its spans (and every service has
		// stopped logging): the files are complete.
		for _, f := range t.files {
			if err := f.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", f.Name(), err))
			}
		}
		t.flushErr = errors.Join(errs...)
	})
	return t.flushErr
}

// exported returns how many of spans the OTLP endpoint accepted, and the
// export errors seen, if any.
func (t *telemetry) exported(spans []sdktrace.ReadOnlySpan) (int, error) {
	t.exp.mu.Lock()
	defer t.exp.mu.Unlock()
	n := 0
	for _, s := range spans {
		if t.exp.accepted[s.SpanContext().SpanID()] {
			n++
		}
	}
	return n, errors.Join(t.exp.errs...)
}

// sharedExporter is the OTLP exporter as every tracer provider sees it: it
// records which spans the endpoint accepted and which exports failed, and
// its Shutdown leaves the exporter running for the other providers.
type sharedExporter struct {
	next sdktrace.SpanExporter

	mu       sync.Mutex
	accepted map[trace.SpanID]bool
	errs     []error
}

func (e *sharedExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.next.ExportSpans(ctx, spans)
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		// A partial success is an error too: the endpoint rejected some of
		// the batch and does not say which, so none of it counts.
		if len(e.errs) < 5 {
			e.errs = append(e.errs, err)
		}
		return err
	}
	for _, s := range spans {
		e.accepted[s.SpanContext().SpanID()] = true
	}
	return nil
}

// Shutdown does nothing: telemetry.flush shuts the exporter down after the
// last provider.
func (e *sharedExporter) Shutdown(context.Context) error { return nil }

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
