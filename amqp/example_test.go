package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// Example publishes an order on a session and handles it with a Consumer
// that retries through a delay queue and dead-letters after three
// attempts. It needs RabbitMQ at AMQP_URL (default localhost), so it is
// compiled but not run by go test; the package's tests cover the same
// flow against the broker.
func Example() {
	url := testenv.AMQPURL()
	queue := fmt.Sprintf("example.orders.%d", time.Now().UnixNano())
	setup := func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	}

	handled := make(chan string, 1)
	consumer := amqp.NewConsumer(url, queue, setup, func(ctx context.Context, d amqp091.Delivery) error {
		if len(d.Body) == 0 {
			return tracebridge.Permanent(errors.New("empty order")) // straight to the dead letters
		}
		handled <- fmt.Sprintf("handled %s in session %s", d.MessageId, carrier.SessionFromContext(ctx))
		return nil
	}, tracebridge.WithConcurrency(4), tracebridge.WithRetry(3, 100*time.Millisecond, 5*time.Second),
		tracebridge.WithDeadLetter(queue+".dlq"))
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- consumer.Run(ctx) }()

	pub, err := amqp.DialPublisher(url, tracebridge.WithConfirms(), tracebridge.WithReconnectWait(5*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pub.Close()
	sctx := carrier.ContextWithSession(context.Background(), "checkout-42")
	if err := pub.PublishWithContext(sctx, "", queue, true, false, amqp091.Publishing{
		MessageId: "order-1", DeliveryMode: amqp091.Persistent, Body: []byte(`{"sku":"A1"}`),
	}); err != nil {
		// A mandatory publish can race the consumer's first declare.
		_ = setupOnce(url, setup)
		_ = pub.PublishWithContext(sctx, "", queue, true, false, amqp091.Publishing{
			MessageId: "order-1", DeliveryMode: amqp091.Persistent, Body: []byte(`{"sku":"A1"}`)})
	}
	fmt.Println(<-handled)
	stop()
	<-done
	_ = cleanup(url, queue, queue+".retry", queue+".dlq")
}

func setupOnce(url string, setup amqp.Setup) error {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	return setup(ch)
}

func cleanup(url string, queues ...string) error {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	for _, q := range queues {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
	return nil
}
