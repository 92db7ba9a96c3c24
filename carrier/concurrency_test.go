package carrier_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// lockedBuffer is a log sink shared by every goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// TestConcurrentJourneysNoCrossTalk runs 10,000 goroutines, each with its
// own session, trace and baggage, through one shared Propagator (inject,
// extract twice so the second hits the cache) and one shared slog handler.
// Every extracted context and every log line must carry exactly its own
// goroutine's journey. Run under -race.
func TestConcurrentJourneysNoCrossTalk(t *testing.T) {
	const n = 10000
	// The race detector allows 8128 live goroutines; this keeps fewer alive
	// at once while still running all n concurrently with one another.
	const inFlight = 2000
	p, d := newProp(t)
	var sink lockedBuffer
	logger := slog.New(carrier.NewLogHandler(slog.NewJSONHandler(&sink, nil), "journey"))

	journey := func(i int) (trace.SpanContext, string, string) {
		var cfg trace.SpanContextConfig
		binary.BigEndian.PutUint64(cfg.TraceID[8:], uint64(i)+1)
		binary.BigEndian.PutUint64(cfg.SpanID[:], uint64(i)+1)
		cfg.TraceFlags = trace.FlagsSampled
		ts, _ := trace.ParseTraceState(fmt.Sprintf("vendor=%d", i))
		cfg.TraceState = ts
		return trace.NewSpanContext(cfg), fmt.Sprintf("sess-%d", i), fmt.Sprintf("j%d", i)
	}

	errs := make(chan string, 100)
	report := func(format string, args ...any) {
		select {
		case errs <- fmt.Sprintf(format, args...):
		default:
		}
	}
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sc, sess, j := journey(i)
			m, _ := baggage.NewMemberRaw("journey", j)
			bag, _ := baggage.New(m)
			ctx := carrier.ContextWithSession(baggage.ContextWithBaggage(
				trace.ContextWithRemoteSpanContext(context.Background(), sc), bag), sess)
			c := &kafkaHeaders{}
			p.Inject(ctx, c)
			for range 2 {
				got := p.Extract(context.Background(), c)
				gsc := trace.SpanContextFromContext(got)
				if gsc.TraceID() != sc.TraceID() || gsc.SpanID() != sc.SpanID() || gsc.TraceState().Get("vendor") != fmt.Sprint(i) {
					report("goroutine %d: span context %v, want %v", i, gsc, sc)
				}
				if s := carrier.SessionFromContext(got); s != sess {
					report("goroutine %d: session %q, want %q", i, s, sess)
				}
				if b := baggage.FromContext(got); b.Member("journey").Value() != j || b.Len() != 2 {
					report("goroutine %d: baggage %q", i, bagString(b))
				}
				logger.InfoContext(got, "step", "i", i)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}

	lines := strings.Split(strings.TrimSpace(sink.b.String()), "\n")
	if len(lines) != 2*n {
		t.Fatalf("%d log lines, want %d", len(lines), 2*n)
	}
	seen := make([]int, n)
	for _, line := range lines {
		var rec struct {
			I       int    `json:"i"`
			TraceID string `json:"trace_id"`
			SpanID  string `json:"span_id"`
			Session string `json:"session.id"`
			Journey string `json:"baggage.journey"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		sc, sess, j := journey(rec.I)
		if rec.TraceID != sc.TraceID().String() || rec.SpanID != sc.SpanID().String() || rec.Session != sess || rec.Journey != j {
			t.Fatalf("log line of goroutine %d carries another journey: %s", rec.I, line)
		}
		seen[rec.I]++
	}
	for i, c := range seen {
		if c != 2 {
			t.Fatalf("goroutine %d logged %d lines", i, c)
		}
	}
	if c := d.counts(t); len(c) != 0 {
		t.Fatalf("drops %v", c)
	}
}
