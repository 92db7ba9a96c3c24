package integration

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp091 "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/baggage"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
	tnats "github.com/tracebridge/tracebridge/nats"
	"github.com/tracebridge/tracebridge/sampling"
)

// The sampling pipeline is four services, each with a tracer provider and
// a sampler of its own, as in production:
//
//	web       HTTP edge (a root span per request) → Kafka
//	orders    Kafka consumer → RabbitMQ (and an untrusted Kafka consumer of
//	          messages from outside → RabbitMQ)
//	payments  RabbitMQ consumer with the link parent policy (a new trace)
//	          → NATS JetStream
//	shipping  JetStream consumer → a job, whose runner starts a new trace
//	          (link policy)
//
// A request therefore makes 9 spans in 3 traces: POST, send <topic>,
// process <topic>, send <queue> | process <queue>, send <subject>,
// process <subject>, send jobs | process jobs.
const (
	spansPerRequest  = 9
	tracesPerRequest = 3
)

var requestSpanNames = func() []string {
	n := []string{"POST", "send T", "process T", "send Q", "process Q", "send S", "process S", "send jobs", "process jobs"}
	sort.Strings(n)
	return n
}()

// service is one process of the pipeline.
type service struct {
	tp   *sdktrace.TracerProvider
	prop *carrier.Propagator
}

func (s service) opts(more ...tracebridge.Option) []tracebridge.Option {
	return append([]tracebridge.Option{tracebridge.WithTracerProvider(s.tp), tracebridge.WithPropagators(s.prop),
		tracebridge.WithMeterProvider(noopmetric.NewMeterProvider())}, more...)
}

// sight is what a handler saw of a message's journey.
type sight struct {
	hop     string
	session string
	debug   bool // carrier.DebugFromContext
	mark    bool // any session.debug member in the baggage
}

type pipeline struct {
	t   *testing.T
	rec *tracetest.SpanRecorder // every service exports here: the tracing backend

	web, orders, payments, shipping service

	kafkaAddrs              []string
	topic, outside, group   string
	amqpURL, queue          string
	subj, stream            string
	writer                  *tbkafka.Writer
	pub                     *amqp.Publisher
	tjs                     *tnats.JetStream
	runner                  *jobs.Runner
	srv                     *httptest.Server
	client                  *http.Client
	done                    atomic.Int64
	mu                      sync.Mutex
	sights                  map[string][]sight // by message key
	finished                map[string]bool
	forwardErrs, httpErrors atomic.Int64
}

// newPipeline starts the four services; sampler gives each its sampler,
// and webDebug names debug sessions to the web service alone (to its
// propagator here, to its sampler through sampler's debug argument).
func newPipeline(t *testing.T, sampler func(service string, debug []string) sdktrace.Sampler, webDebug ...string) *pipeline {
	t.Helper()
	id := fmt.Sprintf("tbs-%s-%d", runID, nameSeq.Add(1))
	p := &pipeline{t: t, rec: tracetest.NewSpanRecorder(), kafkaAddrs: testenv.Kafka(t),
		topic: id, outside: id + "-outside", group: id + "-g", amqpURL: testenv.AMQP(t), queue: id + "-q",
		subj: id + ".ship", stream: "SS" + sanitize(id), sights: map[string][]sight{}, finished: map[string]bool{}}
	newService := func(name string, debug []string) service {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler(name, debug)), sdktrace.WithSpanProcessor(p.rec))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		return service{tp: tp, prop: carrier.NewPropagator(carrier.WithDebugSessions(debug...))}
	}
	p.web = newService("web", webDebug)
	p.orders, p.payments, p.shipping = newService("orders", nil), newService("payments", nil), newService("shipping", nil)
	p.setupKafka()
	p.setupAMQP()
	p.setupNATS()
	p.setupJobs()
	p.setupEdge()
	return p
}

func (p *pipeline) see(ctx context.Context, hop, key string) {
	s := sight{hop: hop, session: carrier.SessionFromContext(ctx), debug: carrier.DebugFromContext(ctx),
		mark: baggage.FromContext(ctx).Member(carrier.BaggageDebugKey).Key() != ""}
	p.mu.Lock()
	p.sights[key] = append(p.sights[key], s)
	p.mu.Unlock()
}

