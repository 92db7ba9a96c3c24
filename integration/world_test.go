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
	w := &world{
		t: t, cfg: cfg, tel: testenv.NewTelemetry(t),
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
	cl := &kafkago.Client{Addr: kafkago.TCP(w.kafkaAddrs...), Timeout: 10 * time.Second}
	req := &kafkago.CreateTopicsRequest{}
	for _, tp := range []string{w.topic, w.dlqTopic} {
		req.Topics = append(req.Topics, kafkago.TopicConfig{Topic: tp, NumPartitions: 3, ReplicationFactor: 1})
	}
	res, err := cl.CreateTopics(context.Background(), req)
	if err != nil {
		t.Fatalf("create topics: %v", err)
	}
	for tp, err := range res.Errors {
		if err != nil {
			t.Fatalf("create topic %s: %v", tp, err)
		}
	}
	t.Cleanup(func() {
		_, _ = cl.DeleteTopics(context.Background(), &kafkago.DeleteTopicsRequest{Topics: []string{w.topic, w.dlqTopic}})
	})
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

// spans waits until every span the handlers ran in has ended (a process
// span ends after its settle, just after the handler returns) and returns
// all ended spans by ID.
func (w *world) spans(js []*journey) map[trace.SpanID]sdktrace.ReadOnlySpan {
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := map[trace.SpanID]sdktrace.ReadOnlySpan{}
		for _, s := range w.tel.Ended() {
			all[s.SpanContext().SpanID()] = s
		}
		complete := true
		w.mu.Lock()
		for _, j := range js {
			for _, ss := range j.successes {
				for _, sc := range ss {
					// The whole chain above a hop must have ended too: a
					// hop can finish before an upstream span does (a send
					// still waiting for its broker's confirm).
					for id := sc.SpanID(); ; {
						s, ok := all[id]
						if !ok {
							complete = false
							break
						}
						p := s.Parent()
						if !p.IsValid() || p.TraceID() != s.SpanContext().TraceID() {
							break
						}
						id = p.SpanID()
					}
				}
			}
		}
		w.mu.Unlock()
		if complete || time.Now().After(deadline) {
			return all
		}
		time.Sleep(50 * time.Millisecond)
	}
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

// chainReport is the continuity of one journey.
type chainReport struct {
	links, broken int
	problems      []string
}

// checkChain walks the journey from its job back to the caller, checking
// every parent link: process → send → previous process ... → edge → client,
// that every span is on the expected trace, and that process spans carry
// the journey's session. arrive[h] says how hop h attaches to hop h-1 (the
// edge for Kafka).
func (w *world) checkChain(j *journey, all map[trace.SpanID]sdktrace.ReadOnlySpan, arrive [numHops]arrival) (r chainReport) {
	// r is named so that the deferred accounting below reaches the caller.
	edge := func(ok bool, format string, a ...any) bool {
		r.links++
		if !ok {
			r.broken++
			r.problems = append(r.problems, fmt.Sprintf("journey %s: ", j.key)+fmt.Sprintf(format, a...))
		}
		return ok
	}
	// Links a journey has: client ← edge, and per hop process ← send ← previous
	// (one link for direct/new-trace arrivals).
	total := 1
	for _, a := range arrive {
		total += map[arrival]int{viaSend: 2, direct: 1, newTrace: 1}[a]
	}
	defer func() {
		if r.links < total { // a break stops the walk: what was not reached is broken too
			r.broken += total - r.links
			r.links = total
		}
	}()

	// Any attempt of a hop may have forwarded: an attempt whose publish
	// reached the broker but whose confirm was lost to a restart fails and
	// is retried, and both copies travel on (at least once).
	ok := func(h hop, sc trace.SpanContext) bool {
		for _, s := range j.tries[h] {
			if s.SpanID() == sc.SpanID() {
				return true
			}
		}
		return false
	}
	if len(j.successes[hopJob]) == 0 {
		r.problems = append(r.problems, fmt.Sprintf("journey %s never reached its job", j.key))
		return r
	}
	cur := all[j.successes[hopJob][0].SpanID()]
	traceID := cur.SpanContext().TraceID()
	for h := hopJob; h >= hopKafka; h-- {
		if cur == nil || !ok(h, cur.SpanContext()) {
			edge(false, "%s hop: no process span of an attempt", h)
			return r
		}
		if cur.SpanKind() != trace.SpanKindConsumer || cur.Name() != "process "+w.dest(h) {
			edge(false, "%s hop: span %q kind %v", h, cur.Name(), cur.SpanKind())
			return r
		}
		if v := attrString(cur, "session.id"); v != j.wantSession[h] {
			r.problems = append(r.problems, fmt.Sprintf("journey %s %s: process span session.id %q", j.key, h, v))
		}
		if cur.SpanContext().TraceID() != traceID {
			edge(false, "%s hop: process span on trace %s, journey on %s", h, cur.SpanContext().TraceID(), traceID)
			return r
		}
		var prevOK func(sdktrace.ReadOnlySpan) bool
		if h == hopKafka {
			prevOK = func(s sdktrace.ReadOnlySpan) bool { return s.SpanContext().SpanID() == j.edge.SpanID() }
		} else {
			prevOK = func(s sdktrace.ReadOnlySpan) bool { return ok(h-1, s.SpanContext()) }
		}
		switch arrive[h] {
		case newTrace:
			if !edge(!cur.Parent().IsValid() && traceID != j.client.TraceID(),
				"%s hop: corrupted input should start a new trace, parent %s", h, cur.Parent().SpanID()) {
				return r
			}
			// The hops before it are still on the caller's trace.
			cur, traceID = nil, j.client.TraceID()
			if h > hopKafka {
				if sc := j.successes[h-1]; len(sc) > 0 {
					cur = all[sc[0].SpanID()]
				}
			}
			continue
		case direct:
			p := all[cur.Parent().SpanID()]
			if !edge(p != nil && prevOK(p), "%s hop: parent is not the forwarding process span", h) {
				return r
			}
			cur = p
			continue
		}
		send := all[cur.Parent().SpanID()]
		if !edge(send != nil && send.SpanKind() == trace.SpanKindProducer && send.Name() == "send "+w.dest(h) &&
			send.SpanContext().TraceID() == traceID, "%s hop: process span's parent is not its send span", h) {
			return r
		}
		prev := all[send.Parent().SpanID()]
		if !edge(prev != nil && prevOK(prev), "%s hop: send span's parent is not the previous hop", h) {
			return r
		}
		cur = prev
	}
	// cur is the edge's server span.
	edge(cur != nil && cur.SpanKind() == trace.SpanKindServer && cur.Parent().SpanID() == j.client.SpanID() &&
		cur.SpanContext().TraceID() == j.client.TraceID(), "edge span is not the client's child")
	return r
}

func attrString(s sdktrace.ReadOnlySpan, key string) string {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value.String()
		}
	}
	return ""
}

