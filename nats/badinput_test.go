package nats_test

import (
	"context"
	"strings"
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

const (
	tpA = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	tpB = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
)

// badHeaders are published raw, bypassing the wrapper. want says whether
// the handler's span should be parented on tpA's span.
var badHeaders = []struct {
	name      string
	h         natsgo.Header
	parentedA bool
}{
	{"none", nil, false},
	{"malformed", natsgo.Header{"traceparent": {"00-zz-garbage"}, "tracestate": {"==,,"}}, false},
	{"duplicate", natsgo.Header{"traceparent": {tpA, tpB}}, false},
	{"duplicate across case", natsgo.Header{"traceparent": {tpA}, "Traceparent": {tpB}}, false},
	{"mixed case", natsgo.Header{"TraceParent": {tpA}, "Session-ID": {"mixed"}}, true},
	{"oversized", natsgo.Header{
		"traceparent": {tpA},
		"tracestate":  {strings.Repeat("k=v,", 100) + "x=" + strings.Repeat("y", 200)},
		"baggage":     {strings.Repeat("a=b,", 3000)},
		"session-id":  {strings.Repeat("s", 4000)},
	}, true},
	{"control bytes", natsgo.Header{"traceparent": {"00-\x00\x01"}, "baggage": {"k=%zz;;;=,\x7f"}, "session-id": {"bad\x01id"}}, false},
	{"empty values", natsgo.Header{"traceparent": {""}, "tracestate": {}, "baggage": {""}}, false},
}

func TestCoreBadHeadersReachHandler(t *testing.T) {
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	raw := connect(t, url)
	c := tnats.Wrap(connect(t, url), tel.Options()...)
	subj := unique(t, "bad")
	var mu sync.Mutex
	got := map[string]trace.SpanContext{}
	parents := map[string]trace.SpanContext{}
	sub, err := c.Subscribe(subj, func(ctx context.Context, m *natsgo.Msg) {
		mu.Lock()
		got[string(m.Data)] = trace.SpanContextFromContext(ctx)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = c.Flush()
	for _, tc := range badHeaders {
		if err := raw.PublishMsg(&natsgo.Msg{Subject: subj, Data: []byte(tc.name), Header: tc.h}); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}
	testenv.WaitFor(t, "every message", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == len(badHeaders)
	})
	testenv.WaitFor(t, "spans", 5*time.Second, func() bool { return len(tel.Named("process "+subj)) == len(badHeaders) })
	for _, s := range tel.Named("process " + subj) {
		for name, sc := range got {
			if sc.SpanID() == s.SpanContext().SpanID() {
				parents[name] = s.Parent()
			}
		}
	}
	wantParent, _ := carrier.ParseTraceparent(tpA)
	for _, tc := range badHeaders {
		p := parents[tc.name]
		if tc.parentedA != (p.SpanID() == wantParent.SpanID()) {
			t.Errorf("%s: parent %v, want parented on tpA=%v", tc.name, p.SpanID(), tc.parentedA)
		}
		if !tc.parentedA && p.IsValid() {
			t.Errorf("%s: invalid input still gave a parent %v", tc.name, p)
		}
	}
}

func TestJetStreamBadHeadersAreAcked(t *testing.T) {
	e := newJS(t)
	cons := consumer(t, e.st, jetstream.ConsumerConfig{Durable: "c"})
	c := tnats.NewConsumer(e.js, cons, e.tel.Options()...)
	for _, tc := range badHeaders {
		if _, err := e.js.PublishMsg(context.Background(), &natsgo.Msg{Subject: e.subj, Data: []byte(tc.name), Header: tc.h}); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}
	var mu sync.Mutex
	got := map[string]bool{}
	cc, err := c.Consume(func(ctx context.Context, m jetstream.Msg) error {
		mu.Lock()
		got[string(m.Data())] = true
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	testenv.WaitFor(t, "every message acked", 10*time.Second, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.AckFloor.Stream == uint64(len(badHeaders)) && info.NumAckPending == 0
	})
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(badHeaders) {
		t.Fatalf("handled %d of %d", len(got), len(badHeaders))
	}
}

// A server without header support makes PublishMsg with headers fail; the
// wrapper must still deliver the message, just without its journey.
func TestConnectionWithoutHeaderSupport(t *testing.T) {
	srv := testenv.EmbeddedNATS(t, testenv.NATSConfig{NoHeaderSupport: true, NoJetStream: true})
	tel := testenv.NewTelemetry(t)
	nc := connect(t, srv.URL)
	if nc.HeadersSupported() {
		t.Fatal("server should not support headers")
	}
	c := tnats.Wrap(nc, tel.Options()...)
	subj := unique(t, "nohdr")
	done := make(chan *natsgo.Msg, 1)
	sub, err := c.Subscribe(subj, func(ctx context.Context, m *natsgo.Msg) {
		if !trace.SpanContextFromContext(ctx).IsValid() {
			t.Error("no process span")
		}
		done <- m
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = c.Flush()
	ctx := carrier.ContextWithSession(context.Background(), "nohdr")
	if err := c.Publish(ctx, subj, []byte("hi")); err != nil {
		t.Fatalf("publish without header support: %v", err)
	}
	select {
	case m := <-done:
		if string(m.Data) != "hi" || len(m.Header) != 0 {
			t.Fatalf("got %q with headers %v", m.Data, m.Header)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("message lost")
	}
	if len(tel.Named("send "+subj)) != 1 {
		t.Fatal("send span missing")
	}
}

func TestHeaderCarrier(t *testing.T) {
	h := natsgo.Header{"TraceParent": {"old"}, "X-Other": {"1"}}
	c := tnats.HeaderCarrier(h)
	if c.Get("traceparent") != "old" || c.Get("TRACEPARENT") != "old" {
		t.Fatal("case-insensitive read failed")
	}
	c.Set("Traceparent", "new")
	if _, ok := h["TraceParent"]; ok || h.Get("traceparent") != "new" || len(h) != 2 {
		t.Fatalf("Set did not replace the case variant with a lowercase key: %v", h)
	}
	h.Add("Baggage", "a=1")
	h.Add("baggage", "b=2")
	if v := c.Values("baggage"); len(v) != 2 {
		t.Fatalf("Values across case variants = %v", v)
	}
	var empty tnats.HeaderCarrier
	if empty.Get("x") != "" || empty.Values("x") != nil || len(empty.Keys()) != 0 {
		t.Fatal("nil carrier misbehaves")
	}
}
