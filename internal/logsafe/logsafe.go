// Package logsafe keeps control characters out of log lines. It is the one
// place where tracebridge decides what a log line may contain: the slog
// handler in package carrier and every logger the broker packages and the
// jobs runner log through use it.
//
// Header values, message IDs, job IDs and error texts can come from outside
// the system. slog's JSON handler writes DEL and the C1 controls (U+0080 to
// U+009F) unescaped, and its text handler leaves DEL unquoted, so such a
// value could move a terminal's cursor, start an escape sequence (U+009B is
// CSI) or split a line for a line-oriented log shipper (U+0085, U+2028,
// U+2029). Escaping is the wrong fix, because the escaped text is turned
// back into the control character by whoever decodes the JSON; the
// character is replaced instead.
package logsafe

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"unicode/utf8"
)

// Replacement is what an unsafe character becomes: U+FFFD, which slog's
// JSON handler also writes for invalid UTF-8, so a reader sees that
// something was there.
const Replacement = utf8.RuneError

// Unsafe reports whether r must not reach a log line: a C0 control
// (including tab, CR and LF), DEL, a C1 control, or the Unicode line and
// paragraph separators.
func Unsafe(r rune) bool {
	return r < 0x20 || (r >= 0x7f && r <= 0x9f) || r == 0x2028 || r == 0x2029
}

// String returns s with every unsafe character, and every byte that is not
// valid UTF-8, replaced by Replacement. A string that is already safe is
// returned as it is, without allocating.
func String(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return replace(s)
		}
	}
	return s
}

func replace(s string) string {
	// strings.Map hands invalid UTF-8 to the mapping as RuneError and
	// writes the encoded RuneError for it.
	return strings.Map(func(r rune) rune {
		if Unsafe(r) {
			return Replacement
		}
		return r
	}, s)
}

// Value returns v with every string in it made safe. Strings, errors,
// fmt.Stringers and byte slices become safe strings; groups are made safe
// member by member; numbers, booleans, times and durations cannot carry a
// control character and are kept. Any other value is formatted with %+v,
// as slog's text handler would, and made safe: its JSON encoding would
// write DEL and C1 characters unescaped.
func Value(v slog.Value) slog.Value {
	v = v.Resolve()
	switch v.Kind() {
	case slog.KindString:
		if s := v.String(); String(s) != s {
			return slog.StringValue(replace(s))
		}
		return v
	case slog.KindGroup:
		as := v.Group()
		out := make([]slog.Attr, len(as))
		for i, a := range as {
			out[i] = Attr(a)
		}
		return slog.GroupValue(out...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.StringValue(String(x.Error()))
		case fmt.Stringer:
			return slog.StringValue(String(x.String()))
		case []byte:
			return slog.StringValue(String(string(x)))
		default:
			return slog.StringValue(String(fmt.Sprintf("%+v", x)))
		}
	default:
		return v
	}
}

// Attr returns a with a safe key and value.
func Attr(a slog.Attr) slog.Attr {
	return slog.Attr{Key: String(a.Key), Value: Value(a.Value)}
}

// Handler wraps a slog.Handler so that no record it passes on contains an
// unsafe character: in the message, in attribute keys and values, in group
// names and in attributes added with WithAttrs.
type Handler struct {
	next slog.Handler
}

var _ slog.Handler = (*Handler)(nil)

// NewHandler wraps next. A handler that is already a *Handler is returned
// as it is.
func NewHandler(next slog.Handler) slog.Handler {
	if h, ok := next.(*Handler); ok {
		return h
	}
	return &Handler{next: next}
}

// Logger returns a logger that logs through l's handler, made safe. A nil l
// stays nil.
func Logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return nil
	}
	if _, ok := l.Handler().(*Handler); ok {
		return l
	}
	return slog.New(NewHandler(l.Handler()))
}

// Enabled defers to the wrapped handler.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle passes on a copy of r with a safe message and safe attributes.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, String(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(Attr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

// WithAttrs makes attrs safe and passes them to the wrapped handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	safe := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		safe[i] = Attr(a)
	}
	return &Handler{next: h.next.WithAttrs(safe)}
}

// WithGroup makes name safe and passes it to the wrapped handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(String(name))}
}
