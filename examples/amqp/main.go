// Command amqp shows the tracebridge RabbitMQ wrappers: a confirmed publish
// under a session, and a Consumer whose handler fails once, is retried
// through a delay queue, and continues the same trace and session. It needs
// RabbitMQ at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/).
//
//	go run ./examples/amqp
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/examples/internal/demo"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

func main() {
	url := testenv.AMQPURL()
	if err := testenv.Reachable(url, "5672"); err != nil {
		log.Fatalf("RabbitMQ not reachable (%v): start one with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`", err)
	}
	tp := demo.TracerProvider()
	queue := fmt.Sprintf("example.payments.%d", time.Now().UnixNano())
	setup := func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	}

	done := make(chan struct{})
	attempts := 0
	consumer := amqp.NewConsumer(url, queue, setup, func(ctx context.Context, d amqp091.Delivery) error {
		attempts++
		fmt.Printf("attempt %d of %s under trace %s, session %s\n", attempts, d.Body,
			trace.SpanContextFromContext(ctx).TraceID(), carrier.SessionFromContext(ctx))
		if attempts == 1 {
			return errors.New("card processor timeout") // retried through the delay queue
		}
		close(done)
		return nil // acked
	}, tracebridge.WithTracerProvider(tp), tracebridge.WithRetry(3, 200*time.Millisecond, time.Second))
	runCtx, stop := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- consumer.Run(runCtx) }()

	// The one-line change: amqp.DialPublisher (or NewPublisher around your channel).
	pub, err := amqp.DialPublisher(url, tracebridge.WithConfirms(), tracebridge.WithTracerProvider(tp))
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	ctx, span := tp.Tracer("example").Start(carrier.ContextWithSession(context.Background(), carrier.NewSessionID()), "checkout")
	msg := amqp091.Publishing{MessageId: "order-1", DeliveryMode: amqp091.Persistent, Body: []byte("order-1")}
	for range 50 { // the consumer declares the queue; a mandatory publish before that is returned
		if err = pub.PublishWithContext(ctx, "", queue, true, false, msg); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		log.Fatal(err)
	}
	span.End()
	fmt.Printf("published under trace %s, session %s\n", span.SpanContext().TraceID(), carrier.SessionFromContext(ctx))

	select {
	case <-done:
	case <-time.After(30 * time.Second):
		log.Fatal("no delivery within 30s")
	}
	stop()
	if err := <-stopped; err != nil && !errors.Is(err, context.Canceled) {
		log.Print(err)
	}
	if conn, err := amqp091.Dial(url); err == nil {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
			_, _ = ch.QueueDelete(queue+amqp.DelayQueueSuffix, false, false, false)
		}
		conn.Close()
	}
}
