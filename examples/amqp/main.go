// Command amqp shows the tracebridge RabbitMQ wrappers over a connection the
// program dials itself: a confirmed publish under a session on the
// program's own channel, and a consumer on the same connection whose handler
// fails once, is retried through a delay queue, and continues the same trace
// and session. It needs RabbitMQ at AMQP_URL (default
// amqp://guest:guest@127.0.0.1:5672/).
//
//	go run ./examples/amqp
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/url"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/examples/demoenv"
)

func main() {
	// Demo scaffolding: in your program, this is your broker's URL.
	amqpURL := demoenv.AMQPURL()

	// The connection and channel the program already has.
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		u, _ := url.Parse(amqpURL)
		log.Fatalf("RabbitMQ not reachable at %s (%v): start one with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`, or set AMQP_URL",
			u.Redacted(), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	// A queue of its own per run, deleted at the end with its delay queue.
	queue := fmt.Sprintf("example.payments.%d", time.Now().UnixNano())
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		log.Fatal(err)
	}
	defer func() {
		_, _ = ch.QueueDelete(queue, false, false, false)
		_, _ = ch.QueueDelete(queue+amqp.DelayQueueSuffix, false, false, false)
	}()

	// Sample every span, and stamp session.id on the spans started under a
	// session. The example prints IDs, so it configures no exporter.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()))
	defer tp.Shutdown(context.Background())

	// The consumer loop over the program's connection. It opens a channel of
	// its own on conn; with a redial func (nil here) it would also survive
	// the loss of conn.
	done := make(chan struct{})
	var attempts atomic.Int32
	consumer := amqp.NewConsumerOn(conn, nil, queue, nil, func(ctx context.Context, d amqp091.Delivery) error {
		n := attempts.Add(1)
		fmt.Printf("attempt %d of %s under trace %s, session %s\n", n, d.Body,
			trace.SpanContextFromContext(ctx).TraceID(), carrier.SessionFromContext(ctx))
		if n == 1 {
			return errors.New("card processor timeout") // retried through the delay queue
		}
		close(done)
		return nil // acked
	}, tracebridge.WithTracerProvider(tp), tracebridge.WithRetry(3, 200*time.Millisecond, time.Second))
	runCtx, stop := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- consumer.Run(runCtx) }()

	// The one-line change on the publishing side: ch.PublishWithContext
	// becomes pub.PublishWithContext, with the same arguments.
	pub, err := amqp.NewPublisher(ch, tracebridge.WithConfirms(), tracebridge.WithTracerProvider(tp))
	if err != nil {
		log.Fatal(err)
	}
	ctx, span := tp.Tracer("example").Start(carrier.ContextWithSession(context.Background(), carrier.NewSessionID()), "checkout")
	msg := amqp091.Publishing{MessageId: "order-1", DeliveryMode: amqp091.Persistent, Body: []byte("order-1")}
	if err := pub.PublishWithContext(ctx, "", queue, true, false, msg); err != nil {
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
	if err := <-stopped; err != nil {
		log.Print(err)
	}
}
