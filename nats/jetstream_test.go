package nats_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

type jsEnv struct {
	tel  *testenv.Telemetry
	js   jetstream.JetStream
	tjs  *tnats.JetStream
	subj string
	st   jetstream.Stream
}

func newJS(t *testing.T) *jsEnv {
	t.Helper()
	url := testenv.NATS(t)
	e := &jsEnv{tel: testenv.NewTelemetry(t), subj: unique(t, "js")}
	var err error
	if e.js, err = jetstream.New(connect(t, url)); err != nil {
		t.Fatal(err)
	}
	e.tjs = tnats.WrapJetStream(e.js, e.tel.Options()...)
	e.st = stream(t, e.js, jetstream.StreamConfig{Name: e.subj, Subjects: []string{e.subj}})
	return e
}

// publish sends one message under a producer span and returns the send
// span's ID (its creation context).
func (e *jsEnv) publish(t *testing.T, ctx context.Context, data string, hdr natsgo.Header) *natsgo.Msg {
	t.Helper()
	m := &natsgo.Msg{Subject: e.subj, Data: []byte(data), Header: hdr}
	if _, err := e.tjs.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func attemptsOf(spans []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	slices.SortFunc(spans, func(a, b sdktrace.ReadOnlySpan) int {
		x, _ := testenv.Attr(a, msgtrace.AttemptKey)
		y, _ := testenv.Attr(b, msgtrace.AttemptKey)
		return int(x.AsInt64() - y.AsInt64())
	})
	return spans
}

func TestRedeliveryLinksAttemptsWithBackoff(t *testing.T) {
	e := newJS(t)
	cons := consumer(t, e.st, jetstream.ConsumerConfig{Durable: "c", AckWait: 30 * time.Second})
	const initial = 300 * time.Millisecond
	c := tnats.NewConsumer(e.js, cons, e.tel.Options(tracebridge.WithRetry(5, initial, 2*time.Second))...)
	m := e.publish(t, carrier.ContextWithSession(context.Background(), "retry-session"), "x", nil)

	var calls atomic.Int32
	cc, err := c.Consume(func(ctx context.Context, msg jetstream.Msg) error {
		if calls.Add(1) < 3 {
			return fmt.Errorf("transient failure %d", calls.Load())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	testenv.WaitFor(t, "three attempts", 20*time.Second, func() bool { return len(e.tel.Named("process "+e.subj)) == 3 })

	send := e.tel.Named("send " + e.subj)[0]
	if tp := tnats.HeaderCarrier(m.Header).Get("traceparent"); tp != carrier.FormatTraceparent(send.SpanContext()) {
		t.Fatalf("message traceparent %q is not the send span", tp)
	}
	spans := attemptsOf(e.tel.Named("process " + e.subj))
	for n, s := range spans {
		if v, _ := testenv.Attr(s, msgtrace.AttemptKey); v.AsInt64() != int64(n+1) {
			t.Fatalf("span %d attempt %d", n, v.AsInt64())
		}
		if v, _ := testenv.Attr(s, tnats.DeliveredKey); v.AsInt64() != int64(n+1) {
			t.Fatalf("span %d NumDelivered %d", n, v.AsInt64())
		}
		if s.Parent().SpanID() != send.SpanContext().SpanID() {
			t.Fatalf("attempt %d is not parented on the send span", n+1)
		}
		if v, _ := testenv.Attr(s, "session.id"); v.AsString() != "retry-session" {
			t.Fatalf("attempt %d session %q", n+1, v.AsString())
		}
		if s.Status().Code == codes.Error {
			t.Fatalf("attempt %d has status Error though the journey recovered", n+1)
		}
		if n == 0 {
			continue
		}
		prev := spans[n-1]
		if !hasLink(s, prev.SpanContext().SpanID(), "previous_attempt") {
			t.Fatalf("attempt %d does not link attempt %d", n+1, n)
		}
		// The delay drawn for the failed attempt is on its span, within
		// the backoff's bounds, and the broker waited at least that long.
		v, ok := testenv.Attr(prev, msgtrace.RetryDelayKey)
		if !ok {
			t.Fatalf("attempt %d has no retry delay", n)
		}
		delay := time.Duration(v.AsFloat64() * float64(time.Second))
		if ceil := (msgtrace.Backoff{Initial: initial, Max: 2 * time.Second}).Ceiling(n); delay < 0 || delay > ceil {
			t.Fatalf("attempt %d delay %v outside [0, %v]", n, delay, ceil)
		}
		if gap := s.StartTime().Sub(prev.EndTime()); gap < delay-10*time.Millisecond {
			t.Fatalf("attempt %d started %v after attempt %d, before its delay %v", n+1, gap, n, delay)
		}
		if !slices.ContainsFunc(prev.Events(), func(ev sdktrace.Event) bool { return ev.Name == "exception" }) {
			t.Fatalf("failed attempt %d records no exception: %v", n, prev.Events())
		}
	}
}

func dlqEnv(t *testing.T, e *jsEnv) (string, jetstream.Stream) {
	dlq := e.subj + "_dlq"
	return dlq, stream(t, e.js, jetstream.StreamConfig{Name: dlq, Subjects: []string{dlq}})
}

func TestMaxDeliverLandsInDeadLetterWithJourney(t *testing.T) {
	e := newJS(t)
	dlq, dst := dlqEnv(t, e)
	cons := consumer(t, e.st, jetstream.ConsumerConfig{Durable: "c", MaxDeliver: 3, AckWait: 30 * time.Second})
	c := tnats.NewConsumer(e.js, cons, e.tel.Options(tracebridge.WithRetry(10, 10*time.Millisecond, 50*time.Millisecond),
		tracebridge.WithDeadLetter(dlq), tracebridge.WithLogger(discardLogger()))...)
	m := e.publish(t, carrier.ContextWithSession(context.Background(), "dlq-session"), "payload",
		natsgo.Header{"X-Order": []string{"7"}})

	cc, err := c.Consume(func(ctx context.Context, msg jetstream.Msg) error { return errors.New("boom\nsecond line") })
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	dl := readOne(t, e.js, dst)
	// The final attempt's span ends after the term that follows the
	// dead-letter publish.
	testenv.WaitFor(t, "final attempt to end", 5*time.Second, func() bool { return len(e.tel.Named("process "+e.subj)) >= 3 })
	spans := attemptsOf(e.tel.Named("process " + e.subj))
	if len(spans) != 3 {
		t.Fatalf("%d attempts, want MaxDeliver=3", len(spans))
	}
	last := spans[2]
	h := tnats.HeaderCarrier(dl.Headers())
	for k, want := range map[string]string{
		"dead-letter-reason":   "boom second line",
		"dead-letter-attempts": "3",
		"dead-letter-source":   e.subj,
		"retry-previous":       carrier.FormatTraceparent(last.SpanContext()),
		"traceparent":          tnats.HeaderCarrier(m.Header).Get("traceparent"),
		"session-id":           "dlq-session",
		"x-order":              "7",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("dead letter %s = %q, want %q", k, got, want)
		}
	}
	if string(dl.Data()) != "payload" {
		t.Fatalf("dead letter body %q", dl.Data())
	}
	if last.Status().Code != codes.Error {
		t.Fatal("final attempt's status is not Error")
	}
	if v, _ := testenv.Attr(last, msgtrace.RetryFinalKey); !v.AsBool() {
		t.Fatal("final attempt lacks tracebridge.retry.final=true")
	}
	if spans[0].Status().Code == codes.Error {
		t.Fatal("a retried attempt has status Error")
	}
	if !hasSettle(last, "term") {
		t.Fatalf("final attempt was not termed: %v", last.Events())
	}
	testenv.WaitFor(t, "dead-letter send span", 5*time.Second, func() bool { return len(e.tel.Named("send "+dlq)) == 1 })
	dsend := e.tel.Named("send " + dlq)[0]
	if dsend.Parent().SpanID() != last.SpanContext().SpanID() {
		t.Fatal("dead-letter publish is not a child of the final attempt")
	}
	testenv.WaitFor(t, "message settled", 5*time.Second, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumRedelivered == 0
	})
}

func TestPermanentErrorSkipsRetries(t *testing.T) {
	e := newJS(t)
	dlq, dst := dlqEnv(t, e)
	cons := consumer(t, e.st, jetstream.ConsumerConfig{Durable: "c"})
	c := tnats.NewConsumer(e.js, cons, e.tel.Options(tracebridge.WithDeadLetter(dlq), tracebridge.WithLogger(discardLogger()))...)
	e.publish(t, context.Background(), "bad", nil)
	cc, err := c.Consume(func(ctx context.Context, msg jetstream.Msg) error {
		return tracebridge.Permanent(errors.New("undecodable"))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	dl := readOne(t, e.js, dst)
	testenv.WaitFor(t, "attempt to end", 5*time.Second, func() bool { return len(e.tel.Named("process "+e.subj)) >= 1 })
	if got := dl.Headers().Get("dead-letter-attempts"); got != "1" {
		t.Fatalf("dead-letter-attempts %q, want 1", got)
	}
	if n := len(e.tel.Named("process " + e.subj)); n != 1 {
		t.Fatalf("%d attempts for a permanent error", n)
	}
}

func TestDeadLetterPublishFailureNaksInsteadOfTerm(t *testing.T) {
	e := newJS(t)
	cons := consumer(t, e.st, jetstream.ConsumerConfig{Durable: "c", MaxDeliver: 1})
	// No stream listens on the dead-letter subject: the publish fails.
	c := tnats.NewConsumer(e.js, cons, e.tel.Options(tracebridge.WithDeadLetter(unique(t, "nowhere")),
		tracebridge.WithLogger(discardLogger()))...)
	e.publish(t, context.Background(), "x", nil)
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	herr := c.Handle(ctx, msg, func(context.Context, jetstream.Msg) error { return errors.New("fails") })
	if herr == nil {
		t.Fatal("Handle returned nil though the dead letter could not be published")
	}
	s := e.tel.Named("process " + e.subj)[0]
	if hasSettle(s, "term") || !hasSettle(s, "nak") {
		t.Fatalf("want nak and no term after a failed dead-letter publish: %v", s.Events())
	}
	info, err := e.st.Info(context.Background())
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("stream lost the message: %v %v", info.State.Msgs, err)
	}
}

func hasSettle(s sdktrace.ReadOnlySpan, op string) bool {
	for _, ev := range s.Events() {
		if ev.Name != "settle" {
			continue
		}
		for _, a := range ev.Attributes {
			if a.Key == "messaging.operation.name" && a.Value.AsString() == op {
				return true
			}
		}
	}
	return false
}

// readOne waits for the first message on st.
func readOne(t *testing.T, js jetstream.JetStream, st jetstream.Stream) jetstream.Msg {
	t.Helper()
	oc, err := st.OrderedConsumer(context.Background(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := oc.Next(jetstream.FetchMaxWait(20 * time.Second))
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	return m
}

func TestFetchBatchOneSpanWithLinkPerMessage(t *testing.T) {
	e := newJS(t)
	cons := consumer(t, e.st, jetstream.ConsumerConfig{Durable: "c"})
	c := tnats.NewConsumer(e.js, cons, e.tel.Options()...)
	for i := range 5 {
		e.publish(t, carrier.ContextWithSession(context.Background(), "s"+strconv.Itoa(i)), strconv.Itoa(i), nil)
	}
	var sessions []string
	err := c.FetchBatch(context.Background(), 5, func(ctx context.Context, msgs []jetstream.Msg) error {
		for _, m := range msgs {
			sessions = append(sessions, carrier.SessionFromContext(c.Extract(ctx, m)))
		}
		return nil
	}, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sessions, []string{"s0", "s1", "s2", "s3", "s4"}) {
		t.Fatalf("per-message sessions %v", sessions)
	}
	procs := e.tel.Named("process " + e.subj)
	if len(procs) != 1 {
		t.Fatalf("%d process spans, want 1", len(procs))
	}
	if v, _ := testenv.Attr(procs[0], "messaging.batch.message_count"); v.AsInt64() != 5 {
		t.Fatalf("batch count %d", v.AsInt64())
	}
	for _, s := range e.tel.Named("send " + e.subj) {
		if !hasLink(procs[0], s.SpanContext().SpanID(), "batch_message") {
			t.Fatalf("batch span lacks a link to %v", s.SpanContext().SpanID())
		}
	}
	testenv.WaitFor(t, "acks", 5*time.Second, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.AckFloor.Stream == 5
	})
}

func TestMessagesAndFetchAckAndParent(t *testing.T) {
	e := newJS(t)
	cons := consumer(t, e.st, jetstream.ConsumerConfig{Durable: "c"})
	c := tnats.NewConsumer(e.js, cons, e.tel.Options(tracebridge.WithConcurrency(3))...)
	for i := range 10 {
		e.publish(t, context.Background(), strconv.Itoa(i), nil)
	}
	var mu sync.Mutex
	got := map[string]bool{}
	h := func(ctx context.Context, m jetstream.Msg) error {
		mu.Lock()
		got[string(m.Data())] = true
		mu.Unlock()
		return nil
	}
	if err := c.Fetch(context.Background(), 4, h, jetstream.FetchMaxWait(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("Fetch handled %d, want 4", len(got))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Messages(ctx, h) }()
	testenv.WaitFor(t, "Messages to handle the rest", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 10
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Messages returned %v, want context.Canceled", err)
	}
	sends := bySpanID(e.tel.Named("send " + e.subj))
	for _, p := range e.tel.Named("process " + e.subj) {
		if _, ok := sends[p.Parent().SpanID()]; !ok {
			t.Fatal("process span not parented on a send span")
		}
	}
	testenv.WaitFor(t, "acks", 5*time.Second, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.AckFloor.Stream == 10
	})
}

// TestAsyncPublishSpans: an async publish's send span ends with its PubAck
// (stream and sequence recorded) or its error (status Error), both when
// WrapJetStream waits on the future and when NewJetStream's ack handlers
// report it, and the caller's future still delivers the result.
func TestAsyncPublishSpans(t *testing.T) {
	url := testenv.NATS(t)
	for _, name := range []string{"WrapJetStream", "NewJetStream"} {
		t.Run(name, func(t *testing.T) {
			tel := testenv.NewTelemetry(t)
			nc := connect(t, url)
			var tjs *tnats.JetStream
			if name == "NewJetStream" {
				var err error
				if tjs, err = tnats.NewJetStream(nc, []jetstream.JetStreamOpt{jetstream.WithPublishAsyncTimeout(5 * time.Second)}, tel.Options()...); err != nil {
					t.Fatal(err)
				}
			} else {
				js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(5*time.Second))
				if err != nil {
					t.Fatal(err)
				}
				tjs = tnats.WrapJetStream(js, tel.Options()...)
			}
			subj := unique(t, "async")
			stream(t, tjs.JetStream, jetstream.StreamConfig{Name: subj, Subjects: []string{subj}})

			const n = 50
			futs := make([]jetstream.PubAckFuture, n)
			for i := range futs {
				f, err := tjs.PublishAsync(testenv.Parent(true), subj, []byte(strconv.Itoa(i)))
				if err != nil {
					t.Fatal(err)
				}
				futs[i] = f
			}
			seqs := map[uint64]bool{}
			for _, f := range futs {
				select {
				case ack := <-f.Ok():
					seqs[ack.Sequence] = true
				case err := <-f.Err():
					t.Fatalf("async publish: %v", err)
				case <-time.After(10 * time.Second):
					t.Fatal("no PubAck")
				}
			}
			testenv.WaitFor(t, "send spans", 5*time.Second, func() bool { return len(tel.Named("send "+subj)) == n })
			for _, s := range tel.Named("send " + subj) {
				seq, _ := testenv.Attr(s, tnats.StreamSequenceKey)
				if st, _ := testenv.Attr(s, tnats.StreamKey); st.AsString() != subj || !seqs[uint64(seq.AsInt64())] {
					t.Fatalf("send span stream %q sequence %d, not one of the acks", st.AsString(), seq.AsInt64())
				}
				if s.Status().Code == codes.Error {
					t.Fatalf("acknowledged publish has status Error: %v", s.Status())
				}
			}

			// A future read only once its span has ended still tells the
			// ack.
			late, err := tjs.PublishAsync(testenv.Parent(true), subj, []byte("late"))
			if err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, "the late send span", 5*time.Second, func() bool { return len(tel.Named("send "+subj)) == n+1 })
			select {
			case ack := <-late.Ok():
				if ack.Sequence != n+1 {
					t.Fatalf("late future acked sequence %d, want %d", ack.Sequence, n+1)
				}
			case err := <-late.Err():
				t.Fatalf("late future: %v", err)
			case <-time.After(5 * time.Second):
				t.Fatal("late future has no outcome")
			}

			// The same message twice while the first is pending (nats.go
			// refuses the second at once): each publish's span ends once.
			again := unique(t, "again")
			stream(t, tjs.JetStream, jetstream.StreamConfig{Name: again, Subjects: []string{again}})
			m := &natsgo.Msg{Subject: again, Data: []byte("twice")}
			f1, err1 := tjs.PublishMsgAsync(testenv.Parent(true), m)
			_, err2 := tjs.PublishMsgAsync(testenv.Parent(true), m)
			if err1 != nil {
				t.Fatal(err1)
			}
			select {
			case <-f1.Ok():
			case err := <-f1.Err():
				t.Fatal(err)
			case <-time.After(10 * time.Second):
				t.Fatal("no PubAck")
			}
			testenv.WaitFor(t, "both send spans", 5*time.Second, func() bool { return len(tel.Named("send "+again)) == 2 })
			failed := 0
			for _, s := range tel.Named("send " + again) {
				if s.Status().Code == codes.Error {
					failed++
				}
			}
			if want := map[bool]int{true: 1, false: 0}[err2 != nil]; failed != want {
				t.Fatalf("%d failed send spans, want %d (second publish error: %v)", failed, want, err2)
			}

			// No stream listens on this subject: the ack is an error.
			nowhere := unique(t, "nostream")
			f, err := tjs.PublishAsync(testenv.Parent(true), nowhere, []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-f.Ok():
				t.Fatal("publish to a subject without a stream was acknowledged")
			case <-f.Err():
			case <-time.After(10 * time.Second):
				t.Fatal("no error for a publish without a stream")
			}
			testenv.WaitFor(t, "failed send span", 5*time.Second, func() bool { return len(tel.Named("send "+nowhere)) == 1 })
			if s := tel.Named("send " + nowhere)[0]; s.Status().Code != codes.Error {
				t.Fatalf("failed async publish: status %v", s.Status())
			}
		})
	}
}
