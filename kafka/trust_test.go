package kafka_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tbkafka "github.com/tracebridge/tracebridge/kafka"
)

// TestForgedHeaders publishes messages whose retry, dead-letter and journey
// headers were forged by a producer outside tracebridge, to a Consumer that
// retries in place and to one that republishes to a retry topic, trusted
// and untrusted (with WithTrust before and after WithPropagators). Every
// message must get all its attempts before it is given up, and under
// Untrusted keep nothing the policy refuses (see testenv.CheckForged).
func TestForgedHeaders(t *testing.T) {
	addrs := testenv.Kafka(t)
	for _, route := range []string{"in-place", "retry-topic"} {
		for i := range testenv.TrustCases(nil) {
			t.Run(route+"/"+testenv.TrustCases(nil)[i].Name, func(t *testing.T) {
				tel := testenv.NewTelemetry(t)
				tc := testenv.TrustCases(tel)[i]
				topic, retry := newTopic("forged"), newTopic("forged-retry")
				ensureTopics(t, addrs, topic, retry)
				topics := []string{topic}
				opts := tel.Options(tc.Opts...)
				opts = append(opts, tracebridge.WithRetry(testenv.ForgedMaxAttempts, time.Millisecond, 5*time.Millisecond),
					tracebridge.WithConcurrency(3), tracebridge.WithLogger(discardLogger()))
				if route == "retry-topic" {
					topics = append(topics, retry)
					opts = append(opts, tracebridge.WithRetryDestination(retry))
				}
				seen := testenv.NewSeen()
				c := tbkafka.NewConsumer(groupReader(addrs, newTopic("g"), 0, topics...),
					func(ctx context.Context, msg kafkago.Message) error { return seen.Fail(ctx, string(msg.Key)) }, opts...)
				runConsumer(t, c.Run)

				msgs := testenv.ForgedMessages()
				w := rawWriter(addrs, topic)
				defer w.Close()
				for _, m := range msgs {
					km := kafkago.Message{Key: []byte(m.ID), Value: []byte("x")}
					for k, v := range m.Headers {
						km.Headers = append(km.Headers, kafkago.Header{Key: k, Value: []byte(v)})
					}
					if err := w.WriteMessages(context.Background(), km); err != nil {
						t.Fatal(err)
					}
				}
				testenv.CheckForged(t, tel, tc, msgs, seen, func(id string) []sdktrace.ReadOnlySpan {
					var out []sdktrace.ReadOnlySpan
					for _, s := range append(tel.Named("process "+topic), tel.Named("process "+retry)...) {
						if v, _ := testenv.Attr(s, "messaging.kafka.message.key"); v.AsString() == id {
							out = append(out, s)
						}
					}
					return out
				})
			})
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
