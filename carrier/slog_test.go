package carrier_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"unicode/utf8"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"

	"github.com/tracebridge/tracebridge/carrier"
)

// controlClass is one kind of character that must not reach a log line,
// with every member of it as it arrives in a percent-encoded baggage value.
type controlClass struct {
	name    string
	encoded []string // percent-encoded, as a caller sends it in baggage
}

// controlClasses lists every C0 control, DEL, every C1 control, U+2028 and
// U+2029, and bytes that are not UTF-8 (which a terminal reading Latin-1
// shows as C1 controls).
func controlClasses() []controlClass {
	pct := func(s string) string {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			fmt.Fprintf(&b, "%%%02X", s[i])
		}
		return b.String()
	}
	var c0, c1, raw []string
	for r := rune(0); r < 0x20; r++ {
		c0 = append(c0, pct(string(r)))
	}
	for r := rune(0x80); r <= 0x9f; r++ {
		c1 = append(c1, pct(string(r)))
		raw = append(raw, fmt.Sprintf("%%%02X", r)) // the lone byte, invalid UTF-8
	}
	return []controlClass{
		{"C0", c0},
		{"DEL", []string{pct("\x7f")}},
		{"C1", c1},
		{"line and paragraph separators", []string{pct("\u2028"), pct("\u2029")}},
		{"invalid UTF-8", append(raw, "%FF", "%C0%80", "%ED%A0%80")},
	}
}

// forbidden reports the first character of line that must not appear in a
// log line, written out here rather than shared with the code under test.
func forbidden(line string) (string, bool) {
	if !utf8.ValidString(line) {
		return "invalid UTF-8", true
	}
	for _, r := range line {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 {
			return fmt.Sprintf("%U", r), true
		}
	}
	return "", false
}

// checkLog fails t if any line of out, or (for JSON) any string decoded
// from it, holds a forbidden character. Decoded strings count because
// whoever reads the JSON turns an escape back into the character.
func checkLog(t *testing.T, out []byte, isJSON bool) {
	t.Helper()
	if len(out) == 0 {
		t.Fatal("nothing logged")
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		if what, bad := forbidden(line); bad {
			t.Fatalf("log line holds %s: %q", what, line)
		}
		if !isJSON {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %q", err, line)
		}
		for k, v := range m {
			if what, bad := forbidden(k + fmt.Sprint(v)); bad {
				t.Fatalf("decoded attribute %q=%q holds %s", k, v, what)
			}
		}
	}
}

var logFormats = map[string]func(io.Writer) slog.Handler{
	"json": func(w io.Writer) slog.Handler {
		return slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})
	},
	"text": func(w io.Writer) slog.Handler {
		return slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})
	},
}

// TestLogHandlerWritesNoControlCharacters (issue 11, defect 6): baggage is
// whatever a caller percent-encoded, and the LogHandler logs allow-listed
// members. Every control class goes in through a message header, and
// through a session set by the application, and out through slog's JSON
// and text handlers: no line may carry one, raw or (JSON) escaped. Before
// the fix the values were written unchanged, and slog writes DEL and C1
// controls raw.
func TestLogHandlerWritesNoControlCharacters(t *testing.T) {
	prop := carrier.NewPropagator() // trusted: the baggage is kept as sent
	for fname, newHandler := range logFormats {
		for _, class := range controlClasses() {
			t.Run(fname+"/"+class.name, func(t *testing.T) {
				var buf bytes.Buffer
				log := slog.New(carrier.NewLogHandler(newHandler(&buf), "tenant"))
				for _, enc := range class.encoded {
					ctx := prop.Extract(context.Background(), propagation.MapCarrier{"baggage": "tenant=a" + enc + "b"})
					if v := baggage.FromContext(ctx).Member("tenant").Value(); !strings.HasPrefix(v, "a") {
						t.Fatalf("baggage %q did not arrive: %q", enc, v)
					}
					// An application may set a session it read from
					// anywhere; ContextWithSession keeps it unvalidated.
					raw := baggage.FromContext(ctx).Member("tenant").Value()
					ctx = carrier.ContextWithSession(ctx, raw)
					log.InfoContext(ctx, "charged")
				}
				checkLog(t, buf.Bytes(), fname == "json")
				if n := strings.Count(buf.String(), "\n"); n != len(class.encoded) {
					t.Fatalf("%d log lines for %d records: a control character split a line", n, len(class.encoded))
				}
			})
		}
	}
}

// TestDropLogWritesNoHeaderContent: the propagator logs what it dropped
// once per kind, at debug level; the line names the header and the reason,
// never the dropped content, so hostile headers cannot reach it.
func TestDropLogWritesNoHeaderContent(t *testing.T) {
	for fname, newHandler := range logFormats {
		t.Run(fname, func(t *testing.T) {
			var buf bytes.Buffer
			prop := carrier.NewPropagator(carrier.WithTrust(carrier.Untrusted), carrier.WithLogger(slog.New(newHandler(&buf))))
			hostile := "\x1b[31m\x7f\u0085\u009b\u2028"
			prop.Extract(context.Background(), propagation.MapCarrier{
				"traceparent": "00-" + hostile,
				"tracestate":  "k=" + hostile,
				"baggage":     "k=%1B%7F%C2%85,tenant=%C2%9B",
				"session-id":  hostile,
			})
			checkLog(t, buf.Bytes(), fname == "json")
			if !strings.Contains(buf.String(), "session-id") {
				t.Fatalf("the session drop was not logged: %s", buf.String())
			}
		})
	}
}

// TestDeadLetterHeadersAreOneSafeLine: whoever inspects dead letters logs
// their reason and source. Written by InjectDeadLetter or forged by a
// publisher, ExtractDeadLetter returns them as one line without control
// characters. Before the fix C1 controls, U+2028 and U+2029 passed both
// ways, and a forged header came back unchanged.
func TestDeadLetterHeadersAreOneSafeLine(t *testing.T) {
	p := carrier.NewPropagator()
	hostile := "boom\u0085\u009b[31m\u2028\u2029\x7f\x1b!"
	written := propagation.MapCarrier{}
	p.InjectDeadLetter(written, carrier.DeadLetter{Reason: hostile, Attempts: 3, Source: "orders" + hostile})
	forged := propagation.MapCarrier{"dead-letter-reason": hostile, "dead-letter-source": hostile, "dead-letter-attempts": "3"}
	for name, c := range map[string]propagation.MapCarrier{"written": written, "forged": forged} {
		d, ok := p.ExtractDeadLetter(c)
		if !ok || d.Attempts != 3 {
			t.Fatalf("%s: dead letter not read: %+v", name, d)
		}
		check := []string{d.Reason, d.Source}
		if name == "written" {
			check = append(check, c.Get("dead-letter-reason"), c.Get("dead-letter-source"))
		}
		for _, v := range check {
			if what, bad := forbidden(v); bad {
				t.Fatalf("%s: %q holds %s", name, v, what)
			}
			if !strings.HasPrefix(strings.TrimPrefix(v, "orders"), "boom") || !strings.HasSuffix(v, "!") {
				t.Fatalf("%s: %q lost its text", name, v)
			}
		}
	}
}
