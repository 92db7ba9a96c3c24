package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp091 "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	tbjourney "github.com/tracebridge/tracebridge/journey"
	"github.com/tracebridge/tracebridge/journeytest"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// hop is one consumer on the journey: HTTP edge → Kafka → RabbitMQ → NATS
// JetStream → job. Each hop's handler produces to the next one under the
// context its process span gave it, exactly as a service would.
type hop int

const (
	hopKafka hop = iota
	hopAMQP
	hopNATS
	hopJob
	numHops
)

func (h hop) String() string { return [...]string{"kafka", "rabbitmq", "nats", "job"}[h] }

// journey is what the test knows and what the handlers saw of one journey.
type journey struct {
	key     string
	session string
	client  trace.SpanContext // the caller's span: the journey's trace
	edge    trace.SpanContext // the HTTP edge's server span

	// wantSession and wantBag are what each hop's handler must see;
	// bad-header journeys expect less after the corrupted hop.
	wantSession [numHops]string
	wantBag     [numHops]string
	// traces is how many traces the journey's session spans: 1, or 2 when a
	// corrupted hop starts a new trace and the session goes on.
	traces int

	attempts  [numHops]int
	successes [numHops][]trace.SpanContext // every successful attempt (at least once may repeat one)
	tries     [numHops][]trace.SpanContext // every attempt, in order
	done      bool
}

// worldConfig sets what differs between tests.
type worldConfig struct {
	// fail decides whether a hop's handler fails this attempt.
	fail func(h hop, key string, attempt int) error
	// forwardAMQP, when set, replaces the Kafka hop's traced publish to
	// RabbitMQ: a middle hop that forwards a message of its own making.
	forwardAMQP func(w *world, ctx context.Context, key string) error
	// retry settings of every hop: attempts and backoff.
	attempts           int
	backoff, maxBackof time.Duration
	// reconnectWait is how long the RabbitMQ publisher waits for a
	// reconnect before it fails a publish.
	reconnectWait time.Duration
	// exclusiveAMQP takes RabbitMQ for this test alone, for tests that
	// stop the node.
	exclusiveAMQP bool
	// embeddedNATS runs JetStream on a file-backed server of the test's
	// own, for tests that restart it.
	embeddedNATS bool
}

// world is one run of the whole pipeline on real brokers, with unique
// names for every topic, queue, stream and subject.
type world struct {
	t   *testing.T
	cfg worldConfig
	tel *testenv.Telemetry
	rec *journeytest.Recorder // every span, for the journey checks
	tb  []tracebridge.Option

	kafkaAddrs           []string
	topic, dlqTopic      string
	group                string
	amqpURL              string
	queue, dlqQueue      string
	natsURL              string
	natsSrv              *testenv.NATSServer // the embedded server, with embeddedNATS
	nc                   *natsgo.Conn
	subj, dlqSubj        string
	stream, dlqStream    string
	js                   jetstream.JetStream
	tjs                  *tnats.JetStream
	writer               *tbkafka.Writer
	pub                  *amqp.Publisher
	runner               *jobs.Runner
	srv                  *httptest.Server
	client               *http.Client
	prop                 *carrier.Propagator
	amqpReconnects       atomic.Int64
	kafkaStop, amqpStop  func()
	natsStop             func()
	mu                   sync.Mutex
	journeys             map[string]*journey
	crossTalk            []string // handlers that saw another journey's session or baggage
	unknown              int      // deliveries whose key names no journey
	deadJobs             map[string]*jobs.Job
	deadJobSessions      map[string]string
	forwardErrs          atomic.Int64
	unexpectedHTTPStatus atomic.Int64
}

var runID = fmt.Sprintf("%d%04d", time.Now().Unix()%1e6, rand.IntN(1e4))

var nameSeq atomic.Int64

