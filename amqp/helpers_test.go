package amqp_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

var queueSeq atomic.Int64

// uniqueQueue names a queue for one test; it and its delay and dead-letter
// queues are deleted after t.
func uniqueQueue(t testing.TB, url, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("tb.%s.%d.%d", prefix, time.Now().UnixNano(), queueSeq.Add(1))
	t.Cleanup(func() {
		conn, err := amqp091.Dial(url)
		if err != nil {
			return // a fault test may leave the broker briefly unreachable
		}
		defer conn.Close()
		for _, q := range []string{name, name + ".retry", name + ".dlq"} {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(q, false, false, false)
				_ = ch.Close()
			}
		}
	})
	return name
}

func dial(t testing.TB, url string) (*amqp091.Connection, *amqp091.Channel) {
	t.Helper()
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	return conn, ch
}

func declare(t testing.TB, ch *amqp091.Channel, name string, args amqp091.Table) {
	t.Helper()
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s: %v", name, err)
	}
}

// runConsumer runs c until the test ends (or stop is called) and reports
// Run's error.
func runConsumer(t testing.TB, run func(context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- run(ctx) }()
	var done atomic.Bool
	var result error
	stop = func() error {
		if done.Swap(true) {
			return result
		}
		cancel()
		select {
		case result = <-errc:
		case <-time.After(30 * time.Second):
			result = fmt.Errorf("consumer did not stop within 30s")
		}
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func attr(s sdktrace.ReadOnlySpan, key string) (string, bool) {
	v, ok := testenv.Attr(s, attribute.Key(key))
	return v.String(), ok
}
