package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp091 "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/kafka"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// order is what travels through the journey.
type order struct {
	ID    string  `json:"id"`
	Total float64 `json:"total"`
}

// demo holds the wiring of one run: the brokers, the services' producers
// and the channels the last hop reports on.
type demo struct {
	tel     *telemetry
	run     string // suffix that keeps this run's topics and queues apart
	kafkaW  *kafka.Writer
	pub     *amqp.Publisher // nil without RabbitMQ
	js      *tnats.JetStream
	subject string
	jobs    *jobs.Runner
	done    chan struct{}
	payFail atomic.Int32
}

func run(ctx context.Context) error {
	tel, err := newTelemetry(ctx)
	if err != nil {
		return err
	}
	defer tel.shutdown(context.Background())
	d := &demo{tel: tel, run: fmt.Sprint(time.Now().UnixNano() % 1e9), done: make(chan struct{})}

	fmt.Println("tracebridge journey demo: HTTP → Kafka → RabbitMQ → NATS JetStream → background job")
	fmt.Println()

	// Kafka: KAFKA_BROKERS, or an in-process broker speaking the real protocol.
	brokers, stopKafka, err := testenv.KafkaFromEnv()
	if err != nil {
		return err
	}
	defer stopKafka()
	fmt.Printf("  Kafka     %s%s\n", strings.Join(brokers, ","), ifEnv("KAFKA_BROKERS", "", " (embedded kfake)"))

	// NATS: NATS_URL, or an embedded JetStream server.
	natsURL := os.Getenv("NATS_URL")
	if natsURL == "" {
		u, stop, err := testenv.StartNATS("")
		if err != nil {
			return err
		}
		defer stop()
		natsURL = u
	}
	fmt.Printf("  NATS      %s%s\n", natsURL, ifEnv("NATS_URL", "", " (embedded)"))

	// RabbitMQ: only if one is reachable.
	amqpURL := testenv.AMQPURL()
	haveRabbit := testenv.Reachable(amqpURL, "5672") == nil
	if haveRabbit {
		fmt.Printf("  RabbitMQ  %s\n", redacted(amqpURL))
	} else {
		fmt.Printf("  RabbitMQ  not reachable at %s: skipping the RabbitMQ hop.\n", redacted(amqpURL))
		fmt.Println("            Start one with `rabbitmq-server -detached`, `docker compose up -d rabbitmq`,")
		fmt.Println("            or point AMQP_URL at yours, to see the full journey.")
	}
	fmt.Println()

	stopAll, err := d.start(ctx, brokers, natsURL, amqpURL, haveRabbit)
	if err != nil {
		return err
	}

	// The checkout request, from a client outside the system.
	edge, err := d.serveHTTP()
	if err != nil {
		return err
	}
	defer edge.Close()
	// A new client sends no session: the edge starts one and answers
	// with it (an untrusted edge accepts only sessions it issued).
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+edge.Addr+"/checkout", strings.NewReader(`{"total":42.5}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("checkout request: %w", err)
	}
	session := resp.Header.Get(carrier.DefaultSessionHeader)
	var accepted struct{ TraceID string }
	_ = json.NewDecoder(resp.Body).Decode(&accepted)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("checkout request: status %s", resp.Status)
	}

	select {
	case <-d.done:
	case <-ctx.Done():
		return fmt.Errorf("waiting for the label job: %w", ctx.Err())
	}
	stopAll() // ends every consumer, so every span of the journey has ended

	traceID, err := trace.TraceIDFromHex(accepted.TraceID)
	if err != nil {
		return fmt.Errorf("trace ID from the edge: %w", err)
	}
	spans := tel.trace(traceID)
	fmt.Printf("session %s   trace %s   %d spans\n\n", session, traceID, len(spans))
	printWaterfall(os.Stdout, spans)

	others, retryLink := 0, false
	for _, s := range tel.spans.Ended() {
		if attrMap(s.Attributes())["session.id"] == session && s.SpanContext().TraceID() != traceID {
			others++
		}
		for _, l := range s.Links() {
			retryLink = retryLink || attrMap(l.Attributes)["tracebridge.link.type"] == "previous_attempt"
		}
	}
	fmt.Printf("\nLog lines of session %s (found by session ID, as grep would):\n", session)
	lines := tel.printSessionLogs(os.Stdout, session)
	fmt.Printf("\n%d spans on one trace, %d spans of this session on other traces, retry linked to its previous attempt: %v, %d log lines\n",
		len(spans), others, retryLink, lines)
	if others != 0 || !retryLink {
		return errors.New("the journey is not whole")
	}
	if tel.otlp != nil {
		fmt.Println("Exported over OTLP: search Jaeger (http://localhost:16686) for tag session.id=" + session)
	}
	return nil
}

// serveHTTP starts the web service: the HTTP edge that starts the journey.
func (d *demo) serveHTTP() (*http.Server, error) {
	tp := d.tel.service("web")
	log := d.tel.log.With("service", "web")
	mux := http.NewServeMux()
	mux.HandleFunc("POST /checkout", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		// The tenant comes from the authenticated user, not from the client's
		// headers: the edge is untrusted, so client baggage was dropped.
		m, _ := baggage.NewMemberRaw("tenant", "acme")
		b, _ := baggage.FromContext(ctx).SetMember(m)
		ctx = baggage.ContextWithBaggage(ctx, b)
		o := order{ID: "order-" + d.run, Total: 42.5}
		body, _ := json.Marshal(o)
		log.InfoContext(ctx, "checkout accepted", "order", o.ID)
		if err := d.kafkaW.WriteMessages(ctx, kafkago.Message{Key: []byte(o.ID), Value: body}); err != nil {
			log.ErrorContext(ctx, "write order", "error", err)
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]string{"TraceID": trace.SpanContextFromContext(ctx).TraceID().String()})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the HTTP edge: %w", err)
	}
	srv := &http.Server{Addr: ln.Addr().String(), Handler: carrier.Middleware(mux, carrier.WithEdgeTracerProvider(tp)),
		ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

// start wires the services: orders (Kafka consumer), payments (RabbitMQ
// consumer that fails once), shipping (JetStream consumer) and the labels
// job worker. It returns a func that stops them all.
func (d *demo) start(ctx context.Context, brokers []string, natsURL, amqpURL string, haveRabbit bool) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	topic := "checkout.orders." + d.run
	d.kafkaW = kafka.NewWriter(&kafkago.Writer{Addr: kafkago.TCP(brokers...), Topic: topic,
		AllowAutoTopicCreation: true, BatchTimeout: time.Millisecond, RequiredAcks: kafkago.RequireAll},
		tracebridge.WithTracerProvider(d.tel.service("web")))
	stops = append(stops, func() { _ = d.kafkaW.Close() })

	// Labels: the background job at the end of the journey, run in the
	// shipping service's process.
	shipTP := d.tel.service("shipping")
	d.jobs = jobs.New(jobs.Config{}, tracebridge.WithTracerProvider(shipTP))
	labelLog := d.tel.log.With("service", "shipping", "job", "print-label")
	if err := d.jobs.Register("print-label", func(ctx context.Context, j *jobs.Job) error {
		labelLog.InfoContext(ctx, "label printed", "order", string(j.Payload))
		close(d.done)
		return nil
	}); err != nil {
		return stop, err
	}
	stops = append(stops, func() { _, _ = d.jobs.Shutdown(context.Background()) })

	// Shipping: JetStream consumer that enqueues the label job.
	nc, err := natsgo.Connect(natsURL)
	if err != nil {
		return stop, fmt.Errorf("connect to NATS at %s: %w", natsURL, err)
	}
	stops = append(stops, nc.Close)
	raw, err := jetstream.New(nc)
	if err != nil {
		return stop, fmt.Errorf("JetStream: %w", err)
	}
	d.subject = "shipping." + d.run + ".requested"
	streamName := "SHIPPING_" + d.run
	st, err := raw.CreateStream(ctx, jetstream.StreamConfig{Name: streamName, Subjects: []string{"shipping." + d.run + ".>"}})
	if err != nil {
		return stop, fmt.Errorf("create stream %s: %w", streamName, err)
	}
	stops = append(stops, func() { _ = raw.DeleteStream(context.Background(), streamName) })
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "shipping", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		return stop, fmt.Errorf("create consumer on %s: %w", streamName, err)
	}
	// Payments publishes the shipment request; without RabbitMQ, orders does.
	publisher := "payments"
	if !haveRabbit {
		publisher = "orders"
	}
	d.js = tnats.WrapJetStream(raw, tracebridge.WithTracerProvider(d.tel.service(publisher)))
	shipLog := d.tel.log.With("service", "shipping")
	cc, err := tnats.NewConsumer(raw, cons, tracebridge.WithTracerProvider(shipTP),
		tracebridge.WithRetry(3, 150*time.Millisecond, time.Second)).Consume(
		func(ctx context.Context, m jetstream.Msg) error {
			// Without RabbitMQ there is no payments hop to fail once, so
			// shipping does, and the retry link still shows.
			if !haveRabbit && d.payFail.Add(1) == 1 {
				shipLog.WarnContext(ctx, "label printer offline; will retry", "order", string(m.Data()))
				return errors.New("label printer: offline")
			}
			shipLog.InfoContext(ctx, "shipment requested", "order", string(m.Data()))
			_, err := d.jobs.Enqueue(ctx, "print-label", m.Data())
			return err
		})
	if err != nil {
		return stop, fmt.Errorf("consume %s: %w", streamName, err)
	}
	stops = append(stops, cc.Stop)

	// Payments: RabbitMQ consumer whose card processor times out once.
	next := d.shipping
	if haveRabbit {
		payments := "checkout.payments." + d.run
		payTP := d.tel.service("payments")
		payLog := d.tel.log.With("service", "payments")
		setup := func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclare(payments, true, false, false, false, nil)
			return err
		}
		pc := amqp.NewConsumer(amqpURL, payments, setup, func(ctx context.Context, m amqp091.Delivery) error {
			if d.payFail.Add(1) == 1 {
				payLog.WarnContext(ctx, "card processor timed out; will retry", "order", string(m.Body))
				return errors.New("card processor: timeout")
			}
			payLog.InfoContext(ctx, "payment captured", "order", string(m.Body))
			return d.shipping(ctx, m.Body)
		}, tracebridge.WithTracerProvider(payTP), tracebridge.WithRetry(3, 150*time.Millisecond, time.Second))
		runCtx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = pc.Run(runCtx) }()
		stops = append(stops, func() {
			cancel()
			<-done
			deleteQueues(amqpURL, payments, payments+amqp.DelayQueueSuffix)
		})
		if err := setupOnce(amqpURL, setup); err != nil {
			return stop, err
		}
		d.pub, err = amqp.DialPublisher(amqpURL, tracebridge.WithConfirms(), tracebridge.WithTracerProvider(d.tel.service("orders")))
		if err != nil {
			return stop, fmt.Errorf("RabbitMQ publisher: %w", err)
		}
		stops = append(stops, func() { _ = d.pub.Close() })
		next = func(ctx context.Context, body []byte) error {
			return d.pub.PublishWithContext(ctx, "", payments, true, false, amqp091.Publishing{
				MessageId: string(body), DeliveryMode: amqp091.Persistent, Body: body})
		}
	}

	// Orders: Kafka consumer that asks payments to charge.
	ordersLog := d.tel.log.With("service", "orders")
	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: brokers, GroupID: "orders", Topic: topic,
		StartOffset: kafkago.FirstOffset, MaxWait: 50 * time.Millisecond})
	oc := kafka.NewConsumer(r, func(ctx context.Context, m kafkago.Message) error {
		var o order
		if err := json.Unmarshal(m.Value, &o); err != nil {
			return tracebridge.Permanent(fmt.Errorf("decode order: %w", err))
		}
		ordersLog.InfoContext(ctx, "order reserved", "order", o.ID)
		return next(ctx, []byte(o.ID))
	}, tracebridge.WithTracerProvider(d.tel.service("orders")))
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = oc.Run(runCtx) }()
	stops = append(stops, func() { cancel(); <-done })
	return stop, nil
}

// shipping publishes the shipment request to JetStream.
func (d *demo) shipping(ctx context.Context, orderID []byte) error {
	_, err := d.js.Publish(ctx, d.subject, orderID)
	return err
}

func setupOnce(url string, setup amqp.Setup) error {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return fmt.Errorf("dial RabbitMQ at %s: %w", redacted(url), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	return setup(ch)
}

func deleteQueues(url string, names ...string) {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return
	}
	defer conn.Close()
	if ch, err := conn.Channel(); err == nil {
		for _, n := range names {
			_, _ = ch.QueueDelete(n, false, false, false)
		}
	}
}

func ifEnv(name, set, unset string) string {
	if os.Getenv(name) != "" {
		return set
	}
	return unset
}

func redacted(raw string) string {
	if i := strings.Index(raw, "@"); i > 0 {
		if j := strings.Index(raw, "://"); j > 0 && j < i {
			if k := strings.Index(raw[j+3:i], ":"); k >= 0 {
				return raw[:j+3+k+1] + "***" + raw[i:]
			}
		}
	}
	return raw
}
