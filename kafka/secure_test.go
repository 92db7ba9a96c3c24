package kafka_test

import (
	"context"
	"errors"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/kafka"
)

// TestDeadLetterOnSecuredCluster runs a Consumer whose reader
// authenticates (SASL PLAIN, alone and over TLS) against a cluster that
// refuses anyone else, and dead-letters a message. The Consumer's own
// dead-letter writer must connect the way the reader does: before, it
// dialed without TLS or SASL, every write failed, and the message held its
// partition for ever.
func TestDeadLetterOnSecuredCluster(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "SASL", true: "SASL over TLS"}[withTLS], func(t *testing.T) {
			addrs, dialer := testenv.SecureKafka(t, withTLS)
			topic, dlq := newTopic("secure"), newTopic("secure-dlq")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()

			// The cluster is secured: a client without credentials gets nowhere.
			anon := &kafkago.Writer{Addr: kafkago.TCP(addrs...), Topic: topic, AllowAutoTopicCreation: true,
				MaxAttempts: 1, Transport: &kafkago.Transport{}}
			actx, acancel := context.WithTimeout(ctx, 5*time.Second)
			err := anon.WriteMessages(actx, kafkago.Message{Value: []byte("anonymous")})
			acancel()
			_ = anon.Close()
			anon.Transport.(*kafkago.Transport).CloseIdleConnections()
			if err == nil {
				t.Fatal("an unauthenticated write succeeded: the cluster is not secured")
			}

			tr := &kafkago.Transport{TLS: dialer.TLS, SASL: dialer.SASLMechanism}
			defer tr.CloseIdleConnections()
			w := &kafkago.Writer{Addr: kafkago.TCP(addrs...), Topic: topic, Transport: tr, AllowAutoTopicCreation: true,
				BatchTimeout: time.Millisecond}
			defer w.Close()
			if err := w.WriteMessages(ctx, kafkago.Message{Key: []byte("k"), Value: []byte("poison")}); err != nil {
				t.Fatalf("authenticated write: %v", err)
			}

			r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: addrs, GroupID: topic + "-group", Topic: topic,
				StartOffset: kafkago.FirstOffset, MaxWait: 100 * time.Millisecond, Dialer: dialer,
				SessionTimeout: 6 * time.Second, RebalanceTimeout: 2 * time.Second, HeartbeatInterval: 500 * time.Millisecond})
			c := kafka.NewConsumer(r, func(context.Context, kafkago.Message) error {
				return tracebridge.Permanent(errors.New("cannot handle it"))
			}, tracebridge.WithDeadLetter(dlq), tracebridge.WithRetry(1, 10*time.Millisecond, 50*time.Millisecond))
			stop := runConsumer(t, c.Run)

			dr := kafkago.NewReader(kafkago.ReaderConfig{Brokers: addrs, GroupID: dlq + "-reader", GroupTopics: []string{dlq},
				StartOffset: kafkago.FirstOffset, MaxWait: 100 * time.Millisecond, Dialer: dialer,
				SessionTimeout: 6 * time.Second, RebalanceTimeout: 2 * time.Second, HeartbeatInterval: 500 * time.Millisecond})
			defer dr.Close()
			rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
			defer rcancel()
			m, err := dr.ReadMessage(rctx)
			if err != nil {
				t.Fatalf("no dead letter on %q through the SASL listener: %v", dlq, err)
			}
			if string(m.Value) != "poison" || string(m.Key) != "k" || headerValue(m.Headers, "dead-letter-source") != topic {
				t.Errorf("dead letter: key %q value %q source %q", m.Key, m.Value, headerValue(m.Headers, "dead-letter-source"))
			}
			stop()
		})
	}
}
