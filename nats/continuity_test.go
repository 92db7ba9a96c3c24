package nats_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

const (
	sessions    = 100
	perSession  = 100
	numMessages = sessions * perSession
)

var msgKey = attribute.Key("test.msg")

func sessionOf(i int) string { return fmt.Sprintf("sess-%03d", i/perSession) }

// produceAll publishes numMessages from one goroutine per session. Each
// message is published under a span of its own ("produce") that names it,
// with the session and a baggage member carrying its number.
func produceAll(t *testing.T, tel *testenv.Telemetry, publish func(ctx context.Context, i int) error) {
	t.Helper()
	tr := tel.TracerProvider.Tracer("test")
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range perSession {
				i := s*perSession + k
				ctx := carrier.ContextWithSession(context.Background(), sessionOf(i))
				m, _ := baggage.NewMember("msg", strconv.Itoa(i))
				b, _ := baggage.New(m)
				ctx = baggage.ContextWithBaggage(ctx, b)
				ctx, span := tr.Start(ctx, "produce", trace.WithAttributes(msgKey.Int(i)))
				err := publish(ctx, i)
				span.End()
				if err != nil {
					errs <- fmt.Errorf("message %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// handlerRecord is what every continuity handler records.
func handlerRecord(sn *seen, ctx context.Context, data []byte) {
	i, err := strconv.Atoi(string(data))
	if err != nil {
		return
	}
	sn.record(i, carrier.SessionFromContext(ctx), baggage.FromContext(ctx).Member("msg").Value(),
		trace.SpanContextFromContext(ctx))
}

// checkContinuity asserts every message's process span is a child of its
// send span, which is a child of the producer span that names the same
// message, and that the handler saw the message's session and baggage.
func checkContinuity(t *testing.T, tel *testenv.Telemetry, sn *seen, processName, sendName string) {
	t.Helper()
	testenv.WaitFor(t, "process spans to end", 30*time.Second, func() bool { return len(tel.Named(processName)) >= numMessages })
	all := bySpanID(tel.Ended())
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if len(sn.spans) != numMessages || sn.dups != 0 {
		t.Fatalf("handled %d distinct messages (%d duplicates), want %d", len(sn.spans), sn.dups, numMessages)
	}
	bad := 0
	for i := range numMessages {
		fail := func(format string, a ...any) {
			if bad++; bad <= 5 {
				t.Errorf("message %d: "+format, append([]any{i}, a...)...)
			}
		}
		if got := sn.sessions[i]; got != sessionOf(i) {
			fail("session %q, want %q", got, sessionOf(i))
		}
		if got := sn.bags[i]; got != strconv.Itoa(i) {
			fail("baggage msg=%q", got)
		}
		proc, ok := all[sn.spans[i].SpanID()]
		if !ok || proc.Name() != processName || proc.SpanKind() != trace.SpanKindConsumer {
			fail("no %q span", processName)
			continue
		}
		send, ok := all[proc.Parent().SpanID()]
		if !ok || send.Name() != sendName || send.SpanKind() != trace.SpanKindProducer {
			fail("process span's parent is not a %q span", sendName)
			continue
		}
		prod, ok := all[send.Parent().SpanID()]
		if v, _ := testenv.Attr(prod, msgKey); !ok || v.AsInt64() != int64(i) {
			fail("send span's parent names message %d", v.AsInt64())
			continue
		}
		if proc.SpanContext().TraceID() != prod.SpanContext().TraceID() {
			fail("process span on another trace")
		}
		if v, _ := testenv.Attr(proc, "session.id"); v.AsString() != sessionOf(i) {
			fail("process span session.id %q", v.AsString())
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d messages broke continuity", bad, numMessages)
	}
	if sn.maxIn < 2 {
		t.Fatalf("handlers never ran concurrently (max in flight %d)", sn.maxIn)
	}
}

func TestCoreContinuity(t *testing.T) {
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	pub := tnats.Wrap(connect(t, url), tel.Options()...)
	sub := tnats.Wrap(connect(t, url), tel.Options(tracebridge.WithConcurrency(8))...)
	subj := unique(t, "cont")

	sn := newSeen()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan *natsgo.Msg, numMessages)
	s, err := sub.ChanSubscribe(ctx, subj, ch, func(ctx context.Context, m *natsgo.Msg) {
		sn.enter()
		defer sn.leave()
		if len(m.Data) < 3 {
			time.Sleep(2 * time.Millisecond) // lets the first handlers overlap
		}
		handlerRecord(sn, ctx, m.Data)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unsubscribe()
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	produceAll(t, tel, func(ctx context.Context, i int) error {
		return pub.Publish(ctx, subj, []byte(strconv.Itoa(i)))
	})
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "all messages handled", 60*time.Second, func() bool { return sn.count() == numMessages })
	checkContinuity(t, tel, sn, "process "+subj, "send "+subj)
}

func TestJetStreamContinuity(t *testing.T) {
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	nc := connect(t, url)
	// NewJetStream: the async publishes' spans end in the JetStream's own
	// ack handlers (TestAsyncPublishSpans covers WrapJetStream's futures).
	tjs, err := tnats.NewJetStream(nc, []jetstream.JetStreamOpt{jetstream.WithPublishAsyncMaxPending(1024)}, tel.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	js := tjs.JetStream
	subj := unique(t, "jscont")
	st := stream(t, js, jetstream.StreamConfig{Name: subj, Subjects: []string{subj}})
	cons := consumer(t, st, jetstream.ConsumerConfig{Durable: "c", MaxAckPending: numMessages, AckWait: time.Minute})

	var futMu sync.Mutex
	var futs []jetstream.PubAckFuture
	produceAll(t, tel, func(ctx context.Context, i int) error {
		// With 1024 publishes pending, the next one waits for a PubAck to
		// free a slot, by default for only 200ms before failing: on a
		// loaded machine the server's acks take longer than that. The
		// test is about what each message carries, not about how fast
		// the server acks, so a publish may wait as long as a PubAck.
		f, err := tjs.PublishAsync(ctx, subj, []byte(strconv.Itoa(i)), jetstream.WithStallWait(30*time.Second))
		if err != nil {
			return err
		}
		futMu.Lock()
		futs = append(futs, f)
		futMu.Unlock()
		return nil
	})
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("async publish: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("no PubAck after 30s")
		}
	}

	sn := newSeen()
	c := tnats.NewConsumer(js, cons, tel.Options(tracebridge.WithConcurrency(8))...)
	cc, err := c.Consume(func(ctx context.Context, m jetstream.Msg) error {
		sn.enter()
		defer sn.leave()
		if len(m.Data()) < 3 {
			time.Sleep(2 * time.Millisecond)
		}
		handlerRecord(sn, ctx, m.Data())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "all messages handled", 90*time.Second, func() bool { return sn.count() == numMessages })
	cc.Stop()
	<-cc.Closed()
	checkContinuity(t, tel, sn, "process "+subj, "send "+subj)

	// Every send span carries the PubAck's stream and sequence.
	for _, s := range tel.Named("send " + subj)[:10] {
		if v, _ := testenv.Attr(s, tnats.StreamKey); v.AsString() != subj {
			t.Fatalf("send span stream %q", v.AsString())
		}
		if v, _ := testenv.Attr(s, tnats.StreamSequenceKey); v.AsInt64() < 1 {
			t.Fatalf("send span sequence %d", v.AsInt64())
		}
	}
	testenv.WaitFor(t, "acks to land", 10*time.Second, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
}