func (p *pipeline) setupKafka() {
	t := p.t
	testenv.CreateTopics(t, p.kafkaAddrs, testenv.Topics(3, p.topic, p.outside)...)
	testenv.DeleteTopicsAfter(t, p.kafkaAddrs, p.topic, p.outside)
	p.writer = tbkafka.NewWriter(&kafkago.Writer{Addr: kafkago.TCP(p.kafkaAddrs...), Topic: p.topic,
		Balancer: &kafkago.Hash{}, BatchSize: 500, BatchTimeout: 2 * time.Millisecond, RequiredAcks: kafkago.RequireAll},
		p.web.opts()...)
	t.Cleanup(func() { _ = p.writer.Close() })

	forward := func(hop string) func(ctx context.Context, m kafkago.Message) error {
		return func(ctx context.Context, m kafkago.Message) error {
			p.see(ctx, hop, string(m.Value))
			return p.forward(p.pub.PublishWithContext(ctx, "", p.queue, false, false, amqp091.Publishing{
				MessageId: string(m.Value), DeliveryMode: amqp091.Persistent, Body: m.Value}))
		}
	}
	for _, c := range []struct {
		topic, group, hop string
		opts              []tracebridge.Option
	}{
		{p.topic, p.group, "orders", nil},
		// Messages from outside the system: the orders service reads them
		// as untrusted input.
		{p.outside, p.group + "-outside", "orders-untrusted", []tracebridge.Option{tracebridge.WithTrust(carrier.Untrusted)}},
	} {
		r := kafkago.NewReader(kafkago.ReaderConfig{
			Brokers: p.kafkaAddrs, GroupID: c.group, GroupTopics: []string{c.topic},
			StartOffset: kafkago.FirstOffset, MaxWait: 50 * time.Millisecond,
			HeartbeatInterval: 500 * time.Millisecond, SessionTimeout: 6 * time.Second,
			RebalanceTimeout: 2 * time.Second, JoinGroupBackoff: 200 * time.Millisecond,
			ReadBackoffMin: 10 * time.Millisecond, ReadBackoffMax: 50 * time.Millisecond,
		})
		cons := tbkafka.NewConsumer(r, forward(c.hop), p.orders.opts(append(c.opts, tracebridge.WithConcurrency(8))...)...)
		p.run("kafka consumer "+c.hop, cons.Run)
	}
}

// forward counts a failed forward; the message is retried by its consumer.
func (p *pipeline) forward(err error) error {
	if err != nil {
		p.forwardErrs.Add(1)
	}
	return err
}

func (p *pipeline) run(what string, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	p.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				p.t.Errorf("%s: %v", what, err)
			}
		case <-time.After(30 * time.Second):
			p.t.Errorf("%s did not stop within 30s", what)
		}
	})
}

func (p *pipeline) setupAMQP() {
	t := p.t
	declare := func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare(p.queue, true, false, false, false, nil)
		return err
	}
	t.Cleanup(func() {
		if conn, err := amqp091.Dial(p.amqpURL); err == nil {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(p.queue, false, false, false)
			}
			_ = conn.Close()
		}
	})
	conn, err := amqp091.Dial(p.amqpURL)
	if err != nil {
		t.Fatalf("dial RabbitMQ: %v", err)
	}
	ch, err := conn.Channel()
	if err == nil {
		err = declare(ch)
	}
	_ = conn.Close()
	if err != nil {
		t.Fatalf("declare %s: %v", p.queue, err)
	}
	if p.pub, err = amqp.DialPublisher(p.amqpURL, p.orders.opts(tracebridge.WithConfirms())...); err != nil {
		t.Fatalf("dial RabbitMQ publisher: %v", err)
	}
	t.Cleanup(func() { _ = p.pub.Close() })
	c := amqp.NewConsumer(p.amqpURL, p.queue, declare, func(ctx context.Context, d amqp091.Delivery) error {
		p.see(ctx, "payments", string(d.Body))
		_, err := p.tjs.Publish(ctx, p.subj, d.Body)
		return p.forward(err)
	}, p.payments.opts(tracebridge.WithConcurrency(8), tracebridge.WithParentPolicy(tracebridge.LinkToCreation, 0))...)
	p.run("rabbitmq consumer", c.Run)
}

