package jobs_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
)

// newRunner returns a runner recording into a fresh SDK. It is shut down
// after t, unless the test already did.
func newRunner(t *testing.T, cfg jobs.Config, opts ...tracebridge.Option) (*jobs.Runner, *testenv.Telemetry) {
	t.Helper()
	tel := testenv.NewTelemetry(t)
	opts = append([]tracebridge.Option{tracebridge.WithTracerProvider(tel.TracerProvider),
		tracebridge.WithMeterProvider(tel.MeterProvider)}, opts...)
	r := jobs.New(cfg, opts...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = r.Shutdown(ctx)
	})
	return r, tel
}

// journey returns a request context with a root span, a session, baggage
// and a private value that must not reach any job.
func journey(t *testing.T, tel *testenv.Telemetry, session, user string) (context.Context, trace.Span) {
	t.Helper()
	m, err := baggage.NewMember("user", user)
	if err != nil {
		t.Fatalf("baggage member %q: %v", user, err)
	}
	bag, _ := baggage.New(m)
	ctx := context.WithValue(context.Background(), leakKey{}, "request-private")
	ctx = baggage.ContextWithBaggage(carrier.ContextWithSession(ctx, session), bag)
	return tel.TracerProvider.Tracer("test").Start(ctx, "request")
}

type leakKey struct{}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settleGoroutines waits for the goroutine count to fall back to base.
func settleGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, baseline %d:\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
