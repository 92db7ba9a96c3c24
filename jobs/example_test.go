package jobs_test

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/baggage"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/jobs"
)

// A job enqueued during a request keeps the request's session and baggage
// after the request's context is cancelled, and is retried until it works.
func Example() {
	r := jobs.New(jobs.Config{}, tracebridge.WithConcurrency(1))
	done := make(chan struct{})
	_ = r.Register("greet", func(ctx context.Context, job *jobs.Job) error {
		if job.Attempt < 2 {
			return fmt.Errorf("greet %s: mail server busy", job.Payload)
		}
		fmt.Printf("attempt %d: hello %s (session %s, plan %s)\n", job.Attempt, job.Payload,
			carrier.SessionFromContext(ctx), baggage.FromContext(ctx).Member("plan").Value())
		close(done)
		return nil
	}, jobs.WithBackoff(time.Millisecond, 10*time.Millisecond))

	plan, _ := baggage.NewMember("plan", "gold")
	bag, _ := baggage.New(plan)
	req, cancel := context.WithCancel(baggage.ContextWithBaggage(
		carrier.ContextWithSession(context.Background(), "s-42"), bag))
	if _, err := r.Enqueue(req, "greet", []byte("ada")); err != nil {
		fmt.Println(err)
	}
	cancel() // the request ends; the job does not

	<-done
	unrun, err := r.Shutdown(context.Background())
	fmt.Println(len(unrun), err)
	// Output:
	// attempt 2: hello ada (session s-42, plan gold)
	// 0 <nil>
}
