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
	Remove: func(t testing.TB, name string) {
		conn, err := amqp091.Dial(testenv.AMQP(t))
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
	},
	// RabbitMQ requeues a dead connection's unacked deliveries at once.
	Redelivery: time.Second,
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
