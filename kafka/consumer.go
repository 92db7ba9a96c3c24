package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/kafkaconn"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Handler handles one message. ctx carries the process span and the
// message's journey: its trace, baggage and session. A nil error commits
// the message; an error retries it (unless it is tracebridge.Permanent),
// and after the last attempt moves it to the dead-letter topic.
type Handler func(ctx context.Context, msg kafkago.Message) error

// BatchHandler handles a batch of messages under one process span that
// links to every message's creation context. Use Consumer.Extract for the
// journey of one message of the batch.
type BatchHandler func(ctx context.Context, msgs []kafkago.Message) error

// Consumer runs a handler over a *kafkago.Reader with a consumer group:
// the loop most users want. It commits a message only after its handler
// succeeded, or after its republish to the retry topic or its dead letter
// was written, so nothing is lost (at-least-once). Messages of one
// partition are handled in order; partitions are handled concurrently, up
// to WithConcurrency at once.
//
// A failed message is retried in place with backoff (WithRetry), each
// attempt a process span linked to the attempt before. With
// WithRetryDestination it is instead republished to that topic with
// retry-attempt and retry-previous headers; consume that topic with a
// Consumer configured the same way (one Consumer can read both through
// kafkago.ReaderConfig.GroupTopics). After the last attempt, or at once
// for a tracebridge.Permanent error, it goes to the WithDeadLetter topic
// with its original headers plus retry-previous and dead-letter-*. A
// handler panic is a failed attempt.
type Consumer struct {
	r     *kafkago.Reader
	rd    *Reader
	t     *msgtrace.Tracer
	h     Handler
	bh    BatchHandler
	batch int
	pub   *kafkago.Writer
	own   *kafkago.Transport // pub's connections when pub was made here: Run closes both
	grace time.Duration      // how long a commit may wait for the group once Run stops
}

// NewConsumer returns a Consumer that runs h over r. r must have a GroupID,
// because commits are how the Consumer keeps its place. It reads every
// tracebridge option that applies to consumers: WithTracerProvider,
// WithMeterProvider, WithPropagators, WithTrust, WithParentPolicy, WithRetry,
// WithRetryDestination, WithDeadLetter, WithConcurrency,
// WithErrorOnEveryAttempt, WithSettleSpans and WithLogger. With a retry or
// dead-letter destination it builds a writer that connects as r does (the
// TLS, SASL, client ID and dial settings of r's Dialer); SetPublisher
// replaces it.
func NewConsumer(r *kafkago.Reader, h Handler, opts ...tracebridge.Option) *Consumer {
	c := newConsumer(r, opts)
	c.h = h
	return c
}

// NewBatchConsumer returns a Consumer that hands h up to maxBatch messages
// of one partition at a time, in offset order, whatever has arrived,
// without waiting for a full batch; its commit covers that batch and
// nothing the handler has not had. A failed batch is retried in place as a
// whole; after the last attempt each of its messages is dead-lettered (or
// given up) and the batch committed.
func NewBatchConsumer(r *kafkago.Reader, h BatchHandler, maxBatch int, opts ...tracebridge.Option) *Consumer {
	c := newConsumer(r, opts)
	c.bh, c.batch = h, max(maxBatch, 1)
	return c
}

func newConsumer(r *kafkago.Reader, opts []tracebridge.Option) *Consumer {
	t := msgtrace.New(System, opts)
	c := &Consumer{r: r, rd: newReader(r, t), t: t, grace: r.Config().RebalanceTimeout}
	if c.grace <= 0 {
		c.grace = 30 * time.Second // kafka-go's default rebalance timeout
	}
	if t.RetryDestination != "" || t.DeadLetter != "" {
		// A transport of its own: on kafka-go's process-wide default one,
		// the writer's connections and their goroutines would outlive Run.
		// It connects as the reader does (TLS, SASL, client ID, dial
		// function), or it could not write to a cluster the reader reads.
		c.own = kafkaconn.Transport(r.Config().Dialer)
		c.pub = &kafkago.Writer{
			Addr:                   kafkago.TCP(r.Config().Brokers...),
			Transport:              c.own,
			Balancer:               &kafkago.Hash{}, // same key, same partition: per-key order survives the hop
			RequiredAcks:           kafkago.RequireAll,
			BatchSize:              1, // a republish is a single synchronous write; do not wait for a batch to fill
			MaxAttempts:            3,
			AllowAutoTopicCreation: true,
		}
	}
	return c
}

