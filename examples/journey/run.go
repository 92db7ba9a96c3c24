package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
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
	"github.com/tracebridge/tracebridge/examples/demoenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/journey"
	"github.com/tracebridge/tracebridge/kafka"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// The journey's destinations: the same names on every run, so Jaeger lists
// each operation once however often the demo runs.
const (
	ordersTopic    = "checkout.orders"   // Kafka: web → orders
	ordersGroup    = "orders"            // the orders service's consumer group
	paymentsQueue  = "checkout.payments" // RabbitMQ: orders → payments
	shippingStream = "CHECKOUT_SHIPPING" // JetStream stream of shippingSubject
	shippingSubj   = "checkout.shipping" // NATS JetStream: payments → shipping
	labelJob       = "print-label"       // background job kind in shipping
)

// flushTimeout bounds the export of the spans at the end of a run. The OTLP
// exporter retries an endpoint that answers "unavailable" for up to a
// minute; the demo gives up sooner and says so.
const flushTimeout = 20 * time.Second

// order is what travels through the journey.
type order struct {
	ID    string  `json:"id"`
	Total float64 `json:"total"`
}

// demo holds the wiring of one run: the brokers, the services' producers
// and the signal that the last hop ran.
type demo struct {
	tel     *telemetry
	session string // this run's session: what keeps runs apart
	signer  *carrier.SessionSigner
	kafkaW  *kafka.Writer
	pub     *amqp.Publisher // nil without RabbitMQ
	js      *tnats.JetStream
	jobs    *jobs.Runner
	done    chan struct{}
	once    sync.Once
	payFail atomic.Int32
}

// run runs one journey and prints it to out. It fails when the journey is
// not whole or, with an OTLP endpoint, when the endpoint did not accept
// every span that was printed.
func run(ctx context.Context, out io.Writer, cfg config) (err error) {
	tel, err := newTelemetry(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		fctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
		defer cancel()
		if ferr := tel.flush(fctx); err == nil && ferr != nil {
			err = ferr
		}
	}()
	// A real edge keeps its key in configuration, shared by its instances.
	signer, err := carrier.NewSessionSigner([]byte("tracebridge journey demo edge key"))
	if err != nil {
		return err
	}
	d := &demo{tel: tel, signer: signer, session: signer.NewID(), done: make(chan struct{})}

	fmt.Fprintln(out, "tracebridge journey demo: HTTP → Kafka → RabbitMQ → NATS JetStream → background job")
	fmt.Fprintln(out)

	// Demo scaffolding: KAFKA_BROKERS and NATS_URL, or embedded brokers.
	brokers, embedded, stopKafka, err := demoenv.Kafka()
	if err != nil {
		return err
	}
	defer stopKafka()
	fmt.Fprintf(out, "  Kafka     %s%s\n", strings.Join(brokers, ","), note(embedded, " (embedded kfake)"))
	natsURL, embedded, stopNATS, err := demoenv.NATS()
	if err != nil {
		return err
	}
	defer stopNATS()
	fmt.Fprintf(out, "  NATS      %s%s\n", natsURL, note(embedded, " (embedded)"))

	// RabbitMQ: only if one is reachable. The payments queue is declared
	// before the first publish, so the mandatory publish is routed.
	amqpURL := demoenv.AMQPURL()
	rabbitErr := declarePayments(amqpURL)
	haveRabbit := rabbitErr == nil
	if haveRabbit {
		fmt.Fprintf(out, "  RabbitMQ  %s\n", redacted(amqpURL))
	} else {
		fmt.Fprintf(out, "  RabbitMQ  not usable at %s (%v): skipping the RabbitMQ hop.\n", redacted(amqpURL), rabbitErr)
		fmt.Fprintln(out, "            Start one with `rabbitmq-server -detached`, `docker compose up -d rabbitmq`,")
		fmt.Fprintln(out, "            or point AMQP_URL at yours, to see the full journey.")
	}
	if tel.endpoint != "" {
		fmt.Fprintf(out, "  OTLP      %s\n", tel.endpoint)
	}
	fmt.Fprintln(out)

	stopAll, err := d.start(ctx, brokers, natsURL, amqpURL, haveRabbit)
	if err != nil {
		return err
	}
	defer stopAll() // after an early return; a second call does nothing

	// The checkout request, from a client outside the system.
	edge, err := d.serveHTTP()
	if err != nil {
		return err
	}
	defer edge.Close()
	// The client continues a session this edge issued earlier (the demo
	// mints it with the edge's key): an untrusted edge accepts no other.
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+edge.Addr+"/checkout", strings.NewReader(`{"total":42.5}`))
	req.Header.Set(carrier.DefaultSessionHeader, d.session)
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
	if session != d.session {
		return fmt.Errorf("checkout request: the edge answered session %q, want the client's %q", session, d.session)
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
	fmt.Fprintf(out, "session %s   trace %s   %d spans\n\n", d.session, traceID, len(spans))
	j := journey.Assemble(d.session, journey.FromSDKSpans(tel.spans.Ended()))
	j.Draw(out)

	others, retryLink := len(j.Spans)-len(spans), false
	for _, c := range j.Retries {
		retryLink = retryLink || len(c.Attempts) > 1 && c.Linked
	}
	fmt.Fprintf(out, "\nLog lines of session %s (found by session ID, as grep would):\n", d.session)
	lines := tel.printSessionLogs(out, d.session)
	fmt.Fprintf(out, "\n%d spans on one trace, %d spans of this session on other traces, retry linked to its previous attempt: %v, %d log lines\n",
		len(spans), others, retryLink, lines)
	if others != 0 || !retryLink || !j.Whole() {
		return errors.New("the journey is not whole")
	}

	// The verdict on the export counts what the endpoint accepted, so every
	// span must have reached the exporter first.
	fctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	if err := tel.flush(fctx); err != nil {
		return err
	}
	if cfg.otlpOut != "" {
		fmt.Fprintf(out, "Spans written to %s as OTLP JSON: go run ./cmd/tracebridge journey %s --otlp %s\n",
			cfg.otlpOut, d.session, cfg.otlpOut)
	}
	if tel.endpoint == "" {
		fmt.Fprintln(out, "Not exported: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://localhost:4318) to see the journey in Jaeger.")
		return nil
	}
	got, exportErr := tel.exported(spans)
	if got != len(spans) {
		return fmt.Errorf("OTLP export FAILED: %s accepted %d of the %d spans printed above: %w", tel.endpoint, got, len(spans), exportErr)
	}
	fmt.Fprintf(out, "Exported over OTLP: %s accepted all %d spans. In Jaeger (http://localhost:16686) search for tag session.id=%s\n",
		tel.endpoint, got, d.session)
	return nil
}

