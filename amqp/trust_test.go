package amqp_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// forgedTables are AMQP-only forgeries: the broker's own counting headers
// with values a publisher chose, of every type an amqp091.Table holds.
func forgedTables(q string) map[string]amqp091.Table {
	death := func(count any) []any {
		return []any{amqp091.Table{"count": count, "queue": q + amqp.DelayQueueSuffix, "reason": "expired", "exchange": ""}}
	}
	return map[string]amqp091.Table{
		"xdc-int64":         {"x-delivery-count": int64(100)},
		"xdc-two":           {"x-delivery-count": int64(2)},
		"xdc-float":         {"x-delivery-count": float64(2.5)},
		"xdc-string":        {"x-delivery-count": "7"},
		"xdc-table":         {"x-delivery-count": amqp091.Table{"count": int64(9)}},
		"death-last":        {"x-death": death(int64(2))},
		"death-huge":        {"x-death": death(int64(1 << 40))},
		"death-hundred":     {"x-death": death(int32(100))},
		"death-negative":    {"x-death": death(int64(-5))},
		"death-float":       {"x-death": death(float64(2))},
		"death-string":      {"x-death": death("2")},
		"death-not-list":    {"x-death": amqp091.Table{"count": int64(2)}},
		"death-nested":      {"x-death": []any{[]any{amqp091.Table{"count": int64(2)}}, nil, "junk"}},
		"death-int":         {"x-death": int64(3)},
		"death-and-xdc":     {"x-death": death(int64(1)), "x-delivery-count": int64(1)},
		"attempt-bytes":     {"retry-attempt": []byte("3")},
		"attempt-int":       {"retry-attempt": int64(3)},
		"attempt-float":     {"retry-attempt": float64(3)},
		"attempt-table":     {"retry-attempt": amqp091.Table{"n": int64(3)}},
		"previous-bytes":    {"retry-attempt": []byte("2"), "retry-previous": []byte(testenv.ForgedPrevious)},
		"dead-letter-typed": {"dead-letter-attempts": int64(3), "dead-letter-reason": []any{"x"}},
	}
}

// TestForgedHeaders publishes messages with forged retry, delivery-count,
// dead-letter and journey headers to a Consumer on a classic and on a
// quorum queue, trusted and untrusted (WithTrust before and after
// WithPropagators). No header may cost a message any of its attempts:
// without a dead-letter queue the last one rejects it for good.
func TestForgedHeaders(t *testing.T) {
	url := testenv.AMQP(t)
	for _, kind := range []string{"classic", "quorum"} {
		for i := range testenv.TrustCases(nil) {
			t.Run(kind+"/"+testenv.TrustCases(nil)[i].Name, func(t *testing.T) {
				tel := testenv.NewTelemetry(t)
				tc := testenv.TrustCases(tel)[i]
				q := uniqueQueue(t, url, "forged")
				_, ch := dial(t, url)
				declare(t, ch, q, amqp091.Table{"x-queue-type": kind})
				seen := testenv.NewSeen()
				opts := append(tel.Options(tc.Opts...),
					tracebridge.WithRetry(testenv.ForgedMaxAttempts, time.Millisecond, 5*time.Millisecond),
					tracebridge.WithConcurrency(4), tracebridge.WithLogger(slog.New(slog.DiscardHandler)))
				c := amqp.NewConsumer(url, q, nil, func(ctx context.Context, d amqp091.Delivery) error {
					return seen.Fail(ctx, d.MessageId)
				}, opts...)
				runConsumer(t, c.Run)

				msgs := testenv.ForgedMessages()
				tables := map[string]amqp091.Table{}
				for _, m := range msgs {
					h := amqp091.Table{}
					for k, v := range m.Headers {
						h[k] = v
					}
					tables[m.ID] = h
				}
				for id, h := range forgedTables(q) {
					tables[id] = h
					msgs = append(msgs, testenv.Forged{ID: id})
				}
				for id, h := range tables {
					if err := ch.PublishWithContext(context.Background(), "", q, false, false,
						amqp091.Publishing{MessageId: id, Headers: h, Body: []byte("x")}); err != nil {
						t.Fatalf("publish %s: %v", id, err)
					}
				}
				testenv.CheckForged(t, tel, tc, msgs, seen, func(id string) []sdktrace.ReadOnlySpan {
					var out []sdktrace.ReadOnlySpan
					for _, s := range tel.Named("process " + q) {
						if v, _ := attr(s, "messaging.message.id"); v == id {
							out = append(out, s)
						}
					}
					return out
				})
			})
		}
	}
}