func newWorld(t *testing.T, cfg worldConfig) *world {
	t.Helper()
	if cfg.fail == nil {
		cfg.fail = func(hop, string, int) error { return nil }
	}
	if cfg.attempts == 0 {
		cfg.attempts, cfg.backoff, cfg.maxBackof = 3, 20*time.Millisecond, 100*time.Millisecond
	}
	if cfg.reconnectWait == 0 {
		cfg.reconnectWait = 5 * time.Second
	}
	id := fmt.Sprintf("tbi-%s-%d", runID, nameSeq.Add(1))
	rec := journeytest.NewRecorder()
	w := &world{
		t: t, cfg: cfg, tel: testenv.NewTelemetry(t, sdktrace.WithSpanProcessor(rec)), rec: rec,
		kafkaAddrs: testenv.Kafka(t),
		topic:      id, dlqTopic: id + "-dlq", group: id + "-g",
		queue: id, dlqQueue: id + ".dlq",
		subj: id + ".work", dlqSubj: id + ".dlq",
		stream: "S" + sanitize(id), dlqStream: "D" + sanitize(id),
		prop:            carrier.NewPropagator(),
		journeys:        map[string]*journey{},
		deadJobs:        map[string]*jobs.Job{},
		deadJobSessions: map[string]string{},
	}
	if cfg.embeddedNATS {
		w.natsSrv = testenv.EmbeddedNATS(t, testenv.NATSConfig{})
		w.natsURL = w.natsSrv.URL
	} else {
		w.natsURL = testenv.NATS(t)
	}
	if cfg.exclusiveAMQP {
		w.amqpURL = testenv.ExclusiveAMQP(t)
	} else {
		w.amqpURL = testenv.AMQP(t)
	}
	w.tb = []tracebridge.Option{tracebridge.WithTracerProvider(w.tel.TracerProvider),
		tracebridge.WithMeterProvider(w.tel.MeterProvider)}
	w.setupKafka()
	w.setupAMQP()
	w.setupNATS()
	w.setupJobs()
	w.setupEdge()
	w.startAll()
	return w
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

func (w *world) opts(more ...tracebridge.Option) []tracebridge.Option {
	return append(append([]tracebridge.Option{}, w.tb...), more...)
}

func (w *world) retry() tracebridge.Option {
	return tracebridge.WithRetry(w.cfg.attempts, w.cfg.backoff, w.cfg.maxBackof)
}

func (w *world) setupKafka() {
	t := w.t
	testenv.CreateTopics(t, w.kafkaAddrs, testenv.Topics(3, w.topic, w.dlqTopic)...)
	testenv.DeleteTopicsAfter(t, w.kafkaAddrs, w.topic, w.dlqTopic)
	w.writer = tbkafka.NewWriter(&kafkago.Writer{
		Addr: kafkago.TCP(w.kafkaAddrs...), Topic: w.topic, Balancer: &kafkago.Hash{},
		BatchSize: 500, BatchTimeout: 2 * time.Millisecond, RequiredAcks: kafkago.RequireAll,
	}, w.opts()...)
	t.Cleanup(func() { _ = w.writer.Close() })
}

func (w *world) kafkaReader() *kafkago.Reader {
	return kafkago.NewReader(kafkago.ReaderConfig{
		Brokers: w.kafkaAddrs, GroupID: w.group, GroupTopics: []string{w.topic},
		StartOffset: kafkago.FirstOffset, MaxWait: 50 * time.Millisecond,
		CommitInterval: 0, HeartbeatInterval: 500 * time.Millisecond, SessionTimeout: 6 * time.Second,
		RebalanceTimeout: 2 * time.Second, JoinGroupBackoff: 200 * time.Millisecond,
		ReadBackoffMin: 10 * time.Millisecond, ReadBackoffMax: 50 * time.Millisecond,
	})
}

// startKafkaConsumer runs a Kafka consumer in the journey's group and
// returns a stop that shuts it down and waits for it.
func (w *world) startKafkaConsumer() (stop func()) {
	c := tbkafka.NewConsumer(w.kafkaReader(), func(ctx context.Context, m kafkago.Message) error {
		return w.handle(ctx, hopKafka, string(m.Value), func(ctx context.Context) error {
			if w.cfg.forwardAMQP != nil {
				return w.cfg.forwardAMQP(w, ctx, string(m.Value))
			}
			return w.publishAMQP(ctx, string(m.Value))
		})
	}, w.opts(tracebridge.WithConcurrency(3), w.retry(), tracebridge.WithDeadLetter(w.dlqTopic))...)
	return w.run("kafka consumer", c.Run)
}

func (w *world) publishAMQP(ctx context.Context, key string) error {
	return w.pub.PublishWithContext(ctx, "", w.queue, false, false, amqp091.Publishing{
		MessageId: key, DeliveryMode: amqp091.Persistent, Body: []byte(key)})
}

// run runs a consumer loop until the returned stop is called (or t ends).
func (w *world) run(what string, run func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					w.t.Errorf("%s: %v", what, err)
				}
			case <-time.After(30 * time.Second):
				w.t.Errorf("%s did not stop within 30s", what)
			}
		})
	}
	w.t.Cleanup(stop)
	return stop
}