// SetPublisher sets the writer that republishes retries and writes dead
// letters, instead of the one NewConsumer builds from the reader's brokers
// and its Dialer's TLS, SASL, client ID and dial settings. Set one to write
// to another cluster, or with other credentials or writer settings. Call
// it before Run. The Consumer does not close a writer set here.
func (c *Consumer) SetPublisher(w *kafkago.Writer) {
	c.pub, c.own = w, nil
}

// Extract returns ctx with the journey (trace, baggage, session) of msg,
// for a BatchHandler that handles one message of its batch on that
// message's journey.
func (c *Consumer) Extract(ctx context.Context, msg kafkago.Message) context.Context {
	return c.t.Extract(ctx, NewCarrier(&msg.Headers))
}

// Run fetches and handles messages until ctx is done or the reader fails,
// then shuts down gracefully: it stops fetching, lets running handlers
// finish and commit, leaves fetched messages it did not start uncommitted
// (they are delivered again), and closes the reader. Handlers run under a
// context that keeps ctx's values but not its cancellation, so shutdown
// does not abort them halfway. A commit waits for the group as long as it
// takes while Run runs, but once it shuts down no longer than the reader's
// RebalanceTimeout (30s if unset), the longest a healthy group keeps a
// commit waiting: a broker that is gone cannot hold Run forever, and a
// commit given up leaves its messages to be delivered again. Run returns
// nil after a shutdown by ctx.
func (c *Consumer) Run(ctx context.Context) error {
	if c.h == nil && c.bh == nil {
		return errors.New("tracebridge/kafka: Consumer has no handler")
	}
	// The workers stop when ctx is done or the reader failed, whichever
	// ends the fetching: either way nothing more is coming.
	stop, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	s := &session{base: msgtrace.Detach(ctx), stop: stop, grace: c.grace}
	var cancelCommits context.CancelFunc
	s.commits, cancelCommits = context.WithCancel(context.Background())
	defer cancelCommits()
	release := cancelAfter(stop, c.grace, cancelCommits)
	n := c.t.Concurrency
	queues := make([]chan kafkago.Message, n)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan kafkago.Message, 64)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.work(s, queues[i])
		}()
	}

	var runErr error
fetch:
	for {
		msg, err := c.r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, io.EOF) {
				runErr = fmt.Errorf("tracebridge/kafka: fetch from %v: %w", c.r.Config().GroupTopics, err)
				if len(c.r.Config().GroupTopics) == 0 {
					runErr = fmt.Errorf("tracebridge/kafka: fetch from topic %q: %w", c.r.Config().Topic, err)
				}
			}
			break
		}
		q := queues[c.queueOf(&msg, n)]
		select {
		case q <- msg:
		case <-ctx.Done():
			break fetch
		}
	}
	stopWorkers()
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	release()
	var errs []error
	if runErr != nil {
		errs = append(errs, runErr)
	}
	if c.own != nil {
		if err := c.pub.Close(); err != nil {
			errs = append(errs, fmt.Errorf("tracebridge/kafka: close retry/dead-letter writer: %w", err))
		}
		c.own.CloseIdleConnections() // Writer.Close leaves a Transport it was given open
	}
	// Close flushes commits that a CommitInterval reader still holds.
	if err := c.r.Close(); err != nil {
		errs = append(errs, fmt.Errorf("tracebridge/kafka: close reader: %w", err))
	}
	return errors.Join(errs...)
}

// session is what the workers of one Run share.
type session struct {
	base    context.Context // handlers run under it: Run's values, not its cancellation
	stop    context.Context // done when Run's ctx is, or when the reader failed
	commits context.Context // commits wait under it: cancelled grace after stop
	grace   time.Duration
}

// cancelAfter calls cancel d after stop is done, unless release comes
// first. release returns once the goroutine it started has ended.
func cancelAfter(stop context.Context, d time.Duration, cancel func()) (release func()) {
	quit, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		select {
		case <-stop.Done():
		case <-quit:
			return
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-quit:
		}
	}()
	return func() { close(quit); <-ended }
}

