// Command nats shows the tracebridge NATS wrappers: a JetStream publish under
// a session, and a consumer whose handler fails once, is redelivered with
// backoff, and continues the same trace and session on attempt 2. It uses
// the server at NATS_URL, or starts an embedded one with JetStream when that
// is not set.
//
//	go run ./examples/nats
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/examples/demoenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

func main() {
	// Demo scaffolding: in your program, this is your server's URL.
	url, _, stop, err := demoenv.NATS()
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	nc, err := natsgo.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	raw, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	name := fmt.Sprintf("EXAMPLE_%d", time.Now().UnixNano())
	st, err := raw.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}})
	if err != nil {
		log.Fatal(err)
	}
	defer raw.DeleteStream(ctx, name)
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "billing", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		log.Fatal(err)
	}
	// Sample every span, and stamp session.id on the spans started under a
	// session. The example prints IDs, so it configures no exporter.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(carrier.NewSessionSpanProcessor()))
	defer tp.Shutdown(ctx)

	// The one-line change: tnats.WrapJetStream around your jetstream.JetStream.
	js := tnats.WrapJetStream(raw, tracebridge.WithTracerProvider(tp))
	pctx, span := tp.Tracer("example").Start(carrier.ContextWithSession(ctx, carrier.NewSessionID()), "checkout")
	if _, err := js.Publish(pctx, name+".orders", []byte("order-1")); err != nil {
		log.Fatal(err)
	}
	span.End()
	fmt.Printf("published under trace %s, session %s\n", span.SpanContext().TraceID(), carrier.SessionFromContext(pctx))

	done := make(chan struct{})
	attempts := 0
	cc, err := tnats.NewConsumer(raw, cons, tracebridge.WithTracerProvider(tp),
		tracebridge.WithRetry(3, 200*time.Millisecond, time.Second)).Consume(
		func(ctx context.Context, m jetstream.Msg) error {
			attempts++
			fmt.Printf("attempt %d of %s under trace %s, session %s\n", attempts, m.Data(),
				trace.SpanContextFromContext(ctx).TraceID(), carrier.SessionFromContext(ctx))
			if attempts == 1 {
				return errors.New("inventory service unavailable") // NakWithDelay, redelivered
			}
			close(done)
			return nil // Ack
		})
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Stop()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		log.Fatal("no delivery within 30s")
	}
}
