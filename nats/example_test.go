package nats_test

import (
	"context"
	"fmt"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// Example publishes to JetStream under a session and consumes the message
// in a handler that sees the same session; the process span is a child of
// the publish's send span.
func Example() {
	url, stop, err := testenv.StartNATS("") // an embedded JetStream server
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	nc, err := natsgo.Connect(url)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	js, err := tnats.NewJetStream(nc, nil) // jetstream.New, traced
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	cons, _ := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "billing", AckPolicy: jetstream.AckExplicitPolicy})

	if _, err := js.Publish(carrier.ContextWithSession(ctx, "sess-42"), "orders", []byte("order 1")); err != nil {
		fmt.Println(err)
		return
	}

	done := make(chan struct{})
	c := tnats.NewConsumer(js.JetStream, cons)
	cc, _ := c.Consume(func(ctx context.Context, m jetstream.Msg) error {
		fmt.Printf("%s for session %s\n", m.Data(), carrier.SessionFromContext(ctx))
		close(done)
		return nil // acks
	})
	defer cc.Stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		fmt.Println("timeout")
	}
	// Output: order 1 for session sess-42
}