// sessionIntegrity checks that each journey's session appears on spans of
// one trace only, and that no span of a journey's trace names another
// session. It returns the problems found.
func sessionIntegrity(js []*journey, all map[trace.SpanID]sdktrace.ReadOnlySpan) []string {
	byTrace := map[trace.TraceID]string{}
	for _, j := range js {
		byTrace[j.client.TraceID()] = j.session
	}
	traces := map[string]map[trace.TraceID]bool{}
	var problems []string
	for _, s := range all {
		sid := attrString(s, "session.id")
		if want, ok := byTrace[s.SpanContext().TraceID()]; ok && sid != "" && sid != want {
			problems = append(problems, fmt.Sprintf("span %q of session %s's trace names session %s", s.Name(), want, sid))
		}
		if sid != "" {
			if traces[sid] == nil {
				traces[sid] = map[trace.TraceID]bool{}
			}
			traces[sid][s.SpanContext().TraceID()] = true
		}
	}
	for _, j := range js {
		if n := len(traces[j.session]); n != j.traces {
			problems = append(problems, fmt.Sprintf("session %s is on %d traces, want %d", j.session, n, j.traces))
		}
	}
	return problems
}

// spansOfJourneys counts the spans on the journeys' traces.
func spansOfJourneys(js []*journey, all map[trace.SpanID]sdktrace.ReadOnlySpan) int {
	traces := map[trace.TraceID]bool{}
	for _, j := range js {
		traces[j.client.TraceID()] = true
	}
	n := 0
	for _, s := range all {
		if traces[s.SpanContext().TraceID()] {
			n++
		}
	}
	return n
}

var errInjected = errors.New("injected failure")
