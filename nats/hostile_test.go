package nats_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// TestHostileHeadersBoundedRetention publishes messages whose tracing
// headers fill the server's max_payload (1 MiB by default, headers
// included), each on a subject of its own about 2 KiB long under a
// wildcard subscription, as a hostile publisher may. The handler forwards
// each one twice with the wrapped connection. Every handler must get the
// journey, and the messages may leave at most
// testenv.MaxRetainedPerHostileMessage each behind.
func TestHostileHeadersBoundedRetention(t *testing.T) {
	url := testenv.NATS(t)
	raw := connect(t, url)
	size := int(raw.MaxPayload()) - 4<<10 // room for the header framing and the subject's echo
	c := tnats.Wrap(connect(t, url), tracebridge.WithTracerProvider(sdktrace.NewTracerProvider()))
	prefix, sink := unique(t, "hostile"), unique(t, "hostile_fwd")

	var (
		mu      sync.Mutex
		handled = map[int]bool{}
		bad     []string
	)
	sub, err := c.Subscribe(prefix+".>", func(ctx context.Context, m *natsgo.Msg) {
		var i int
		fmt.Sscan(string(m.Data), &i)
		problem := testenv.CheckHostileContext(ctx, i)
		for range 2 {
			if err := c.Publish(ctx, sink, []byte("fwd")); err != nil {
				problem += "; forward: " + err.Error()
			}
		}
		mu.Lock()
		defer mu.Unlock()
		handled[i] = true
		if problem != "" {
			bad = append(bad, fmt.Sprintf("message %d: %s", i, problem))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	msg := func(i int) *natsgo.Msg {
		m := &natsgo.Msg{Subject: fmt.Sprintf("%s.%d.%s", prefix, i, strings.Repeat("s", 2<<10)), Data: []byte(fmt.Sprint(i)), Header: natsgo.Header{}}
		for k, v := range testenv.HostileHeaders(i, size) {
			m.Header.Set(k, v)
		}
		return m
	}
	waitHandled := func(n int) {
		testenv.WaitFor(t, fmt.Sprintf("%d messages handled", n), 30*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(handled) == n
		})
	}

	if err := raw.PublishMsg(msg(0)); err != nil { // warm-up: buffers grow to size once
		t.Fatal(err)
	}
	waitHandled(1)
	t.Logf("max_payload %d; extract of a %d-byte header: %v", raw.MaxPayload(), size, testenv.TimeExtract(tnats.HeaderCarrier(msg(0).Header)))
	before := testenv.HeapAfterGC()
	const n = 64
	for i := 1; i <= n; i++ {
		if err := raw.PublishMsg(msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitHandled(n + 1)
	testenv.CheckRetained(t, before, n, size)
	runtime.KeepAlive(c)
	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad {
		t.Error(b)
	}
}