// queueOf keeps every message of a partition on one worker, which is what
// keeps them in order and their commits monotonic. A topic's partitions go
// to consecutive workers from a start its name picks, so with at least as
// many workers as partitions each has its own; hashing the partition would
// have put two of n partitions on one worker most of the time, handling
// them one after the other.
func (c *Consumer) queueOf(m *kafkago.Message, n int) int {
	if n == 1 {
		return 0
	}
	h := uint32(2166136261) // FNV-1a of the topic
	for i := 0; i < len(m.Topic); i++ {
		h = (h ^ uint32(m.Topic[i])) * 16777619
	}
	return int((uint64(h) + uint64(m.Partition)) % uint64(n))
}

func (c *Consumer) work(s *session, q <-chan kafkago.Message) {
	if c.bh != nil {
		c.workBatches(s, q)
		return
	}
	w := c.newWorker(s)
	for msg := range q {
		if s.stop.Err() != nil {
			continue // fetched, not started: leave it uncommitted for the next consumer
		}
		w.handle(msg)
	}
}

// worker handles one message at a time for Run. Its Settlement is built
// once, bound to the worker, and each message is put into msg before
// Deliver runs: building the closures per message, each capturing its own
// copy of the message, would cost three allocations per message.
type worker struct {
	c   *Consumer
	ses *session
	msg kafkago.Message
	s   msgtrace.Settlement
}

func (c *Consumer) newWorker(ses *session) *worker {
	w := &worker{c: c, ses: ses}
	w.s = msgtrace.Settlement{Handle: w.run, Ack: w.commit, AckOp: "commit"}
	if c.t.RetryDestination != "" && c.pub != nil {
		w.s.Republish = w.republish
	}
	if c.t.DeadLetter != "" && c.pub != nil {
		w.s.DeadLetter = w.deadLetter
	}
	return w
}

func (w *worker) run(ctx context.Context) error { return w.c.h(ctx, w.msg) }
func (w *worker) commit(context.Context) error  { return w.c.commit(w.ses, w.msg) }

func (w *worker) republish(ctx context.Context, r carrier.Retry) error {
	return w.c.publish(ctx, w.msg, w.c.t.RetryDestination, func(hc Carrier) { w.c.t.Carrier().InjectRetry(hc, r) })
}

func (w *worker) deadLetter(ctx context.Context, last trace.SpanContext, dl carrier.DeadLetter) error {
	return w.c.publish(ctx, w.msg, w.c.t.DeadLetter, func(hc Carrier) {
		if last.IsValid() {
			hc.Set(w.c.t.Carrier().Names().RetryPrevious, carrier.FormatTraceparent(last))
		}
		w.c.t.Carrier().InjectDeadLetter(hc, dl)
	})
}

// handle runs Deliver for msg, which settles it before returning; nothing
// keeps w.msg or the Delivery built from it beyond that.
func (w *worker) handle(msg kafkago.Message) {
	w.msg = msg
	defer func() { w.msg = kafkago.Message{} }() // drop the payload for the GC while idle
	if _, err := w.c.t.Deliver(w.ses.base, w.ses.stop, w.c.rd.delivery(&w.msg), w.s); err != nil && !errors.Is(err, msgtrace.ErrStopped) {
		w.c.t.Logger.WarnContext(w.ses.base, "tracebridge/kafka: message left uncommitted; it will be delivered again",
			"topic", msg.Topic, "partition", msg.Partition, "offset", msg.Offset, "error", err)
	}
}

// commit commits msgs under s.commits: for as long as the group needs
// while the consumer runs, for the grace once it stops.
func (c *Consumer) commit(s *session, msgs ...kafkago.Message) error {
	ctx := s.commits
	if ctx.Err() != nil {
		// A handler that finished after the grace ran out: its commit
		// gets a grace of its own, as it would have at the stop.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), s.grace)
		defer cancel()
	}
	if err := c.r.CommitMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("tracebridge/kafka: commit %s: %w", describePos(&msgs[len(msgs)-1]), err)
	}
	return nil
}

