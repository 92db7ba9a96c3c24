package journey_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/journey"
)

// A checkout enqueues a job that fails once and succeeds on its retry; the
// journey of the checkout's session shows the retry chain.
func Example() {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()),
		sdktrace.WithSpanProcessor(rec))
	runner := jobs.New(jobs.Config{}, tracebridge.WithTracerProvider(tp),
		tracebridge.WithRetry(3, time.Millisecond, 10*time.Millisecond))
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
	_, _ = runner.Shutdown(context.Background()) // runs every job, retries included

	j := journey.Assemble(session, journey.FromSDKSpans(rec.Ended()))
	fmt.Println("spans:", len(j.Spans), "traces:", len(j.Traces), "whole:", j.Whole())
	fmt.Println("crosses:", j.Systems)
	for _, c := range j.Retries {
		fmt.Printf("%s: %d attempts, linked: %v, %s\n", c.Name, len(c.Attempts), c.Linked, c.Outcome)
	}
	// j.Draw(os.Stdout) draws the waterfall, j.Describe(os.Stdout) the
	// retry chains and the critical path.

	// Output:
	// spans: 4 traces: 1 whole: true
	// crosses: [tracebridge.jobs]
	// process jobs: 2 attempts, linked: true, succeeded
}
