package kafkaqueue_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/jobs/internal/queuetest"
	"github.com/tracebridge/tracebridge/jobs/kafkaqueue"
)

const sessionTimeout = 6 * time.Second

// TestQueue runs the broker-queue suite on Kafka (an embedded kfake
// cluster unless KAFKA_BROKERS names one, shared with the worker
// subprocess): a second process continues the journey, a killed worker's
// uncommitted jobs go to another group member, retries keep their links.
func TestQueue(t *testing.T) {
	brokers := testenv.Kafka(t)
	b := queuetest.Broker{
		Open: func(t testing.TB, name string) jobs.Queue {
			q, err := kafkaqueue.New(kafkaqueue.Config{Brokers: brokers, Topic: name, SessionTimeout: sessionTimeout})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = q.Close() })
			return q
		},
		Remove: func(t testing.TB, name string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := kafkago.DialContext(ctx, "tcp", brokers[0])
			if err != nil {
				t.Fatalf("dial %s: %v", brokers[0], err)
			}
			defer c.Close()
			if err := c.DeleteTopics(name); err != nil {
				t.Errorf("delete topic %q: %v", name, err)
			}
		},
		Env:        []string{"KAFKA_BROKERS=" + strings.Join(brokers, ",")},
		Redelivery: sessionTimeout,
		DeadLetter: func(t testing.TB, name, dead string) (jobs.Queue, func(testing.TB) queuetest.Raw) {
			q, err := kafkaqueue.New(kafkaqueue.Config{Brokers: brokers, Topic: name, SessionTimeout: sessionTimeout, DeadLetter: dead})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = q.Close() })
			return q, func(t testing.TB) queuetest.Raw {
				// A group reads every partition the dead letter may be on.
				r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: brokers, GroupTopics: []string{dead},
					GroupID: dead + "-reader", StartOffset: kafkago.FirstOffset, MaxWait: 100 * time.Millisecond})
				defer r.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				m, err := r.ReadMessage(ctx)
				if err != nil {
					t.Fatalf("no dead letter on %q: %v", dead, err)
				}
				raw := queuetest.Raw{Body: m.Value, Headers: map[string]string{}}
				for _, h := range m.Headers {
					raw.Headers[h.Key] = string(h.Value)
				}
				return raw
			}
		},
		Garbage: func(t testing.TB, name string, m queuetest.Raw) {
			// A transport of its own, closed here: on kafka-go's shared
			// DefaultTransport the connection would stay open, refreshing
			// metadata every few seconds, and NoLeaks would find kfake's
			// side of it serving those requests.
			tr := &kafkago.Transport{}
			defer tr.CloseIdleConnections()
			w := &kafkago.Writer{Addr: kafkago.TCP(brokers...), Topic: name, AllowAutoTopicCreation: true, Transport: tr}
			defer w.Close()
			msg := kafkago.Message{Value: m.Body}
			for k, v := range m.Headers {
				msg.Headers = append(msg.Headers, kafkago.Header{Key: k, Value: []byte(v)})
			}
			if err := w.WriteMessages(context.Background(), msg); err != nil {
				t.Fatal(err)
			}
		},
	}
	if queuetest.Child(t, b) {
		return
	}
	queuetest.Run(t, b, fmt.Sprintf("tbjobs-%d", time.Now().UnixNano()))
}