// publish writes a copy of msg to topic: same key, value and headers (so
// the same journey), with edit applied to the headers. A send span, child
// of the process span in ctx, records the write; the message's creation
// context is forwarded, not replaced.
func (c *Consumer) publish(ctx context.Context, msg kafkago.Message, topic string, edit func(Carrier)) error {
	out := kafkago.Message{Topic: topic, Key: msg.Key, Value: msg.Value,
		Headers: slices.Grow(slices.Clone(msg.Headers), 5)}
	hc := NewCarrier(&out.Headers)
	edit(hc)
	sctx, op := c.t.StartSend(ctx, hc, msgtrace.Message{Destination: topic, BodySize: len(out.Value),
		ServerAddress: c.rd.addr, ServerPort: c.rd.port})
	err := c.pub.WriteMessages(sctx, out)
	if err != nil {
		err = fmt.Errorf("tracebridge/kafka: republish %s to %q: %w", describePos(&msg), topic, err)
	}
	op.End(sctx, err)
	return err
}

// workBatches takes what is queued, up to the batch size, without waiting
// for more: a batch never delays a message that could be handled now.
// Partitions may share a worker, so what it takes goes into per-partition
// lanes and each batch is cut from one of them: one partition, in offset
// order, so its commit covers only messages its handler got. At most a
// batch's worth waits in the lanes.
func (c *Consumer) workBatches(s *session, q <-chan kafkago.Message) {
	var l lanes
	for open := true; open || l.len() > 0; {
		if l.len() == 0 {
			m, ok := <-q
			if !ok {
				return
			}
			l.push(m)
		}
	more:
		for open && l.len() < c.batch {
			select {
			case m, ok := <-q:
				if !ok {
					open = false
					break more
				}
				l.push(m)
			default:
				break more
			}
		}
		if s.stop.Err() != nil {
			// Fetched, not started: left uncommitted for the next
			// consumer. Run's fetch loop no longer sends once stop is done.
			return
		}
		c.handleBatch(s, l.next(c.batch))
	}
}

func (c *Consumer) handleBatch(s *session, msgs []kafkago.Message) {
	carriers := make([]propagation.TextMapCarrier, len(msgs))
	for i := range msgs {
		carriers[i] = NewCarrier(&msgs[i].Headers)
	}
	m := c.rd.delivery(&msgs[0]).Message
	m.BodySize, m.Attrs, m.Lazy = -1, nil, nil
	var err error
	var prev trace.SpanContext
	for attempt := 1; ; attempt++ {
		bctx, p := c.t.StartBatchProcess(s.base, m, carriers, attempt, prev)
		prev = p.SpanContext()
		err = msgtrace.Call(func() error { return c.bh(bctx, msgs) })
		final := p.Final(err)
		if err == nil || final {
			if err != nil && !c.giveUpBatch(bctx, s.stop, msgs, err, attempt) {
				// Stopped before every message reached the dead-letter
				// topic: committing now could lose one.
				p.Settle(bctx, "commit", msgtrace.ErrStopped)
				p.End(bctx, err, final)
				return
			}
			cerr := c.commit(s, msgs...)
			p.Settle(bctx, "commit", cerr)
			p.End(bctx, err, final)
			return
		}
		p.End(bctx, err, false)
		if s.stop.Err() != nil || !msgtrace.Sleep(s.stop, c.t.Backoff.Delay(attempt)) {
			return // uncommitted: the batch is delivered again
		}
	}
}

// giveUpBatch dead-letters each message of a batch that failed finally,
// retrying each write until it succeeds or the consumer stops; it reports
// whether the batch may be committed.
func (c *Consumer) giveUpBatch(ctx, stop context.Context, msgs []kafkago.Message, herr error, attempts int) bool {
	if c.t.DeadLetter == "" || c.pub == nil {
		c.t.Logger.WarnContext(ctx, "tracebridge/kafka: batch failed finally and has no dead-letter topic",
			"topic", msgs[0].Topic, "partition", msgs[0].Partition, "first_offset", msgs[0].Offset, "messages", len(msgs), "error", herr)
		return true
	}
	last := trace.SpanContextFromContext(ctx)
	for _, msg := range msgs {
		dl := carrier.DeadLetter{Reason: herr.Error(), Attempts: attempts, Source: msg.Topic}
		for n := 1; ; n++ {
			err := c.publish(ctx, msg, c.t.DeadLetter, func(hc Carrier) {
				hc.Set(c.t.Carrier().Names().RetryPrevious, carrier.FormatTraceparent(last))
				c.t.Carrier().InjectDeadLetter(hc, dl)
			})
			if err == nil {
				break
			}
			if !msgtrace.Sleep(stop, c.t.Backoff.Delay(n)) {
				return false
			}
		}
	}
	return true
}
