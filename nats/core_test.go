package nats_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

func TestRequestReplyIsOneTraceWithLinkBack(t *testing.T) {
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	responder := tnats.Wrap(connect(t, url), tel.Options()...)
	requester := tnats.Wrap(connect(t, url), tel.Options()...)
	subj := unique(t, "rr")

	sub, err := responder.Subscribe(subj, func(ctx context.Context, m *natsgo.Msg) {
		if err := responder.Respond(ctx, m, append([]byte("re:"), m.Data...)); err != nil {
			t.Errorf("respond: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := responder.Flush(); err != nil {
		t.Fatal(err)
	}

	ctx, root := tel.TracerProvider.Tracer("test").Start(context.Background(), "caller")
	reply, err := requester.Request(ctx, subj, []byte("ping"), 5*time.Second)
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	if string(reply.Data) != "re:ping" {
		t.Fatalf("reply %q", reply.Data)
	}

	testenv.WaitFor(t, "process span", 5*time.Second, func() bool { return len(tel.Named("process "+subj)) == 1 })
	reqs := tel.Named("request " + subj)
	if len(reqs) != 1 {
		t.Fatalf("%d request spans", len(reqs))
	}
	req, proc := reqs[0], tel.Named("process " + subj)[0]
	if req.SpanKind() != trace.SpanKindClient || req.Parent().SpanID() != root.SpanContext().SpanID() {
		t.Fatalf("request span kind %v parent %v", req.SpanKind(), req.Parent().SpanID())
	}
	if proc.Parent().SpanID() != req.SpanContext().SpanID() || proc.SpanContext().TraceID() != root.SpanContext().TraceID() {
		t.Fatal("responder's process span is not a child of the request span on the caller's trace")
	}
	if !hasLink(req, proc.SpanContext().SpanID(), "reply") {
		t.Fatalf("request span does not link the responder's span: %v", req.Links())
	}
}

func TestRequestTimeoutIsAnErrorOnTheSpan(t *testing.T) {
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	c := tnats.Wrap(connect(t, url), tel.Options()...)
	subj := unique(t, "nobody")
	_, err := c.Request(context.Background(), subj, nil, 200*time.Millisecond)
	if err == nil || !errors.Is(err, natsgo.ErrNoResponders) && !errors.Is(err, natsgo.ErrTimeout) {
		t.Fatalf("err = %v", err)
	}
	s := tel.Named("request " + subj)
	if len(s) != 1 || s[0].Status().Code != codes.Error {
		t.Fatalf("want one request span with status Error, got %v", s)
	}
}

// TestRequestTimeoutFailsAlikeWithAnyContext: a request nobody answers
// fails at its timeout with context.DeadlineExceeded whether or not its
// context can end (Request times a context that cannot with nats.go's own
// timer), and a cancelled context ends the wait early.
func TestRequestTimeoutFailsAlikeWithAnyContext(t *testing.T) {
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	silent := connect(t, url)
	subj := unique(t, "silent")
	if _, err := silent.Subscribe(subj, func(*natsgo.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := silent.Flush(); err != nil {
		t.Fatal(err)
	}
	c := tnats.Wrap(connect(t, url), tel.Options()...)
	cancellable, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, ctx := range []context.Context{context.Background(), cancellable} {
		start := time.Now()
		_, err := c.Request(ctx, subj, nil, 200*time.Millisecond)
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, natsgo.ErrTimeout) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		if waited := time.Since(start); waited < 200*time.Millisecond {
			t.Fatalf("gave up after %v", waited)
		}
	}
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := c.Request(cancellable, subj, nil, time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v after the context was cancelled, want context.Canceled", err)
	}
	if s := tel.Named("request " + subj); len(s) != 3 || s[0].Status().Code != codes.Error {
		t.Fatalf("want three request spans with status Error, got %v", s)
	}
}

func TestQueueGroupAndWildcardAttributes(t *testing.T) {
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	c := tnats.Wrap(connect(t, url), tel.Options()...)
	base := unique(t, "wild")
	var got atomic.Int32
	sub, err := c.QueueSubscribe(base+".*", "workers", func(ctx context.Context, m *natsgo.Msg) {
		if !trace.SpanContextFromContext(ctx).IsValid() {
			t.Error("handler context has no span")
		}
		got.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(context.Background(), base+".eu", []byte("x")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "delivery", 5*time.Second, func() bool { return len(tel.Named("process "+base+".*")) == 1 })
	s := tel.Named("process " + base + ".*")[0]
	for k, want := range map[string]string{
		"messaging.system":               "nats",
		"messaging.consumer.group.name":  "workers",
		"messaging.destination.template": base + ".*",
		"messaging.destination.name":     base + ".eu",
		"messaging.operation.type":       "process",
		"server.address":                 "127.0.0.1",
	} {
		if v, _ := testenv.Attr(s, attributeKey(k)); v.String() != want {
			t.Errorf("%s = %q, want %q", k, v.String(), want)
		}
	}
}

func TestCoreHandlerPanicIsRecordedAndSubscriptionSurvives(t *testing.T) {
	url := testenv.NATS(t)
	tel := testenv.NewTelemetry(t)
	c := tnats.Wrap(connect(t, url), tel.Options(tracebridge.WithLogger(discardLogger()))...)
	subj := unique(t, "panic")
	var n atomic.Int32
	sub, err := c.Subscribe(subj, func(ctx context.Context, m *natsgo.Msg) {
		if n.Add(1) == 1 {
			panic("boom")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = c.Flush()
	for range 2 {
		if err := c.Publish(context.Background(), subj, nil); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, "both messages", 5*time.Second, func() bool { return len(tel.Named("process "+subj)) == 2 })
	errs := 0
	for _, s := range tel.Named("process " + subj) {
		if s.Status().Code == codes.Error {
			errs++
			if v, _ := testenv.Attr(s, "error.type"); v.AsString() != "panic" {
				t.Fatalf("error.type %q", v.AsString())
			}
		}
	}
	if errs != 1 {
		t.Fatalf("%d spans with status Error, want 1", errs)
	}
}
