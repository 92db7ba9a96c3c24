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
	"github.com/tracebridge/tracebridge/jobs/kafkaqueue"
)

// TestQueueOnSecuredCluster runs the queue against a cluster that takes
// only SASL-authenticated clients, with Config.Dialer holding the
// credentials: a push (the job writer), a pop (the group reader) and a
// dead letter (the dead-letter writer) must all get through.
func TestQueueOnSecuredCluster(t *testing.T) {
	addrs, dialer := testenv.SecureKafka(t, false)
	topic := fmt.Sprintf("tbjobs-secure-%d", time.Now().UnixNano())
	dlq := topic + "-dlq"
	q, err := kafkaqueue.New(kafkaqueue.Config{Brokers: addrs, Topic: topic, SessionTimeout: sessionTimeout,
		DeadLetter: dlq, Dialer: dialer})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	e := &jobs.Envelope{ID: "j1", Kind: "k", Payload: []byte("p"), Attempt: 1, EnqueuedAt: time.Now(), Headers: map[string]string{}}
	if err := q.Push(ctx, e, false); err != nil {
		t.Fatalf("push through the SASL listener: %v", err)
	}
	got, err := q.Pop(ctx)
	if err != nil || got.ID != "j1" {
		t.Fatalf("pop: %v, %v", got, err)
	}
	if err := q.Ack(ctx, got); err != nil {
		t.Fatal(err)
	}

	// Not a job: it goes to the dead-letter topic, through the
	// dead-letter writer.
	tr := &kafkago.Transport{SASL: dialer.SASLMechanism}
	defer tr.CloseIdleConnections()
	w := &kafkago.Writer{Addr: kafkago.TCP(addrs...), Topic: topic, Transport: tr, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafkago.Message{Value: []byte("garbage")}); err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	defer pcancel()
	if _, err := q.Pop(pctx); err == nil || !strings.Contains(err.Error(), "moved to") {
		t.Fatalf("pop of a message that is not a job: %v, want it moved to %q", err, dlq)
	}
	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: addrs, GroupID: dlq + "-reader", GroupTopics: []string{dlq},
		StartOffset: kafkago.FirstOffset, MaxWait: 100 * time.Millisecond, Dialer: dialer})
	defer r.Close()
	m, err := r.ReadMessage(pctx)
	if err != nil || string(m.Value) != "garbage" {
		t.Fatalf("dead letter: %q, %v", m.Value, err)
	}
}