func (w *world) setupAMQP() {
	t := w.t
	t.Cleanup(func() {
		conn, err := amqp091.Dial(w.amqpURL)
		if err != nil {
			return // a fault test may leave the node briefly unreachable
		}
		defer conn.Close()
		for _, q := range []string{w.queue, w.queue + amqp.DelayQueueSuffix, w.dlqQueue} {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(q, false, false, false)
				_ = ch.Close()
			}
		}
	})
	// Declare before anything publishes, so no early message is unroutable.
	if err := w.withChannel(func(ch *amqp091.Channel) error { return w.declareAMQP(ch) }); err != nil {
		t.Fatal(err)
	}
	var err error
	w.pub, err = amqp.DialPublisher(w.amqpURL, w.opts(tracebridge.WithConfirms(),
		tracebridge.WithReconnectWait(w.cfg.reconnectWait))...)
	if err != nil {
		t.Fatalf("dial RabbitMQ publisher: %v", err)
	}
	t.Cleanup(func() { _ = w.pub.Close() })
}

func (w *world) declareAMQP(ch *amqp091.Channel) error {
	for _, q := range []string{w.queue, w.dlqQueue} {
		if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare %s: %w", q, err)
		}
	}
	return nil
}

func (w *world) withChannel(f func(ch *amqp091.Channel) error) error {
	conn, err := amqp091.Dial(w.amqpURL)
	if err != nil {
		return fmt.Errorf("dial RabbitMQ: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("RabbitMQ channel: %w", err)
	}
	return f(ch)
}

func (w *world) startAMQPConsumer() (stop func()) {
	c := amqp.NewConsumer(w.amqpURL, w.queue, w.declareAMQP, func(ctx context.Context, d amqp091.Delivery) error {
		return w.handle(ctx, hopAMQP, string(d.Body), func(ctx context.Context) error {
			_, err := w.tjs.Publish(ctx, w.subj, d.Body)
			return err
		})
	}, w.opts(tracebridge.WithConcurrency(8), w.retry(), tracebridge.WithDeadLetter(w.dlqQueue))...)
	c.OnReconnect = func() { w.amqpReconnects.Add(1) }
	return w.run("rabbitmq consumer", c.Run)
}

func (w *world) setupNATS() {
	t := w.t
	nc, err := natsgo.Connect(w.natsURL, natsgo.Name(t.Name()), natsgo.MaxReconnects(-1),
		natsgo.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	w.nc = nc
	if w.js, err = jetstream.New(nc); err != nil {
		t.Fatalf("JetStream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A server the test restarts must keep what it acknowledged.
	storage := jetstream.MemoryStorage
	if w.natsSrv != nil {
		storage = jetstream.FileStorage
	}
	for name, subj := range map[string]string{w.stream: w.subj, w.dlqStream: w.dlqSubj} {
		if _, err := w.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subj},
			Storage: storage}); err != nil {
			t.Fatalf("create stream %s: %v", name, err)
		}
		t.Cleanup(func() { _ = w.js.DeleteStream(context.Background(), name) })
	}
	w.tjs = tnats.WrapJetStream(w.js, w.opts()...)
}

func (w *world) startNATSConsumer() (stop func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A delivery whose ack was lost to a restart comes back after AckWait.
	ackWait := 30 * time.Second
	if w.natsSrv != nil {
		ackWait = 3 * time.Second
	}
	cons, err := w.js.CreateOrUpdateConsumer(ctx, w.stream, jetstream.ConsumerConfig{
		Durable: "journey", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait,
		MaxDeliver: w.cfg.attempts, MaxAckPending: 2000})
	if err != nil {
		w.t.Fatalf("create NATS consumer: %v", err)
	}
	c := tnats.NewConsumer(w.js, cons, w.opts(tracebridge.WithConcurrency(8), w.retry(),
		tracebridge.WithDeadLetter(w.dlqSubj))...)
	cc, err := c.Consume(func(ctx context.Context, m jetstream.Msg) error {
		return w.handle(ctx, hopNATS, string(m.Data()), func(ctx context.Context) error {
			_, err := w.runner.Enqueue(ctx, "journey.finish", m.Data())
			return err
		})
	})
	if err != nil {
		w.t.Fatalf("NATS consume: %v", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cc.Stop()
			select {
			case <-cc.Closed():
			case <-time.After(30 * time.Second):
				w.t.Error("NATS consumer did not stop within 30s")
			}
		})
	}
	w.t.Cleanup(stop)
	return stop
}

