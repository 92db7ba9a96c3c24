package nats_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// TestFaultServerRestartMidStream restarts a file-backed JetStream server
// while messages flow: every publish that got a PubAck is consumed, the
// consumer resumes by itself, and each message keeps its creation context.
func TestFaultServerRestartMidStream(t *testing.T) {
	testenv.SkipUnlessFaultTests(t)
	srv := testenv.EmbeddedNATS(t, testenv.NATSConfig{})
	tel := testenv.NewTelemetry(t)
	opts := []natsgo.Option{natsgo.MaxReconnects(-1), natsgo.ReconnectWait(50 * time.Millisecond)}
	js, err := jetstream.New(connect(t, srv.URL, opts...))
	if err != nil {
		t.Fatal(err)
	}
	subj := unique(t, "fault")
	st := fileStream(t, js, jetstream.StreamConfig{Name: subj, Subjects: []string{subj}, Storage: jetstream.FileStorage,
		Duplicates: time.Minute})
	cons := consumer(t, st, jetstream.ConsumerConfig{Durable: "c", AckWait: 2 * time.Second})
	tjs := tnats.WrapJetStream(js, tel.Options()...)

	var mu sync.Mutex
	acked := map[string]trace.TraceID{} // message ID → creation trace
	handled := map[string]trace.TraceID{}
	c := tnats.NewConsumer(js, cons, tel.Options()...)
	cc, err := c.Consume(func(ctx context.Context, m jetstream.Msg) error {
		mu.Lock()
		handled[string(m.Data())] = trace.SpanContextFromContext(ctx).TraceID()
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

	const total = 300
	restarted := make(chan error, 1)
	for i := range total {
		if i == total/3 {
			go func() { restarted <- srv.Restart() }()
		}
		id := strconv.Itoa(i)
		m := &natsgo.Msg{Subject: subj, Data: []byte(id), Header: natsgo.Header{jetstream.MsgIDHeader: {id}}}
		ctx := carrier.ContextWithSession(context.Background(), "fault")
		// Retry until acknowledged; the message ID makes a retry of a
		// publish that did land a duplicate the server drops, and the
		// traceparent written by the first try is kept (forwarding).
		deadline := time.Now().Add(30 * time.Second)
		for {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := tjs.PublishMsg(pctx, m)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("publish %s never acknowledged: %v", id, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		sc, _ := carrier.ParseTraceparent(tnats.HeaderCarrier(m.Header).Get("traceparent"))
		mu.Lock()
		acked[id] = sc.TraceID()
		mu.Unlock()
	}
	if err := <-restarted; err != nil {
		t.Fatalf("restart: %v", err)
	}
	testenv.WaitFor(t, "every acknowledged publish consumed", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for id := range acked {
			if _, ok := handled[id]; !ok {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	for id, tid := range acked {
		if handled[id] != tid {
			t.Fatalf("message %s handled on trace %v, created on %v", id, handled[id], tid)
		}
	}
	t.Logf("%d acknowledged publishes, all consumed on their creation trace", len(acked))
}
