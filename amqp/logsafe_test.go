package amqp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLibraryLogsWriteNoControlCharacters (issue 11, defect 6): a message
// whose publisher-set message ID, baggage and handler error carry control
// characters fails finally with no dead-letter queue, so the consumer logs
// a warning naming the message and the error. Through slog's JSON and text
// handlers (wrapped in carrier.LogHandler, as the README suggests), no line
// may hold a C0 or C1 control, DEL, U+2028 or U+2029. Before the fix the
// message ID reached the JSON line with DEL and C1 controls unescaped.
func TestLibraryLogsWriteNoControlCharacters(t *testing.T) {
	url := testenv.AMQP(t)
	hostile := "id\x1b[2J\x7f\u0085\u009b\u2028\u2029\x00end"
	formats := map[string]func(io.Writer) slog.Handler{
		"json": func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, nil) },
		"text": func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, nil) },
	}
	for name, newHandler := range formats {
		t.Run(name, func(t *testing.T) {
			q := uniqueQueue(t, url, "logsafe")
			_, ch := dial(t, url)
			declare(t, ch, q, nil)
			var logs syncBuffer
			logger := slog.New(carrier.NewLogHandler(newHandler(&logs), "tenant"))
			c := amqp.NewConsumer(url, q, nil, func(ctx context.Context, d amqp091.Delivery) error {
				return tracebridge.Permanent(errors.New("refused " + d.MessageId))
			}, tracebridge.WithLogger(logger), tracebridge.WithPropagators(carrier.NewPropagator()))
			runConsumer(t, c.Run)
			if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{
				MessageId: hostile, Body: []byte("x"),
				Headers: amqp091.Table{"baggage": "tenant=%7F%C2%85%E2%80%A8", "session-id": "sess-logsafe"},
			}); err != nil {
				t.Fatalf("publish: %v", err)
			}
			testenv.WaitFor(t, "the give-up warning", 20*time.Second, func() bool {
				return strings.Contains(logs.String(), "no dead-letter destination")
			})
			out := logs.String()
			if !strings.Contains(out, "sess-logsafe") || !strings.Contains(out, "end") {
				t.Fatalf("the warning lost the journey or the message ID: %s", out)
			}
			for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
				if !utf8.ValidString(line) {
					t.Fatalf("log line is not UTF-8: %q", line)
				}
				for _, r := range line {
					if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 {
						t.Fatalf("log line holds %U: %q", r, line)
					}
				}
				if name != "json" {
					continue
				}
				// An escaped control character is one too: a JSON reader
				// turns it back.
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("log line is not JSON: %v: %q", err, line)
				}
				for k, v := range m {
					for _, r := range k + fmt.Sprint(v) {
						if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 {
							t.Fatalf("decoded attribute %q=%q holds %U", k, v, r)
						}
					}
				}
			}
			if n := strings.Count(out, "\n"); n != 1 {
				t.Fatalf("%d log lines, want 1: %s", n, out)
			}
		})
	}
}
