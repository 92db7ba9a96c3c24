// Command kafka shows the tracebridge Kafka wrappers in a few lines: a traced
// Writer produces under a session, and a Consumer's handler continues the
// same trace and session. It uses the brokers in KAFKA_BROKERS, or starts an
// in-process Kafka-protocol broker (kfake) when that is not set.
//
//	go run ./examples/kafka
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/examples/demoenv"
	"github.com/tracebridge/tracebridge/kafka"
)

func main() {
	// Demo scaffolding: in your program, these are your brokers' addresses.
	brokers, _, stop, err := demoenv.Kafka()
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	// Sample every span, and stamp session.id on the spans started under a
	// session. The example prints IDs, so it configures no exporter.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()))
	defer tp.Shutdown(context.Background())
	// A topic of its own per run, so a run never reads an earlier run's
	// message from a broker named in KAFKA_BROKERS.
	topic := fmt.Sprintf("example.orders.%d", time.Now().UnixNano())

	// The one-line change: kafka.NewWriter around your *kafkago.Writer.
	w := kafka.NewWriter(&kafkago.Writer{Addr: kafkago.TCP(brokers...), Topic: topic,
		AllowAutoTopicCreation: true, BatchTimeout: time.Millisecond}, tracebridge.WithTracerProvider(tp))
	defer w.Close()

	ctx, span := tp.Tracer("example").Start(carrier.ContextWithSession(context.Background(), carrier.NewSessionID()), "checkout")
	if err := w.WriteMessages(ctx, kafkago.Message{Key: []byte("order-1"), Value: []byte(`{"total":3}`)}); err != nil {
		log.Fatal(err)
	}
	span.End()
	fmt.Printf("produced under trace %s, session %s\n", span.SpanContext().TraceID(), carrier.SessionFromContext(ctx))

	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: brokers, GroupID: "billing", Topic: topic,
		StartOffset: kafkago.FirstOffset, MaxWait: 50 * time.Millisecond})
	runCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := kafka.NewConsumer(r, func(ctx context.Context, msg kafkago.Message) error {
		fmt.Printf("consumed %s under trace %s, session %s\n", msg.Key,
			trace.SpanContextFromContext(ctx).TraceID(), carrier.SessionFromContext(ctx))
		cancel() // one message is enough: stop gracefully
		return nil
	}, tracebridge.WithTracerProvider(tp), tracebridge.WithRetry(3, 100*time.Millisecond, time.Second))
	if err := c.Run(runCtx); err != nil {
		log.Fatal(err)
	}
}
