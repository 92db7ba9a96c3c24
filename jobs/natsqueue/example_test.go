package natsqueue_test

import (
	"context"
	"fmt"
	"log"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/jobs/natsqueue"
)

// A runner whose jobs live in a JetStream stream: any process that opens
// the same stream runs them. The example starts an embedded server.
func Example() {
	srv, err := testenv.StartNATSServer(testenv.NATSConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := natsgo.Connect(srv.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	q, err := natsqueue.New(ctx, js, natsqueue.Config{Stream: "emails"})
	if err != nil {
		log.Fatal(err)
	}

	r := jobs.New(jobs.Config{Queue: q})
	done := make(chan struct{})
	_ = r.Register("welcome", func(ctx context.Context, j *jobs.Job) error {
		fmt.Printf("sending %s (attempt %d)\n", j.Payload, j.Attempt)
		close(done)
		return nil
	})
	if _, err := r.Enqueue(ctx, "welcome", []byte("ada@example.com")); err != nil {
		log.Fatal(err)
	}
	<-done
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _ = r.Shutdown(sctx)
	// Output: sending ada@example.com (attempt 1)
}