func (w *world) setupJobs() {
	w.runner = jobs.New(jobs.Config{QueueSize: 2048, DeadJob: func(ctx context.Context, job *jobs.Job, err error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.deadJobs[string(job.Payload)] = job
		w.deadJobSessions[string(job.Payload)] = carrier.SessionFromContext(ctx)
	}}, w.opts(tracebridge.WithConcurrency(8), w.retry())...)
	if err := w.runner.Register("journey.finish", func(ctx context.Context, job *jobs.Job) error {
		return w.handle(ctx, hopJob, string(job.Payload), func(context.Context) error { return nil })
	}); err != nil {
		w.t.Fatalf("register job: %v", err)
	}
	w.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if unrun, err := w.runner.Shutdown(ctx); err != nil || len(unrun) > 0 {
			w.t.Errorf("jobs shutdown: %d jobs did not run: %v", len(unrun), err)
		}
	})
}

// setupEdge starts the HTTP edge. Its propagator trusts the caller: the
// test's client plays an internal gateway, so the journey's trace starts at
// the client span (the default untrusted edge would start a new one).
func (w *world) setupEdge() {
	h := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		key := r.Header.Get("X-Journey")
		w.mu.Lock()
		j := w.journeys[key]
		w.mu.Unlock()
		if j == nil {
			http.Error(rw, "unknown journey", http.StatusBadRequest)
			return
		}
		if s, b := carrier.SessionFromContext(ctx), baggage.FromContext(ctx).Member("journey").Value(); s != j.session || b != key {
			w.noteCrossTalk(fmt.Sprintf("edge %s: session %q baggage %q", key, s, b))
		}
		w.mu.Lock()
		j.edge = trace.SpanContextFromContext(ctx)
		w.mu.Unlock()
		if err := w.writer.WriteMessages(ctx, kafkago.Message{Key: []byte(key), Value: []byte(key)}); err != nil {
			http.Error(rw, err.Error(), http.StatusServiceUnavailable)
			return
		}
		rw.WriteHeader(http.StatusAccepted)
	})
	w.srv = httptest.NewServer(carrier.Middleware(h, carrier.WithPropagator(w.prop),
		carrier.WithEdgeTracerProvider(w.tel.TracerProvider)))
	w.t.Cleanup(w.srv.Close)
	w.client = &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
	w.t.Cleanup(w.client.CloseIdleConnections)
}

func (w *world) startAll() {
	w.kafkaStop = w.startKafkaConsumer()
	w.amqpStop = w.startAMQPConsumer()
	w.natsStop = w.startNATSConsumer()
}

func (w *world) noteCrossTalk(s string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.crossTalk = append(w.crossTalk, s)
}

// handle is every hop's handler: it checks that the handler sees its own
// journey's session and baggage, fails when the test says so, forwards to
// the next hop under the handler's context, and records the attempt.
func (w *world) handle(ctx context.Context, h hop, key string, forward func(context.Context) error) error {
	w.mu.Lock()
	j := w.journeys[key]
	if j == nil {
		w.unknown++
		w.mu.Unlock()
		return nil
	}
	j.attempts[h]++
	attempt := j.attempts[h]
	wantS, wantB := j.wantSession[h], j.wantBag[h]
	w.mu.Unlock()

	if s, b := carrier.SessionFromContext(ctx), baggage.FromContext(ctx).Member("journey").Value(); s != wantS || b != wantB {
		w.noteCrossTalk(fmt.Sprintf("%s handler of %s: session %q baggage %q, want %q %q", h, key, s, b, wantS, wantB))
	}
	sc := trace.SpanContextFromContext(ctx)
	w.mu.Lock()
	j.tries[h] = append(j.tries[h], sc)
	w.mu.Unlock()
	if err := w.cfg.fail(h, key, attempt); err != nil {
		return err
	}
	if err := forward(ctx); err != nil {
		w.forwardErrs.Add(1)
		return fmt.Errorf("%s hop of %s: forward: %w", h, key, err)
	}
	w.mu.Lock()
	j.successes[h] = append(j.successes[h], sc)
	if h == hopJob {
		j.done = true
	}
	w.mu.Unlock()
	return nil
}

