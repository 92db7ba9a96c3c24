package jobs_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/jobs"
)

// Go keeps the starter's journey after the starter's context is
// cancelled, records a child span linked to the starter, and Shutdown
// waits for it.
func TestGoKeepsJourneyAndShutdownWaits(t *testing.T) {
	base := runtime.NumGoroutine()
	r, tel := newRunner(t, jobs.Config{})
	ctx, root := journey(t, tel, "sess-go", "u9")
	ctx, cancel := context.WithCancel(ctx)
	var finished atomic.Bool
	type seen struct {
		session, user string
		traceID       trace.TraceID
		err           error
		leaked        bool
	}
	got := make(chan seen, 1)
	err := r.Go(ctx, "warm cache", func(ctx context.Context) error {
		time.Sleep(50 * time.Millisecond) // the starter is long gone by now
		got <- seen{carrier.SessionFromContext(ctx), baggage.FromContext(ctx).Member("user").Value(),
			trace.SpanContextFromContext(ctx).TraceID(), ctx.Err(), ctx.Value(leakKey{}) != nil}
		finished.Store(true)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	root.End()
	if _, err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("Shutdown returned before the Go task finished")
	}
	s := <-got
	if s.session != "sess-go" || s.user != "u9" || s.traceID != root.SpanContext().TraceID() || s.err != nil || s.leaked {
		t.Fatalf("Go task saw %+v", s)
	}
	spans := tel.Named("warm cache")
	if len(spans) != 1 {
		t.Fatalf("%d task spans, want 1", len(spans))
	}
	sp := spans[0]
	if sp.Parent().SpanID() != root.SpanContext().SpanID() || sp.SpanContext().TraceID() != root.SpanContext().TraceID() {
		t.Fatal("task span is not a child of its starter")
	}
	if len(sp.Links()) != 1 || sp.Links()[0].SpanContext.SpanID() != root.SpanContext().SpanID() ||
		sp.Links()[0].Attributes[0].Value.AsString() != msgtrace.LinkStarter {
		t.Fatalf("task span links %v, want one starter link", sp.Links())
	}
	if err := r.Go(context.Background(), "late", func(context.Context) error { return nil }); !errors.Is(err, jobs.ErrClosed) {
		t.Fatalf("Go after Shutdown: %v, want ErrClosed", err)
	}
	settleGoroutines(t, base)
}

// A Go task's panic is recovered and recorded with its stack; errors are
// recorded; the runner goes on.
func TestGoRecoversPanics(t *testing.T) {
	r, tel := newRunner(t, jobs.Config{})
	if err := r.Go(context.Background(), "explode", func(context.Context) error { panicInTask(); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := r.Go(context.Background(), "fail", func(context.Context) error { return errors.New("upstream 503") }); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"explode": "panicInTask", "fail": "upstream 503"} {
		spans := tel.Named(name)
		if len(spans) != 1 || spans[0].Status().Code != codes.Error {
			t.Fatalf("%s: %d spans, want 1 with status Error", name, len(spans))
		}
		var text string
		for _, ev := range spans[0].Events() {
			for _, kv := range ev.Attributes {
				text += kv.Value.String()
			}
		}
		if !strings.Contains(text, want) {
			t.Fatalf("%s: span events do not mention %q", name, want)
		}
	}
}

func panicInTask() { panic("boom") }

// At Shutdown's deadline a Go task's context is cancelled.
func TestGoCancelledAtShutdownDeadline(t *testing.T) {
	r, _ := newRunner(t, jobs.Config{})
	cancelled := make(chan error, 1)
	_ = r.Go(context.Background(), "long", func(ctx context.Context) error {
		<-ctx.Done()
		cancelled <- ctx.Err()
		return ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("task context ended with %v", err)
		}
	default:
		t.Fatal("Shutdown returned before the cancelled task did")
	}
}