// mine reports whether ctx belongs to this run's journey. A real service
// handles every message; the demo's services handle only this run's
// session, so a message an interrupted earlier run left in a topic or
// queue (the names are the same on every run) is settled and skipped
// instead of joining this run's journey.
func (d *demo) mine(ctx context.Context, log *slog.Logger) bool {
	if carrier.SessionFromContext(ctx) == d.session {
		return true
	}
	log.InfoContext(ctx, "skipping a message of another run")
	return false
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
		o := order{ID: "order-" + d.session[len(d.session)-8:], Total: 42.5}
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
	srv := &http.Server{Addr: ln.Addr().String(), Handler: carrier.Middleware(mux, carrier.WithEdgeTracerProvider(tp), carrier.WithSessionSigner(d.signer)),
		ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

// start wires the services: orders (Kafka consumer), payments (RabbitMQ
// consumer that fails once), shipping (JetStream consumer) and the label
// job. It returns a func that stops them all, once.
func (d *demo) start(ctx context.Context, brokers []string, natsURL, amqpURL string, haveRabbit bool) (stop func(), err error) {
	var stops []func()
	var stopOnce sync.Once
	stop = func() {
		stopOnce.Do(func() {
			for i := len(stops) - 1; i >= 0; i-- {
				stops[i]()
			}
		})
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	d.kafkaW = kafka.NewWriter(&kafkago.Writer{Addr: kafkago.TCP(brokers...), Topic: ordersTopic,
		AllowAutoTopicCreation: true, BatchTimeout: time.Millisecond, RequiredAcks: kafkago.RequireAll},
		tracebridge.WithTracerProvider(d.tel.service("web")))
	stops = append(stops, func() { _ = d.kafkaW.Close() })

	// Labels: the background job at the end of the journey, run in the
	// shipping service's process.
	shipTP := d.tel.service("shipping")
	d.jobs = jobs.New(jobs.Config{}, tracebridge.WithTracerProvider(shipTP))
	labelLog := d.tel.log.With("service", "shipping", "job", labelJob)
	if err := d.jobs.Register(labelJob, func(ctx context.Context, j *jobs.Job) error {
		labelLog.InfoContext(ctx, "label printed", "order", string(j.Payload))
		d.once.Do(func() { close(d.done) })
		return nil
	}); err != nil {
		return stop, err
	}
	stops = append(stops, func() { _, _ = d.jobs.Shutdown(context.Background()) })

	if err := d.startShipping(ctx, natsURL, haveRabbit, &stops); err != nil {
		return stop, err
	}
	next := d.shipping
	if haveRabbit {
		if err := d.startPayments(amqpURL, &stops); err != nil {
			return stop, err
		}
		next = func(ctx context.Context, body []byte) error {
			return d.pub.PublishWithContext(ctx, "", paymentsQueue, true, false, amqp091.Publishing{
				MessageId: string(body), DeliveryMode: amqp091.Persistent, Body: body})
		}
	}

	// Orders: Kafka consumer that asks payments to charge. FirstOffset only
	// applies to a group without committed offsets (the first run against a
	// KAFKA_BROKERS cluster); later runs resume after the last commit.
	ordersLog := d.tel.log.With("service", "orders")
	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: brokers, GroupID: ordersGroup, Topic: ordersTopic,
		StartOffset: kafkago.FirstOffset, MaxWait: 50 * time.Millisecond})
	oc := kafka.NewConsumer(r, func(ctx context.Context, m kafkago.Message) error {
		if !d.mine(ctx, ordersLog) {
			return nil // committed: drained, not redelivered to the next run
		}
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

// startShipping starts the shipping service: a JetStream consumer that
// enqueues the label job. Without RabbitMQ it also fails once, so the retry
// link still shows.
func (d *demo) startShipping(ctx context.Context, natsURL string, haveRabbit bool, stops *[]func()) error {
	nc, err := natsgo.Connect(natsURL)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", natsURL, err)
	}
	*stops = append(*stops, nc.Close)
	// Payments publishes the shipment request; without RabbitMQ, orders does.
	publisher := "payments"
	if !haveRabbit {
		publisher = "orders"
	}
	d.js, err = tnats.NewJetStream(nc, nil, tracebridge.WithTracerProvider(d.tel.service(publisher)))
	if err != nil {
		return fmt.Errorf("JetStream: %w", err)
	}
	st, err := d.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: shippingStream,
		Subjects: []string{shippingSubj}, MaxAge: 24 * time.Hour})
	if err != nil {
		return fmt.Errorf("create stream %s: %w", shippingStream, err)
	}
	// An ephemeral consumer that starts at the first message published after
	// it: what earlier runs left in the stream is never delivered to it.
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy, InactiveThreshold: time.Minute})
	if err != nil {
		return fmt.Errorf("create consumer on %s: %w", shippingStream, err)
	}
	*stops = append(*stops, func() { _ = st.DeleteConsumer(context.Background(), cons.CachedInfo().Name) })
	shipLog := d.tel.log.With("service", "shipping")
	cc, err := tnats.NewConsumer(d.js.JetStream, cons, tracebridge.WithTracerProvider(d.tel.service("shipping")),
		tracebridge.WithRetry(3, 150*time.Millisecond, time.Second)).Consume(
		func(ctx context.Context, m jetstream.Msg) error {
			if !d.mine(ctx, shipLog) {
				return nil
			}
			if !haveRabbit && d.payFail.Add(1) == 1 {
				shipLog.WarnContext(ctx, "label printer offline; will retry", "order", string(m.Data()))
				return errors.New("label printer: offline")
			}
			shipLog.InfoContext(ctx, "shipment requested", "order", string(m.Data()))
			_, err := d.jobs.Enqueue(ctx, labelJob, m.Data())
			return err
		})
	if err != nil {
		return fmt.Errorf("consume %s: %w", shippingStream, err)
	}
	*stops = append(*stops, cc.Stop)
	return nil
}