// newJourney registers a journey; its session and baggage are its own.
func (w *world) newJourney(n int) *journey {
	key := fmt.Sprintf("j%05d-%s", n, w.topic)
	j := &journey{key: key, session: fmt.Sprintf("sess-%05d-%08x", n, rand.Uint32()), traces: 1}
	for h := range numHops {
		j.wantSession[h], j.wantBag[h] = j.session, key
	}
	w.mu.Lock()
	w.journeys[key] = j
	w.mu.Unlock()
	return j
}

// begin sends the journey's HTTP request: a client span with the journey's
// baggage, the session in X-Session-ID.
func (w *world) begin(ctx context.Context, j *journey) error {
	m, err := baggage.NewMember("journey", j.key)
	if err != nil {
		return fmt.Errorf("baggage member: %w", err)
	}
	b, err := baggage.New(m)
	if err != nil {
		return fmt.Errorf("baggage: %w", err)
	}
	ctx, span := w.tel.TracerProvider.Tracer("integration").Start(baggage.ContextWithBaggage(ctx, b),
		"journey "+j.key, trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	w.mu.Lock()
	j.client = span.SpanContext()
	w.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.srv.URL+"/checkout", nil)
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	w.prop.Inject(ctx, propagation.HeaderCarrier(req.Header))
	req.Header.Set("X-Journey", j.key)
	req.Header.Set(carrier.DefaultSessionHeader, j.session)
	res, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("journey %s: %w", j.key, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		w.unexpectedHTTPStatus.Add(1)
		return fmt.Errorf("journey %s: HTTP %s", j.key, res.Status)
	}
	if got := res.Header.Get(carrier.DefaultSessionHeader); got != j.session {
		return fmt.Errorf("journey %s: edge answered session %q", j.key, got)
	}
	return nil
}

// beginAll starts the journeys concurrently, at most inflight HTTP
// requests at a time: the journeys themselves overlap on every hop.
func (w *world) beginAll(js []*journey, inflight int) {
	w.t.Helper()
	sem := make(chan struct{}, inflight)
	var wg sync.WaitGroup
	errs := make(chan error, len(js))
	for _, j := range js {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := w.begin(context.Background(), j); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 5 {
			w.t.Error(err)
		}
	}
	if n > 0 {
		w.t.Fatalf("%d journeys failed at the edge", n)
	}
}

