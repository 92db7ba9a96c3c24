package carrier

import (
	"math/rand/v2"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

// TestToTraceStateInsertMatchesParse checks that the short lists built by
// Insert equal what ParseTraceState makes of the joined string, for members
// OpenTelemetry accepts and for Level 2 ones it rejects.
func TestToTraceStateInsertMatchesParse(t *testing.T) {
	keys := []string{"rojo", "congo", "a", "t@s", "1a", "x/y*z", "a@b@c", "0@x", "k-_"}
	values := []string{"1", "00f067aa0ba902b7", "t61rcWkgMzE", "a b", " x", "~!"}
	r := rand.New(rand.NewPCG(3, 4))
	for range 5000 {
		var l tsList
		for n := 1 + r.IntN(insertMax); len(l.m) < n; {
			k := keys[r.IntN(len(keys))]
			if !l.has(k) {
				l.m = append(l.m, tsMember{k, values[r.IntN(len(values))]})
			}
		}
		joined := string(l.appendTo(nil))
		ts, extra, kept := l.toTraceState(joined)
		want, err := trace.ParseTraceState(joined)
		if err == nil {
			if ts.String() != want.String() || extra != "" || kept != joined {
				t.Fatalf("%q: got %q extra %q kept %q, want %q", joined, ts.String(), extra, kept, want.String())
			}
		} else if extra == "" {
			t.Fatalf("%q: OpenTelemetry rejects it, but nothing went to extra", joined)
		}
	}
}

// TestDenySensitiveMatchesContains checks the one-pass DenySensitive against
// the definition: no sensitive word in the ASCII-lowered key.
func TestDenySensitiveMatchesContains(t *testing.T) {
	alphabet := "aApPsStTcCeEnNoOrRdDkKiIlLwWyY._-@\x80\xffzZ"
	r := rand.New(rand.NewPCG(5, 6))
	for range 200000 {
		b := make([]byte, r.IntN(20))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		if r.IntN(4) == 0 {
			w := sensitiveWords[r.IntN(len(sensitiveWords))]
			at := r.IntN(len(b) + 1)
			b = append(b[:at], append([]byte(strings.ToUpper(w[:1])+w[1:]), b[at:]...)...)
		}
		key := string(b)
		want := true
		lower := asciiLower(key)
		for _, w := range sensitiveWords {
			if strings.Contains(lower, w) {
				want = false
			}
		}
		if got := DenySensitive(key); got != want {
			t.Fatalf("DenySensitive(%q) = %v, want %v", key, got, want)
		}
	}
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
