package logsafe_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tracebridge/tracebridge/internal/logsafe"
)

// unsafeRunes is every character that must not reach a log line, spelt out
// independently of logsafe.Unsafe.
func unsafeRunes() []rune {
	var rs []rune
	for r := rune(0); r < 0x20; r++ {
		rs = append(rs, r)
	}
	for r := rune(0x7f); r <= 0x9f; r++ {
		rs = append(rs, r)
	}
	return append(rs, 0x2028, 0x2029)
}

func clean(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		for _, u := range unsafeRunes() {
			if r == u {
				return false
			}
		}
	}
	return true
}

func TestStringReplacesEveryUnsafeCharacter(t *testing.T) {
	for _, r := range unsafeRunes() {
		in := "a" + string(r) + "b"
		if got := logsafe.String(in); got != "a\uFFFDb" {
			t.Errorf("String(%q) = %q, want %q", in, got, "a\uFFFDb")
		}
	}
	for _, in := range []string{"\x85", "\xff", "\xc0\x80", "\xed\xa0\x80", "a\xe2\x80"} {
		if got := logsafe.String(in); !clean(got) || !strings.Contains(got, "\uFFFD") {
			t.Errorf("String(%q) = %q: invalid UTF-8 must become U+FFFD", in, got)
		}
	}
	for _, in := range []string{"", "plain ascii ~!@#", "sessión", "日本語", "emoji 🙂", "\uFFFD", "\u2027\u202a"} {
		if got := logsafe.String(in); got != in {
			t.Errorf("String(%q) = %q: safe text must pass unchanged", in, got)
		}
	}
}

func TestStringDoesNotAllocateForSafeText(t *testing.T) {
	s := strings.Repeat("0190c3a4-7b1e-7c00-8000-000000000001 ", 4)
	if n := testing.AllocsPerRun(100, func() { _ = logsafe.String(s) }); n != 0 {
		t.Fatalf("String allocated %.0f times for safe text", n)
	}
}

type stringer struct{}

func (stringer) String() string { return "str\x1bing" }

type valuer struct{}

func (valuer) LogValue() slog.Value { return slog.StringValue("val\x7fuer") }

// TestHandlerMakesEveryPartSafe sends one record with an unsafe character in
// each place a handler writes text and checks what reaches the wrapped
// handler, through slog's JSON handler.
func TestHandlerMakesEveryPartSafe(t *testing.T) {
	var buf bytes.Buffer
	l := logsafe.Logger(slog.New(slog.NewJSONHandler(&buf, nil)))
	l = l.With("with\x00key", "with\u0085value").WithGroup("gr\u2028oup")
	l.Info("msg\nline",
		"string", "s\x7f",
		"error", errors.New("e\u009b[31m"),
		"stringer", stringer{},
		"bytes", []byte("b\x00"),
		"valuer", valuer{},
		"struct", struct{ A string }{"st\u2029ruct"},
		slog.Group("group", "inner", "i\x01"),
		"int", 42, "bool", true, "dur", time.Second,
	)
	out := buf.String()
	if strings.Count(out, "\n") != 1 {
		t.Fatalf("want one line, got %q", out)
	}
	for _, want := range []string{`"int":42`, `"bool":true`, `"dur":1000000000`, "e\uFFFD[31m", "st\uFFFDruct", "val\uFFFDuer"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s: %s", want, out)
		}
	}
	if !clean(strings.TrimSuffix(out, "\n")) || strings.Contains(out, `\u00`) || strings.Contains(out, `\n`) {
		t.Fatalf("unsafe character in %q", out)
	}
}

func TestLoggerWrapsOnce(t *testing.T) {
	if logsafe.Logger(nil) != nil {
		t.Fatal("nil logger must stay nil")
	}
	l := logsafe.Logger(slog.New(slog.DiscardHandler))
	if logsafe.Logger(l) != l {
		t.Fatal("a safe logger was wrapped again")
	}
}