// waitDone waits until want(j) holds for every journey, or d passes, and
// returns the journeys for which it does not.
func (w *world) waitDone(js []*journey, d time.Duration, want func(j *journey) bool) (missing []*journey) {
	deadline := time.Now().Add(d)
	for {
		missing = missing[:0]
		w.mu.Lock()
		for _, j := range js {
			if !want(j) {
				missing = append(missing, j)
			}
		}
		w.mu.Unlock()
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isDone(j *journey) bool { return j.done }

// assemble waits until every span the handlers ran in has ended (a process
// span ends after its settle, just after the handler returns), and the
// chain above each of them too, and assembles every recorded session's
// journey, by session.
func (w *world) assemble(js []*journey) map[string]*tbjourney.Journey {
	deadline := time.Now().Add(10 * time.Second)
	for {
		spans := w.rec.Spans()
		ended := make(map[trace.SpanID]tbjourney.Span, len(spans))
		for _, s := range spans {
			ended[s.SpanID] = s
		}
		complete := true
		w.mu.Lock()
		for _, j := range js {
			for _, tries := range j.tries {
				for _, sc := range tries {
					// The whole chain above an attempt must have ended
					// too: a hop can finish before an upstream span does
					// (a send still waiting for its broker's confirm).
					for id := sc.SpanID(); ; {
						s, ok := ended[id]
						if !ok {
							complete = false
							break
						}
						if !s.Parent.IsValid() {
							break
						}
						id = s.Parent
					}
				}
			}
		}
		w.mu.Unlock()
		if complete || time.Now().After(deadline) {
			out := map[string]*tbjourney.Journey{}
			for _, jn := range tbjourney.AssembleAll(spans) {
				out[jn.Session] = jn
			}
			return out
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// journeyOf returns the assembled journey of j: empty when no span names
// its session, which every assertion fails.
func journeyOf(all map[string]*tbjourney.Journey, j *journey) *tbjourney.Journey {
	if jn, ok := all[j.session]; ok {
		return jn
	}
	return tbjourney.Assemble(j.session, nil)
}

func (w *world) dest(h hop) string {
	switch h {
	case hopKafka:
		return w.topic
	case hopAMQP:
		return w.queue
	case hopNATS:
		return w.subj
	default:
		return "jobs"
	}
}

// arrival says how a hop's process span must attach to the hop before it.
type arrival int

const (
	viaSend  arrival = iota // parent is the previous hop's traced send span
	direct                  // parent is the previous hop's process span (a raw forwarder made no send span)
	newTrace                // the hop's input was corrupted: a new trace starts here
)

// segment is the part of a journey on one trace: the span names from the
// trace's root down to end.
type segment struct {
	names []string
	hops  []hop // the hop of each process span in names, -1 for the others
	end   trace.SpanContext
}

func (s *segment) add(name string, h hop) {
	s.names = append(s.names, name)
	s.hops = append(s.hops, h)
}

// segments lays the journey out as the arrivals say it must be: from the
// caller's span through the edge and each hop's send (viaSend) or straight
// (direct) to its process span, and a new segment where a hop starts a new
// trace. The last segment ends at the job's first successful attempt.
func (w *world) segments(j *journey, arrive [numHops]arrival) []segment {
	segs := []segment{{names: []string{"journey " + j.key, http.MethodPost}, hops: []hop{-1, -1}}}
	for h := hopKafka; h < numHops; h++ {
		cur := &segs[len(segs)-1]
		switch arrive[h] {
		case viaSend:
			cur.add("send "+w.dest(h), -1)
			cur.add("process "+w.dest(h), h)
		case direct:
			cur.add("process "+w.dest(h), h)
		case newTrace:
			cur.end = j.edge
			if h > hopKafka && len(j.successes[h-1]) > 0 {
				cur.end = j.successes[h-1][0]
			}
			segs = append(segs, segment{})
			segs[len(segs)-1].add("process "+w.dest(h), h)
		}
	}
	if len(j.successes[hopJob]) > 0 {
		segs[len(segs)-1].end = j.successes[hopJob][0]
	}
	return segs
}

// checkChain asserts, with journeytest, the parent links of the journey
// the arrivals describe (client ← edge, and per hop process ← send ←
// previous process, or process ← previous process), that where a hop starts
// a new trace it does, and that each hop's process span carries the session
// its handler must see. It returns the links checked and how many held.
func (w *world) checkChain(t journeytest.T, j *journey, jn *tbjourney.Journey, arrive [numHops]arrival) (links, held int) {
	t.Helper()
	if len(j.successes[hopJob]) == 0 {
		for _, s := range w.segments(j, arrive) {
			links += len(s.names)
		}
		t.Errorf("journey %s never reached its job", j.key)
		return links - 1, 0
	}
	for i, s := range w.segments(j, arrive) {
		links += len(s.names) - 1
		held += journeytest.Chain(t, jn, s.end.SpanID(), s.names...)
		path := jn.Path(s.end.SpanID())
		for k, h := range s.hops {
			if h >= 0 && k < len(path) && len(path) == len(s.names) && path[k].Session() != j.wantSession[h] {
				t.Errorf("journey %s %s hop: %s has session.id %q, want %q", j.key, h, path[k].Name,
					path[k].Session(), j.wantSession[h])
			}
		}
		if i == 0 {
			continue
		}
		// The segment starts a new trace: its root has no parent and is
		// not on the caller's trace.
		links++
		if len(path) > 0 && !path[0].Parent.IsValid() && path[0].TraceID != j.client.TraceID() {
			held++
		} else {
			t.Errorf("journey %s: %q should start a new trace", j.key, s.names[0])
		}
	}
	return links, held
}

// spansOn counts the journey's spans on one trace.
func spansOn(jn *tbjourney.Journey, id trace.TraceID) int {
	n := 0
	for _, s := range jn.Spans {
		if s.TraceID == id {
			n++
		}
	}
	return n
}

// reporter passes the first failures of many journeys to t and counts the
// rest, so a broken run of 1,000 journeys draws ten of them, not all.
type reporter struct {
	t *testing.T
	n int
}

func (r *reporter) Helper() { r.t.Helper() }

func (r *reporter) Errorf(format string, args ...any) {
	r.t.Helper()
	if r.n++; r.n <= 10 {
		r.t.Errorf(format, args...)
	}
}

// done reports how many failures were not shown.
func (r *reporter) done() {
	r.t.Helper()
	if r.n > 10 {
		r.t.Errorf("... and %d more failures", r.n-10)
	}
}

var errInjected = errors.New("injected failure")
