package natsqueue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/jobs/internal/queuetest"
	"github.com/tracebridge/tracebridge/jobs/natsqueue"
)

const ackWait = 2 * time.Second

func connect(t testing.TB) jetstream.JetStream {
	nc, err := natsgo.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatalf("connect to %s: %v", testenv.NATSURL(), err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

var broker = queuetest.Broker{
	Open: func(t testing.TB, name string) jobs.Queue {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q, err := natsqueue.New(ctx, connect(t), natsqueue.Config{Stream: name, AckWait: ackWait})
		if err != nil {
			t.Fatal(err)
		}
		return q
	},
	Remove: func(t testing.TB, name string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := connect(t).DeleteStream(ctx, name); err != nil {
			t.Errorf("delete stream %q: %v", name, err)
		}
	},
	Redelivery: ackWait,
	DeadLetter: func(t testing.TB, name, dead string) (jobs.Queue, func(testing.TB) queuetest.Raw) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		js := connect(t)
		st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: dead, Subjects: []string{dead}})
		if err != nil {
			t.Fatal(err)
		}
		q, err := natsqueue.New(ctx, js, natsqueue.Config{Stream: name, AckWait: ackWait, DeadLetter: dead})
		if err != nil {
			t.Fatal(err)
		}
		return q, func(t testing.TB) queuetest.Raw {
			deadline := time.Now().Add(30 * time.Second)
			for {
				m, err := st.GetMsg(context.Background(), 1)
				if err == nil {
					raw := queuetest.Raw{Body: m.Data, Headers: map[string]string{}}
					for k := range m.Header {
						raw.Headers[k] = m.Header.Get(k)
					}
					return raw
				}
				if time.Now().After(deadline) {
					t.Fatalf("no dead letter on %q: %v", dead, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	},
	Garbage: func(t testing.TB, name string, m queuetest.Raw) {
		h := natsgo.Header{}
		for k, v := range m.Headers {
			h.Set(k, v)
		}
		if _, err := connect(t).PublishMsg(context.Background(), &natsgo.Msg{Subject: name, Data: m.Body, Header: h}); err != nil {
			t.Fatal(err)
		}
	},
}

// TestQueue runs the broker-queue suite on the NATS server: a second
// process continues the journey, a killed worker's job is redelivered after
// AckWait, retries keep their links.
func TestQueue(t *testing.T) {
	if queuetest.Child(t, broker) {
		return
	}
	queuetest.Run(t, broker, fmt.Sprintf("tbjobs-%d", time.Now().UnixNano()))
}
