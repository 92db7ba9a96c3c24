// Command jobs shows the tracebridge job runner: a job enqueued from a
// request keeps the request's trace, session and baggage, but not its
// cancellation, and a failed attempt is retried with backoff.
//
//	go run ./examples/jobs
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/jobs"
)

func main() {
	// Sample every span, and stamp session.id on the spans started under a
	// session. The example prints IDs, so it configures no exporter.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()))
	defer tp.Shutdown(context.Background())
	runner := jobs.New(jobs.Config{}, tracebridge.WithTracerProvider(tp),
		tracebridge.WithRetry(3, 100*time.Millisecond, time.Second))
	done := make(chan struct{})
	if err := runner.Register("send-receipt", func(ctx context.Context, j *jobs.Job) error {
		fmt.Printf("attempt %d of %s under trace %s, session %s, request cancelled: %v\n", j.Attempt, j.Payload,
			trace.SpanContextFromContext(ctx).TraceID(), carrier.SessionFromContext(ctx), ctx.Err() != nil)
		if j.Attempt == 1 {
			return errors.New("mail server busy")
		}
		close(done)
		return nil
	}); err != nil {
		log.Fatal(err)
	}

	// A request: its context ends as soon as the job is enqueued.
	req, cancel := context.WithCancel(carrier.ContextWithSession(context.Background(), carrier.NewSessionID()))
	req, span := tp.Tracer("example").Start(req, "POST /orders")
	if _, err := runner.Enqueue(req, "send-receipt", []byte("order-1")); err != nil {
		log.Fatal(err)
	}
	span.End()
	cancel()
	fmt.Printf("enqueued under trace %s, then the request ended\n", span.SpanContext().TraceID())

	<-done
	if unrun, err := runner.Shutdown(context.Background()); err != nil || len(unrun) > 0 {
		log.Fatalf("shutdown: %v, %d jobs not run", err, len(unrun))
	}
}
