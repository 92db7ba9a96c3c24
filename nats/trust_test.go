package nats_test

import (
	"context"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	tnats "github.com/tracebridge/tracebridge/nats"
)

// TestForgedHeaders publishes messages whose retry, dead-letter and journey
// headers a publisher outside tracebridge forged to a JetStream Consumer,
// trusted and untrusted (WithTrust before and after WithPropagators). The
// attempt number comes from NumDelivered, which no header can change: every
// message gets all its attempts before it is termed.
func TestForgedHeaders(t *testing.T) {
	url := testenv.NATS(t)
	for i := range testenv.TrustCases(nil) {
		t.Run(testenv.TrustCases(nil)[i].Name, func(t *testing.T) {
			tel := testenv.NewTelemetry(t)
			tc := testenv.TrustCases(tel)[i]
			js, err := jetstream.New(connect(t, url))
			if err != nil {
				t.Fatal(err)
			}
			subj := unique(t, "forged")
			st := stream(t, js, jetstream.StreamConfig{Name: subj, Subjects: []string{subj}})
			cons := consumer(t, st, jetstream.ConsumerConfig{Durable: "c", AckWait: 30 * time.Second})
			seen := testenv.NewSeen()
			c := tnats.NewConsumer(js, cons, append(tel.Options(tc.Opts...),
				tracebridge.WithRetry(testenv.ForgedMaxAttempts, time.Millisecond, 5*time.Millisecond),
				tracebridge.WithConcurrency(4), tracebridge.WithLogger(discardLogger()))...)
			cc, err := c.Consume(func(ctx context.Context, msg jetstream.Msg) error {
				return seen.Fail(ctx, msg.Headers().Get(jetstream.MsgIDHeader))
			})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Stop()

			msgs := testenv.ForgedMessages()
			for _, m := range msgs {
				hdr := natsgo.Header{}
				for k, v := range m.Headers {
					hdr.Set(k, v)
				}
				// A header line cannot hold a newline.
				hdr.Set("dead-letter-reason", strings.ReplaceAll(hdr.Get("dead-letter-reason"), "\n", " "))
				hdr.Set(jetstream.MsgIDHeader, m.ID)
				if _, err := js.PublishMsg(context.Background(), &natsgo.Msg{Subject: subj, Header: hdr, Data: []byte("x")}); err != nil {
					t.Fatalf("publish %s: %v", m.ID, err)
				}
			}
			testenv.CheckForged(t, tel, tc, msgs, seen, func(id string) []sdktrace.ReadOnlySpan {
				var out []sdktrace.ReadOnlySpan
				for _, s := range tel.Named("process " + subj) {
					if v, _ := testenv.Attr(s, "messaging.message.id"); v.AsString() == id {
						out = append(out, s)
					}
				}
				return out
			})
		})
	}
}