func (p *pipeline) setupNATS() {
	t := p.t
	nc, err := natsgo.Connect(testenv.NATS(t), natsgo.Name(t.Name()))
	if err != nil {
		t.Fatalf("connect NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("JetStream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: p.stream, Subjects: []string{p.subj},
		Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), p.stream) })
	p.tjs = tnats.WrapJetStream(js, p.payments.opts()...)
	cons, err := js.CreateOrUpdateConsumer(ctx, p.stream, jetstream.ConsumerConfig{Durable: "shipping",
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 2000})
	if err != nil {
		t.Fatalf("create NATS consumer: %v", err)
	}
	cc, err := tnats.NewConsumer(js, cons, p.shipping.opts(tracebridge.WithConcurrency(8))...).Consume(
		func(ctx context.Context, m jetstream.Msg) error {
			p.see(ctx, "shipping", string(m.Data()))
			_, err := p.runner.Enqueue(ctx, "finish", m.Data())
			return p.forward(err)
		})
	if err != nil {
		t.Fatalf("NATS consume: %v", err)
	}
	t.Cleanup(func() {
		cc.Stop()
		<-cc.Closed()
	})
}

func (p *pipeline) setupJobs() {
	p.runner = jobs.New(jobs.Config{QueueSize: 4096}, p.shipping.opts(tracebridge.WithConcurrency(8),
		tracebridge.WithParentPolicy(tracebridge.LinkToCreation, 0))...)
	if err := p.runner.Register("finish", func(ctx context.Context, j *jobs.Job) error {
		key := string(j.Payload)
		p.see(ctx, "job", key)
		p.mu.Lock()
		if !p.finished[key] {
			p.finished[key] = true
			p.done.Add(1)
		}
		p.mu.Unlock()
		return nil
	}); err != nil {
		p.t.Fatalf("register job: %v", err)
	}
	p.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if unrun, err := p.runner.Shutdown(ctx); err != nil || len(unrun) > 0 {
			p.t.Errorf("jobs shutdown: %d jobs did not run: %v", len(unrun), err)
		}
	})
}

// setupEdge starts the web service's HTTP edge. It trusts its callers'
// session header (a gateway in front of it issued the sessions); the
// callers send no traceparent, so every request starts a root span there.
func (p *pipeline) setupEdge() {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-Journey")
		p.see(r.Context(), "web", key)
		if err := p.writer.WriteMessages(r.Context(), kafkago.Message{Key: []byte(key), Value: []byte(key)}); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	p.srv = httptest.NewServer(carrier.Middleware(h, carrier.WithPropagator(p.web.prop),
		carrier.WithEdgeTracerProvider(p.web.tp)))
	p.t.Cleanup(p.srv.Close)
	p.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	p.t.Cleanup(p.client.CloseIdleConnections)
}

// request is one request of a session: its key names its messages.
type request struct{ session, key string }

