package amqp_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// TestHostileHeadersBoundedRetention publishes messages whose tracing
// headers are as large as RabbitMQ takes: a message's header table must fit
// in one frame (frame_max, 128 KiB by default), and a larger one makes the
// broker close the connection. A consumer's handler forwards each message
// twice with a wrapped publisher. Every handler must get the journey, and
// the messages may leave at most testenv.MaxRetainedPerHostileMessage each
// behind in the consumer and the publisher.
func TestHostileHeadersBoundedRetention(t *testing.T) {
	url := testenv.AMQP(t)
	conn, ch := dial(t, url)
	size := conn.Config.FrameSize - 1<<10 // room for the frame and property encoding
	q := uniqueQueue(t, url, "hostile")
	declare(t, ch, q, nil)
	opts := []tracebridge.Option{tracebridge.WithTracerProvider(sdktrace.NewTracerProvider())}
	pub, err := amqp.DialPublisher(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	var (
		mu      sync.Mutex
		handled = map[int]bool{}
		bad     []string
	)
	c := amqp.NewConsumer(url, q, nil, func(ctx context.Context, d amqp091.Delivery) error {
		var i int
		fmt.Sscan(string(d.Body), &i)
		problem := testenv.CheckHostileContext(ctx, i)
		for range 2 {
			// Unroutable and not mandatory: RabbitMQ drops it.
			if err := pub.PublishWithContext(ctx, "", q+".nowhere", false, false, amqp091.Publishing{Body: []byte("fwd")}); err != nil {
				problem += "; forward: " + err.Error()
			}
		}
		mu.Lock()
		defer mu.Unlock()
		handled[i] = true
		if problem != "" {
			bad = append(bad, fmt.Sprintf("message %d: %s", i, problem))
		}
		return nil
	}, opts...)
	stop := runConsumer(t, c.Run)

	headers := func(i int) amqp091.Table {
		h := amqp091.Table{}
		for k, v := range testenv.HostileHeaders(i, size) {
			h[k] = v
		}
		return h
	}
	send := func(i int) {
		t.Helper()
		if err := ch.PublishWithContext(context.Background(), "", q, false, false,
			amqp091.Publishing{Headers: headers(i), Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	waitHandled := func(n int) {
		testenv.WaitFor(t, fmt.Sprintf("%d messages handled", n), 30*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(handled) == n
		})
	}

	send(0) // warm-up: buffers grow to size once
	waitHandled(1)
	t.Logf("frame_max %d; extract of a %d-byte header: %v", conn.Config.FrameSize, size, testenv.TimeExtract(amqp.Carrier(headers(0))))
	before := testenv.HeapAfterGC()
	const n = 64
	for i := 1; i <= n; i++ {
		send(i)
	}
	waitHandled(n + 1)
	testenv.CheckRetained(t, before, n, size)
	runtime.KeepAlive(c)
	runtime.KeepAlive(pub)
	if err := stop(); err != nil {
		t.Error(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad {
		t.Error(b)
	}
}