// startPayments starts the payments service, a RabbitMQ consumer whose card
// processor times out once, and the publisher orders sends payments with.
// Both own their connections and reconnect after a broker restart.
func (d *demo) startPayments(amqpURL string, stops *[]func()) error {
	declare := func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare(paymentsQueue, true, false, false, false, nil)
		return err
	}
	payLog := d.tel.log.With("service", "payments")
	pc := amqp.NewConsumer(amqpURL, paymentsQueue, declare, func(ctx context.Context, m amqp091.Delivery) error {
		if !d.mine(ctx, payLog) {
			return nil // acked: drained
		}
		if d.payFail.Add(1) == 1 {
			payLog.WarnContext(ctx, "card processor timed out; will retry", "order", string(m.Body))
			return errors.New("card processor: timeout")
		}
		payLog.InfoContext(ctx, "payment captured", "order", string(m.Body))
		return d.shipping(ctx, m.Body)
	}, tracebridge.WithTracerProvider(d.tel.service("payments")), tracebridge.WithRetry(3, 150*time.Millisecond, time.Second))
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = pc.Run(runCtx) }()
	*stops = append(*stops, func() { cancel(); <-done })
	var err error
	d.pub, err = amqp.DialPublisher(amqpURL, tracebridge.WithConfirms(), tracebridge.WithTracerProvider(d.tel.service("orders")))
	if err != nil {
		return fmt.Errorf("RabbitMQ publisher: %w", err)
	}
	*stops = append(*stops, func() { _ = d.pub.Close() })
	return nil
}

// shipping publishes the shipment request to JetStream.
func (d *demo) shipping(ctx context.Context, orderID []byte) error {
	_, err := d.js.Publish(ctx, shippingSubj, orderID)
	return err
}

// declarePayments declares the payments queue, and so finds out whether
// RabbitMQ is reachable.
func declarePayments(amqpURL string) error {
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	_, err = ch.QueueDeclare(paymentsQueue, true, false, false, false, nil)
	return err
}

func note(cond bool, s string) string {
	if cond {
		return s
	}
	return ""
}

func redacted(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}