// send sends every request to the edge, at most inflight at a time.
func (p *pipeline) send(reqs []request, inflight int) {
	p.t.Helper()
	sem := make(chan struct{}, inflight)
	var wg sync.WaitGroup
	for _, rq := range reqs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req, err := http.NewRequest(http.MethodPost, p.srv.URL+"/checkout", nil)
			if err != nil {
				p.httpErrors.Add(1)
				return
			}
			req.Header.Set(carrier.DefaultSessionHeader, rq.session)
			req.Header.Set("X-Journey", rq.key)
			res, err := p.client.Do(req)
			if err != nil {
				p.httpErrors.Add(1)
				return
			}
			_ = res.Body.Close()
			if res.StatusCode != http.StatusAccepted {
				p.httpErrors.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := p.httpErrors.Load(); n > 0 {
		p.t.Fatalf("%d requests failed at the edge", n)
	}
}

// wait waits until n jobs have finished and every span that started has
// ended (a span ends just after its handler returns), and returns the
// ended spans.
func (p *pipeline) wait(n int64, d time.Duration) []sdktrace.ReadOnlySpan {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for p.done.Load() < n {
		if time.Now().After(deadline) {
			p.t.Fatalf("%d of %d requests reached their job within %s", p.done.Load(), n, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		started, ended := len(p.rec.Started()), p.rec.Ended()
		if started == len(ended) || time.Now().After(deadline) {
			return ended
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sessionTally is how a set of sessions was recorded.
type sessionTally struct {
	whole, absent, fragmented int
	spans                     int
	problems                  []string
}

// tallySessions classifies each session by its recorded spans: whole
// (every span of every trace of each of its requests, all with session.id,
// in their traces), absent (no span), or fragmented (anything else). A
// recorded span without a session, or a trace holding two sessions, is a
// problem whatever the sampler.
func (p *pipeline) tallySessions(perSession map[string]int, spans []sdktrace.ReadOnlySpan) (x sessionTally) {
	names := map[string][]string{}
	traces := map[string]map[trace.TraceID]bool{}
	traceSession := map[trace.TraceID]string{}
	replace := strings.NewReplacer(p.subj, "S", p.queue, "Q", p.topic, "T") // longest first: they share a prefix
	for _, s := range spans {
		x.spans++
		sess := sessionOf(s)
		tid := s.SpanContext().TraceID()
		if sess == "" {
			x.problems = append(x.problems, fmt.Sprintf("span %q of trace %s has no session.id", s.Name(), tid))
			continue
		}
		if other, ok := traceSession[tid]; ok && other != sess {
			x.problems = append(x.problems, fmt.Sprintf("trace %s holds sessions %s and %s", tid, other, sess))
		}
		traceSession[tid] = sess
		names[sess] = append(names[sess], replace.Replace(s.Name()))
		if traces[sess] == nil {
			traces[sess] = map[trace.TraceID]bool{}
		}
		traces[sess][tid] = true
	}
	for sess, requests := range perSession {
		got := names[sess]
		switch {
		case len(got) == 0:
			x.absent++
		case len(got) == spansPerRequest*requests && len(traces[sess]) == tracesPerRequest*requests && sameNames(got, requests):
			x.whole++
		default:
			x.fragmented++
		}
	}
	for sess := range names {
		if _, ok := perSession[sess]; !ok {
			x.problems = append(x.problems, fmt.Sprintf("spans of unknown session %q", sess))
		}
	}
	return x
}

// sameNames reports whether got is requests times the span names of one
// request.
func sameNames(got []string, requests int) bool {
	count := map[string]int{}
	for _, n := range got {
		count[n]++
	}
	for _, n := range requestSpanNames {
		if count[n] != requests {
			return false
		}
	}
	return len(count) == len(requestSpanNames)
}

// uuidSessions returns n session IDs (UUID-shaped) from a fixed seed, so
// the session sampler's share of them is the same on every run.
func uuidSessions(seed uint64, n int) []string {
	r := rand.New(rand.NewPCG(seed, seed))
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xfff,
			r.Uint32()&0x3fff|0x8000, r.Uint64()&0xffffffffffff)
	}
	return out
}

// binomial99_9 returns the smallest and largest number of successes in n
// trials of probability q within the central 99.9% of the binomial
// distribution.
func binomial99_9(n int, q float64) (lo, hi int) {
	lgN, _ := math.Lgamma(float64(n + 1))
	cum := 0.0
	lo, hi = -1, n
	for k := 0; k <= n; k++ {
		a, _ := math.Lgamma(float64(k + 1))
		b, _ := math.Lgamma(float64(n - k + 1))
		cum += math.Exp(lgN - a - b + float64(k)*math.Log(q) + float64(n-k)*math.Log1p(-q))
		if lo < 0 && cum > 0.0005 {
			lo = k
		}
		if cum >= 0.9995 {
			return lo, k
		}
	}
	return lo, hi
}

// wholeOrNothingScale is sessions × requests per session: 200 × 5 by
// default, the 1,000 × 10 with TRACEBRIDGE_SAMPLING_FULL=1.
func wholeOrNothingScale() (sessions, requests int) {
	if os.Getenv("TRACEBRIDGE_SAMPLING_FULL") == "1" {
		return 1000, 10
	}
	return 200, 5
}

// runSessions sends requests for each session through a pipeline sampling
// with sampler, interleaving the sessions' requests, and tallies them.
func runSessions(t *testing.T, sampler func(string, []string) sdktrace.Sampler, ids []string, requests int) sessionTally {
	p := newPipeline(t, sampler)
	var reqs []request
	perSession := map[string]int{}
	for r := range requests {
		for i, s := range ids {
			reqs = append(reqs, request{session: s, key: fmt.Sprintf("%s-r%d-s%d", p.topic, r, i)})
			perSession[s]++
		}
	}
	start := time.Now()
	p.send(reqs, 48)
	spans := p.wait(int64(len(reqs)), 10*time.Minute)
	x := p.tallySessions(perSession, spans)
	t.Logf("%d sessions × %d requests through 4 services in %s: %d spans; whole %d, absent %d, fragmented %d",
		len(ids), requests, time.Since(start).Round(time.Millisecond), x.spans, x.whole, x.absent, x.fragmented)
	for i, pr := range x.problems {
		if i == 10 {
			t.Errorf("... and %d more", len(x.problems)-10)
			break
		}
		t.Error(pr)
	}
	return x
}

// TestSessionWholeOrNothing: at a session ratio of 10%, every session is
// recorded entirely (all 9 spans in 3 traces of each of its requests,
// across the link-policy hop and the jobs' new traces) or not at all, and
// the recorded share is within the 99.9% binomial bounds of 10%.
func TestSessionWholeOrNothing(t *testing.T) {
	const ratio = 0.1
	n, requests := wholeOrNothingScale()
	ids := uuidSessions(2026, n)
	x := runSessions(t, func(string, []string) sdktrace.Sampler { return sampling.New(ratio) }, ids, requests)
	lo, hi := binomial99_9(n, ratio)
	t.Logf("session-consistent sampling: %d of %d sessions whole (%.1f%%, 99.9%% bounds %d..%d), %d absent, %d fragmented",
		x.whole, n, 100*float64(x.whole)/float64(n), lo, hi, x.absent, x.fragmented)
	if x.fragmented != 0 {
		t.Errorf("%d sessions fragmented, want 0", x.fragmented)
	}
	if x.whole < lo || x.whole > hi {
		t.Errorf("%d of %d sessions recorded at ratio %g, outside the 99.9%% binomial bounds %d..%d", x.whole, n, ratio, lo, hi)
	}
	if x.spans != x.whole*requests*spansPerRequest {
		t.Errorf("%d spans recorded, want %d", x.spans, x.whole*requests*spansPerRequest)
	}
}

// TestTraceRatioFragmentsSessions is the comparison: the same pipeline
// with every service on ParentBased(TraceIDRatioBased(0.1)), the usual head
// sampling, decides each of a request's three traces on its own, so most
// sessions are kept in part.
func TestTraceRatioFragmentsSessions(t *testing.T) {
	const ratio = 0.1
	n, requests := wholeOrNothingScale()
	x := runSessions(t, func(string, []string) sdktrace.Sampler {
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))
	},
		uuidSessions(2027, n), requests)
	traces := tracesPerRequest * requests
	t.Logf("trace-ID ratio sampling: %d of %d sessions whole, %d absent, %d fragmented (%.1f%%; %d independent traces per session: expected %.1f%% fragmented)",
		x.whole, n, x.absent, x.fragmented, 100*float64(x.fragmented)/float64(n), traces,
		100*(1-math.Pow(1-ratio, float64(traces))-math.Pow(ratio, float64(traces))))
	if x.fragmented <= n/2 {
		t.Errorf("only %d of %d sessions fragmented under trace-ID ratio sampling; the comparison shows nothing", x.fragmented, n)
	}
}

// TestDebugSessionAcrossServices: at ratio 0 everywhere, a debug session
// named to the web service alone is recorded entirely, in every service,
// including the link-policy hop and the jobs that start new traces, where
// only the mark that travelled with the journey can tell the sampler. A
// plain session is not recorded. A message from outside, read by an
// untrusted consumer, that carries the mark (and a sampled traceparent) is
// not recorded, and the mark does not travel on.
func TestDebugSessionAcrossServices(t *testing.T) {
	debugSession, plain, outsider := uuidSessions(7, 3)[0], uuidSessions(7, 3)[1], uuidSessions(7, 3)[2]
	p := newPipeline(t, func(_ string, debug []string) sdktrace.Sampler {
		return sampling.New(0, sampling.WithDebugSessions(debug...))
	}, debugSession)
	var reqs []request
	for r := range 3 {
		reqs = append(reqs, request{debugSession, fmt.Sprintf("%s-debug-%d", p.topic, r)},
			request{plain, fmt.Sprintf("%s-plain-%d", p.topic, r)})
	}
	p.send(reqs, 8)

	// The outsider's message: a sampled traceparent, its session (a UUID,
	// which an untrusted consumer keeps) and the debug mark for it.
	w := &kafkago.Writer{Addr: kafkago.TCP(p.kafkaAddrs...), Topic: p.outside, BatchTimeout: time.Millisecond}
	defer w.Close()
	outsideKey := p.topic + "-outsider"
	if err := w.WriteMessages(context.Background(), kafkago.Message{Value: []byte(outsideKey), Headers: []kafkago.Header{
		{Key: "traceparent", Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")},
		{Key: "session-id", Value: []byte(outsider)},
		{Key: "baggage", Value: []byte("session.id=" + outsider + ",session.debug=" + outsider)},
	}}); err != nil {
		t.Fatalf("outsider's write: %v", err)
	}

	spans := p.wait(int64(len(reqs)+1), 2*time.Minute)
	x := p.tallySessions(map[string]int{debugSession: 3, plain: 3, outsider: 1}, spans)
	for _, pr := range x.problems {
		t.Error(pr)
	}
	count := map[string]int{}
	for _, s := range spans {
		count[sessionOf(s)]++
	}
	t.Logf("ratio 0: debug session %d spans (want %d), plain session %d, outsider %d",
		count[debugSession], 3*spansPerRequest, count[plain], count[outsider])
	if x.whole != 1 || count[debugSession] != 3*spansPerRequest {
		t.Errorf("debug session: %d spans, want all %d of its 3 requests", count[debugSession], 3*spansPerRequest)
	}
	if count[plain] != 0 || count[outsider] != 0 {
		t.Errorf("at ratio 0, plain session recorded %d spans and the outsider %d, want 0 and 0", count[plain], count[outsider])
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	hops := map[string]bool{}
	for key, sights := range p.sights {
		for _, s := range sights {
			switch {
			case strings.Contains(key, "-debug-"):
				hops[s.hop] = true
				// The web service was told; the others know it from the
				// mark that came with the message.
				if s.debug != (s.hop != "web") || s.session != debugSession {
					t.Errorf("%s at %s: session %q debug %v, want the debug session, marked", key, s.hop, s.session, s.debug)
				}
			case key == outsideKey:
				hops["outsider at "+s.hop] = true
				if s.mark || s.debug || s.session != outsider {
					t.Errorf("outsider's message at %s: session %q, mark in baggage %v: the mark travelled on", s.hop, s.session, s.mark)
				}
			case s.mark:
				t.Errorf("%s at %s carries a debug mark", key, s.hop)
			}
		}
	}
	for _, h := range []string{"web", "orders", "payments", "shipping", "job", "outsider at orders-untrusted",
		"outsider at payments", "outsider at shipping", "outsider at job"} {
		if !hops[h] {
			t.Errorf("no sight of %s", h)
		}
	}
}

// sessionOf returns the session.id attribute of s, or "".
func sessionOf(s sdktrace.ReadOnlySpan) string {
	v, _ := testenv.Attr(s, "session.id")
	return v.AsString()
}
