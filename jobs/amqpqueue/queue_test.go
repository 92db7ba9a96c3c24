package amqpqueue_test

import (
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	tbamqp "github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/jobs/amqpqueue"
	"github.com/tracebridge/tracebridge/jobs/internal/queuetest"
)

var broker = queuetest.Broker{
	Open: func(t testing.TB, name string) jobs.Queue {
		q, err := amqpqueue.New(testenv.AMQP(t), amqpqueue.Config{Queue: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close() })
		return q
	},
	Remove: func(t testing.TB, name string) { removeQueues(t, testenv.AMQP(t), name) },
	// RabbitMQ requeues a dead connection's unacked deliveries at once.
	Redelivery: time.Second,
	DeadLetter: func(t testing.TB, name, dead string) (jobs.Queue, func(testing.TB) queuetest.Raw) {
		q, err := amqpqueue.New(testenv.AMQP(t), amqpqueue.Config{Queue: name, DeadLetter: dead})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close() })
		ch := channel(t)
		return q, func(t testing.TB) queuetest.Raw {
			deadline := time.Now().Add(30 * time.Second)
			for {
				d, ok, err := ch.Get(dead, true)
				if err != nil {
					t.Fatalf("get from %q: %v", dead, err)
				}
				if ok {
					raw := queuetest.Raw{Body: d.Body, Headers: map[string]string{}}
					for k, v := range d.Headers {
						raw.Headers[k] = fmt.Sprint(v)
					}
					return raw
				}
				if time.Now().After(deadline) {
					t.Fatalf("no dead letter on %q", dead)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	},
	Garbage: func(t testing.TB, name string, m queuetest.Raw) {
		h := amqp091.Table{}
		for k, v := range m.Headers {
			h[k] = v
		}
		if err := channel(t).Publish("", name, true, false, amqp091.Publishing{Headers: h, Body: m.Body}); err != nil {
			t.Fatal(err)
		}
	},
}

// removeQueues deletes the work queue name and its delay queue.
func removeQueues(t testing.TB, url, name string) {
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", testenv.AMQPURL(), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	for _, q := range []string{name, name + tbamqp.DelayQueueSuffix} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Errorf("delete queue %q: %v", q, err)
		}
	}
}

// channel is a channel on a connection of its own, closed after t.
func channel(t testing.TB) *amqp091.Channel {
	conn, err := amqp091.Dial(testenv.AMQP(t))
	if err != nil {
		t.Fatalf("dial %s: %v", testenv.AMQPURL(), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	return ch
}

// TestQueue runs the broker-queue suite on RabbitMQ: a second process
// continues the journey, a killed worker's unacked job is requeued when
// its connection drops, retries go through the delay queue with links.
func TestQueue(t *testing.T) {
	if queuetest.Child(t, broker) {
		return
	}
	queuetest.Run(t, broker, fmt.Sprintf("tbjobs-%d", time.Now().UnixNano()))
}
