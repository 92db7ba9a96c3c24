package journeytest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/journey"
	"github.com/tracebridge/tracebridge/journeytest"
)

// printT stands in for the test's *testing.T: it prints the first line of
// each failure (the rest draws the journey).
type printT struct{}

func (printT) Helper() {}

func (printT) Errorf(format string, args ...any) {
	first, _, _ := strings.Cut(fmt.Sprintf(format, args...), "\n")
	fmt.Println("FAIL:", first)
}

// In a test, install the recorder in the tracer provider the system under
// test uses, run it, wait for the journey, and assert on it.
func Example() {
	rec := journeytest.NewRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()),
		sdktrace.WithSpanProcessor(rec))
	runner := jobs.New(jobs.Config{}, tracebridge.WithTracerProvider(tp),
		tracebridge.WithRetry(3, time.Millisecond, 10*time.Millisecond))
	defer runner.Shutdown(context.Background())
	var tries atomic.Int32
	_ = runner.Register("send-receipt", func(context.Context, *jobs.Job) error {
		if tries.Add(1) == 1 {
			return errors.New("mail server busy")
		}
		return nil
	})
	const session = "0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a"
	ctx, span := tp.Tracer("shop").Start(carrier.ContextWithSession(context.Background(), session), "checkout")
	_, _ = runner.Enqueue(ctx, "send-receipt", []byte("order-42"))
	span.End()

	var t journeytest.T = printT{} // in a test: t, the *testing.T
	j := rec.Await(session, 10*time.Second, func(j *journey.Journey) bool {
		return len(j.Retries) == 1 && j.Retries[0].Outcome == journey.Succeeded
	})
	fmt.Println(journeytest.Whole(t, j), journeytest.OneSession(t, j), journeytest.RetryChain(t, j, "process jobs", 2))
	fmt.Println(journeytest.Crosses(t, j, "tracebridge.jobs", "kafka"))
	// Output:
	// true true true
	// FAIL: journey of session 0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a does not cross kafka: it crosses tracebridge.jobs
	// false
}
