package nats_test

import (
	"context"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// With WithParentBasedSampling, a message produced under an unsampled
// parent carries that parent's context itself (no producer span ID in
// between) and starts no span on either side, while a sampled journey is
// traced as always and both are counted in the metrics.
func TestParentBasedSamplingPassesUnsampledJourneysThrough(t *testing.T) {
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	opts := tel.Options(tracebridge.WithParentBasedSampling())
	pub := tnats.Wrap(connect(t, url), opts...)
	sub := tnats.Wrap(connect(t, url), opts...)
	subj := unique(t, "pb")

	type seenMsg struct {
		sc      trace.SpanContext
		session string
	}
	got := make(chan seenMsg, 2)
	s, err := sub.Subscribe(subj, func(ctx context.Context, _ *natsgo.Msg) {
		got <- seenMsg{trace.SpanContextFromContext(ctx), carrier.SessionFromContext(ctx)}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unsubscribe()
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}

	receive := func() seenMsg {
		select {
		case m := <-got:
			return m
		case <-time.After(5 * time.Second):
			t.Fatal("no message")
			return seenMsg{}
		}
	}

	unsampled := testenv.Parent(false)
	if err := pub.Publish(unsampled, subj, []byte("u")); err != nil {
		t.Fatal(err)
	}
	m := receive()
	parent := trace.SpanContextFromContext(unsampled)
	if m.sc.TraceID() != parent.TraceID() || m.sc.SpanID() != parent.SpanID() || m.sc.IsSampled() {
		t.Fatalf("handler context %v, want the unsampled parent %v itself", m.sc, parent)
	}
	if m.session != carrier.SessionFromContext(unsampled) {
		t.Fatalf("session %q lost", m.session)
	}

	sampled := testenv.Parent(true)
	if err := pub.Publish(sampled, subj, []byte("s")); err != nil {
		t.Fatal(err)
	}
	m = receive()
	testenv.WaitFor(t, "process span", 5*time.Second, func() bool { return len(tel.Named("process "+subj)) == 1 })
	sends := tel.Named("send " + subj)
	if len(sends) != 1 || len(tel.Ended()) != 2 {
		t.Fatalf("%d spans (%d send), want one send and one process span, of the sampled message only", len(tel.Ended()), len(sends))
	}
	proc := tel.Named("process " + subj)[0]
	if proc.Parent().SpanID() != sends[0].SpanContext().SpanID() || !m.sc.Equal(proc.SpanContext()) {
		t.Fatal("sampled message: process span is not the send span's child, or not the handler's context")
	}
	if n, _ := tel.SumInt(t, "messaging.client.sent.messages"); n != 2 {
		t.Fatalf("sent.messages = %d, want 2: an unsampled message still counts", n)
	}
	if n, _ := tel.SumInt(t, "messaging.client.consumed.messages"); n != 2 {
		t.Fatalf("consumed.messages = %d, want 2", n)
	}
}
