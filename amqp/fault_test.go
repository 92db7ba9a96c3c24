package amqp_test

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

const rabbitmqctl = "/usr/sbin/rabbitmqctl"

func ctl(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(rabbitmqctl, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}

func TestBrokerRestartMidStream(t *testing.T) {
	testenv.SkipUnlessFaultTests(t)
	baseline := runtime.NumGoroutine()
	url := testenv.ExclusiveAMQP(t)
	t.Cleanup(func() {
		// Whatever happened, leave the node running for the next test.
		_ = exec.Command(rabbitmqctl, "start_app").Run()
		_ = exec.Command(rabbitmqctl, "await_startup").Run()
	})
	tel := testenv.NewTelemetry(t)
	q := uniqueQueue(t, url, "fault")
	{
		conn, ch := dial(t, url)
		declare(t, ch, q, nil)
		_ = conn.Close()
	}
	const total = 2000

	var mu sync.Mutex
	handled := map[string]trace.SpanContext{}
	var reconnects atomic.Int32
	c := amqp.NewConsumer(url, q, func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare(q, true, false, false, false, nil)
		return err
	}, func(ctx context.Context, d amqp091.Delivery) error {
		if carrier.SessionFromContext(ctx) != "sess-fault" {
			return fmt.Errorf("message %s lost its session", d.MessageId)
		}
		time.Sleep(500 * time.Microsecond) // keep the stream going while the node stops
		mu.Lock()
		handled[d.MessageId] = trace.SpanContextFromContext(ctx)
		mu.Unlock()
		return nil
	}, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConcurrency(4))
	c.OnReconnect = func() { reconnects.Add(1) }
	stop := runConsumer(t, c.Run)

	p, err := amqp.DialPublisher(url, tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConfirms(),
		tracebridge.WithReconnectWait(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx := carrier.ContextWithSession(context.Background(), "sess-fault")
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			msg := amqp091.Publishing{MessageId: fmt.Sprint(i), DeliveryMode: amqp091.Persistent, Body: []byte("x")}
			// At least once: a confirm lost to the restart means publish again.
			for tries := 0; ; tries++ {
				err := p.PublishWithContext(ctx, "", q, false, false, msg)
				if err == nil {
					break
				}
				if tries > 50 {
					t.Errorf("publish %d: %v", i, err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	publish(0, total/2)
	testenv.WaitFor(t, "consumption to start", 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) > 200
	})
	ctl(t, "stop_app")
	stopped := time.Now()
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(2 * time.Second)
		out, err := exec.Command(rabbitmqctl, "start_app").CombinedOutput()
		if err != nil {
			t.Errorf("start_app: %v\n%s", err, out)
		}
	}()
	publish(total/2, total) // waits for the publisher to reconnect
	<-restarted
	t.Logf("node down and back; publishing resumed %s after stop_app", time.Since(stopped).Round(time.Millisecond))
	testenv.WaitFor(t, "every message handled after the restart", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == total
	})
	if reconnects.Load() == 0 {
		t.Error("the consumer never reconnected")
	}
	if err := stop(); err != nil {
		t.Fatalf("consumer: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Logf("publisher close: %v", err)
	}

	// Journeys: every message's handler ran under a process span whose parent
	// is one of that message's send spans.
	sends := map[trace.SpanID]string{}
	for _, s := range tel.Named("send " + q) {
		id, _ := attr(s, "messaging.message.id")
		sends[s.SpanContext().SpanID()] = id
	}
	parents := map[trace.SpanID]trace.SpanID{}
	for _, s := range tel.Named("process " + q) {
		parents[s.SpanContext().SpanID()] = s.Parent().SpanID()
	}
	broken := 0
	for id, sc := range handled {
		if sends[parents[sc.SpanID()]] != id {
			broken++
		}
	}
	if broken > 0 {
		t.Errorf("%d of %d journeys broken across the restart", broken, total)
	}

	// No goroutine outlives the consumer and publisher.
	deadline := time.Now().Add(15 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, baseline %d:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}
