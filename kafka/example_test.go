package kafka_test

import (
	"context"
	"fmt"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/kafka"
)

// A producer writes under a session; the Consumer's handler sees it.
func Example() {
	brokers, stop, err := testenv.StartKafka()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	w := kafka.NewWriter(&kafkago.Writer{Addr: kafkago.TCP(brokers...), Topic: "orders",
		AllowAutoTopicCreation: true, BatchTimeout: time.Millisecond})
	ctx := carrier.ContextWithSession(context.Background(), "session-42")
	if err := w.WriteMessages(ctx, kafkago.Message{Key: []byte("order-1"), Value: []byte(`{"total":3}`)}); err != nil {
		fmt.Println(err)
		return
	}
	_ = w.Close()

	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: brokers, GroupID: "billing", Topic: "orders",
		StartOffset: kafkago.FirstOffset, MaxWait: 50 * time.Millisecond})
	runCtx, cancel := context.WithCancel(context.Background())
	c := kafka.NewConsumer(r, func(ctx context.Context, msg kafkago.Message) error {
		fmt.Printf("%s handled in %s\n", msg.Key, carrier.SessionFromContext(ctx))
		cancel() // one message is enough for the example: shut down gracefully
		return nil
	})
	if err := c.Run(runCtx); err != nil {
		fmt.Println(err)
	}
	// Output: order-1 handled in session-42
}
