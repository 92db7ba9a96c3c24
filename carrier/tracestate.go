package carrier

import (
	"strings"
	"unsafe"

	"go.opentelemetry.io/otel/trace"
)

// maxTracestateMembers is the Level 2 limit on tracestate list-members:
// list = list-member 0*31( OWS "," OWS list-member ).
const maxTracestateMembers = 32

// tsMember is one tracestate list-member, as substrings of the input.
type tsMember struct{ key, value string }

// tsList collects list-members. The caller gives m a stack array to start
// from (a self-referencing buffer inside tsList would force it to the heap).
type tsList struct {
	m []tsMember
}

// has reports whether key is in l. l never holds more than 32 members, so
// the scan is bounded.
func (l *tsList) has(key string) bool {
	for _, m := range l.m {
		if m.key == key {
			return true
		}
	}
	return false
}

// parseTracestate parses the tracestate header fields, combined as RFC 7230
// combines repeated fields (joined by ","), by the Level 2 grammar into l.
// Empty and whitespace-only list-members are allowed and skipped. A list
// that cannot be parsed is discarded whole, as Level 2 prescribes, so ok is
// false with the reason at the first invalid member (a bad key or value, an
// empty value, a key or value over 256 characters), the first repeated key,
// or the 33rd member; parsing stops there. Its work is therefore linear in
// the bytes read up to that point and never more than linear in the input.
// l is passed and returned by value so that its stack buffer stays on the
// stack: a store through a pointer would move it to the heap.
func parseTracestate(l tsList, fields []string) (_ tsList, reason dropReason, ok bool) {
	for _, field := range fields {
		for field != "" {
			var m string
			m, field, _ = strings.Cut(field, ",")
			m = trimOWS(m)
			if m == "" {
				continue
			}
			if len(l.m) == maxTracestateMembers {
				return l, dropTooMany, false
			}
			key, value, found := strings.Cut(m, "=")
			if !found || !validTracestateKey(key) || !validTracestateValue(value) {
				return l, dropInvalidMember, false
			}
			if l.has(key) {
				return l, dropDuplicate, false
			}
			l.m = append(l.m, tsMember{key, value})
		}
	}
	return l, 0, true
}

func (l *tsList) encodedLen() int {
	n := 0
	for i, m := range l.m {
		if i > 0 {
			n++
		}
		n += len(m.key) + 1 + len(m.value)
	}
	return n
}

func (l *tsList) appendTo(dst []byte) []byte {
	for i, m := range l.m {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, m.key...)
		dst = append(dst, '=')
		dst = append(dst, m.value...)
	}
	return dst
}

// join writes l's members into dst, which must be empty, and points them
// into the result: whatever is built from them afterwards (a TraceState)
// shares this copy of what is kept instead of the header they were read
// from. dst is never written again.
func (l *tsList) join(dst []byte) string {
	dst = l.appendTo(dst)
	s := unsafe.String(unsafe.SliceData(dst), len(dst))
	pos := 0
	for i := range l.m {
		if i > 0 {
			pos++
		}
		m := &l.m[i]
		m.key = s[pos : pos+len(m.key)]
		pos += len(m.key) + 1
		m.value = s[pos : pos+len(m.value)]
		pos += len(m.value)
	}
	return s
}

// validTracestateKey implements the Level 2 key grammar:
//
//	key     = ( lcalpha / DIGIT ) 0*255 ( keychar )
//	keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
//
// Level 1's tenant@system split, which OpenTelemetry-Go still enforces, is
// gone: "@" may appear anywhere after the first character, and a key may be
// 256 characters long whatever its shape.
func validTracestateKey(k string) bool {
	if len(k) == 0 || len(k) > 256 {
		return false
	}
	if c := k[0]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case c == '_', c == '-', c == '*', c == '/', c == '@':
		default:
			return false
		}
	}
	return true
}

// validTracestateValue implements value = 0*255(chr) nblk-chr, where chr is
// printable ASCII but "," and "=", and the last character is not a space.
func validTracestateValue(v string) bool {
	if len(v) == 0 || len(v) > 256 || v[len(v)-1] == ' ' {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c > 0x7e || c == ',' || c == '=' {
			return false
		}
	}
	return true
}

func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// insertMax is the longest list toTraceState builds by Insert, one
// allocation per member; ParseTraceState's growing append allocates less
// for longer lists.
const insertMax = 3

// toTraceState converts the parsed list into OpenTelemetry's TraceState.
// OpenTelemetry-Go validates keys by the Level 1 grammar, so a Level 2 key it
// rejects cannot live in a SpanContext; those members are returned joined as
// extra and travel beside the span context (see levelTwoState) so that they
// are forwarded unchanged.
func (l *tsList) toTraceState(joined string) (ts trace.TraceState, extra, kept string) {
	if len(l.m) == 0 {
		return trace.TraceState{}, "", ""
	}
	if len(l.m) <= insertMax {
		// The members are already valid, distinct and trimmed, so building
		// the list by Insert (which prepends) gives what ParseTraceState
		// would, without parsing and checking the joined string again.
		ts, ok := trace.TraceState{}, true
		for i := len(l.m) - 1; i >= 0 && ok; i-- {
			var err error
			ts, err = ts.Insert(l.m[i].key, l.m[i].value)
			ok = err == nil
		}
		if ok {
			return ts, "", joined
		}
	} else if ts, err := trace.ParseTraceState(joined); err == nil {
		return ts, "", joined
	}
	var keptMembers, rest []string
	for _, m := range l.m {
		if _, err := (trace.TraceState{}).Insert(m.key, m.value); err == nil {
			keptMembers = append(keptMembers, m.key+"="+m.value)
		} else {
			rest = append(rest, m.key+"="+m.value)
		}
	}
	kept = strings.Join(keptMembers, ",")
	ts, _ = trace.ParseTraceState(kept)
	return ts, strings.Join(rest, ","), kept
}

// levelTwoState holds tracestate members that OpenTelemetry-Go cannot
// represent, tied to the trace they arrived with. Inject passes them on as
// the spec requires: while the span context's TraceState is still the one
// extracted (kept), the whole list goes out as it came (full), so a hop that
// only forwards changes nothing, not even the order. Once a vendor has
// changed the TraceState, its members go first and these follow.
type levelTwoState struct {
	traceID trace.TraceID
	members string // the members OpenTelemetry could not hold, joined
	count   int    // how many members are in members
	kept    string // the members that went into the TraceState, joined
	full    string // every member, in the order received, joined
}

// unchanged reports whether ts is still exactly the TraceState built from
// s.kept, without allocating.
func (s *levelTwoState) unchanged(ts trace.TraceState) bool {
	rest := s.kept
	first := true
	ok := true
	ts.Walk(func(k, v string) bool {
		if !first {
			if rest == "" || rest[0] != ',' {
				ok = false
				return false
			}
			rest = rest[1:]
		}
		first = false
		if len(rest) < len(k)+1+len(v) || rest[:len(k)] != k || rest[len(k)] != '=' || rest[len(k)+1:len(k)+1+len(v)] != v {
			ok = false
			return false
		}
		rest = rest[len(k)+1+len(v):]
		return true
	})
	return ok && rest == ""
}
