package kafkaqueue_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/jobs/kafkaqueue"
)

// Jobs in a Kafka topic: run this in the web process to enqueue, and the
// same with Register in as many worker processes as the topic has
// partitions.
func Example() {
	q, err := kafkaqueue.New(kafkaqueue.Config{Brokers: []string{"127.0.0.1:9092"}, Topic: "emails"})
	if err != nil {
		log.Fatal(err)
	}
	r := jobs.New(jobs.Config{Queue: q})
	_ = r.Register("welcome", func(ctx context.Context, j *jobs.Job) error {
		fmt.Printf("sending %s (attempt %d)\n", j.Payload, j.Attempt)
		return nil
	})
	if _, err := r.Enqueue(context.Background(), "welcome", []byte("ada@example.com")); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = r.Shutdown(ctx)
}
