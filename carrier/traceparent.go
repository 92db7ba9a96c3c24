package carrier

import (
	"go.opentelemetry.io/otel/trace"
)

// traceparentLen is the length of a version 00 traceparent.
const traceparentLen = 55

// knownFlags are the trace-flags bits W3C Trace Context Level 2 defines:
// sampled (0x01) and random (0x02). Other bits are reserved; a receiver masks
// them off rather than rejecting the header, because trace-flags is a bit
// field whose unknown bits carry no meaning for this version.
const knownFlags = trace.FlagsSampled | trace.FlagsRandom

// ParseTraceparent parses a traceparent header value by the W3C Trace Context
// Level 2 processing model. Version 00 must be exactly 55 characters; a
// higher version (not ff) is parsed for its first three fields and may carry
// more after a dash. Hex must be lowercase, and all-zero IDs are invalid. The
// returned span context is marked remote. ok is false for anything invalid,
// in which case the caller starts a new trace.
func ParseTraceparent(v string) (trace.SpanContext, bool) {
	return parseTraceparent(v)
}

func parseTraceparent[S ~string | ~[]byte](v S) (trace.SpanContext, bool) {
	if len(v) < traceparentLen || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return trace.SpanContext{}, false
	}
	ver, ok := hexByte(v[0], v[1])
	if !ok || ver == 0xff {
		return trace.SpanContext{}, false
	}
	if ver == 0 && len(v) != traceparentLen {
		return trace.SpanContext{}, false
	}
	if len(v) > traceparentLen && v[55] != '-' {
		return trace.SpanContext{}, false
	}
	var cfg trace.SpanContextConfig
	for i := range cfg.TraceID {
		b, ok := hexByte(v[3+2*i], v[4+2*i])
		if !ok {
			return trace.SpanContext{}, false
		}
		cfg.TraceID[i] = b
	}
	for i := range cfg.SpanID {
		b, ok := hexByte(v[36+2*i], v[37+2*i])
		if !ok {
			return trace.SpanContext{}, false
		}
		cfg.SpanID[i] = b
	}
	flags, ok := hexByte(v[53], v[54])
	if !ok {
		return trace.SpanContext{}, false
	}
	cfg.TraceFlags = trace.TraceFlags(flags) & knownFlags
	cfg.Remote = true
	sc := trace.NewSpanContext(cfg)
	if !sc.IsValid() { // all-zero trace or span ID
		return trace.SpanContext{}, false
	}
	return sc, true
}

// FormatTraceparent renders sc as a version 00 traceparent value. Unknown
// flag bits are cleared.
func FormatTraceparent(sc trace.SpanContext) string {
	var b [traceparentLen]byte
	return string(appendTraceparent(b[:0], sc))
}

func appendTraceparent(dst []byte, sc trace.SpanContext) []byte {
	tid, sid := sc.TraceID(), sc.SpanID()
	dst = append(dst, '0', '0', '-')
	dst = appendHex(dst, tid[:])
	dst = append(dst, '-')
	dst = appendHex(dst, sid[:])
	dst = append(dst, '-')
	return appendHex(dst, []byte{byte(sc.TraceFlags() & knownFlags)})
}

const hexDigits = "0123456789abcdef"

func appendHex(dst, src []byte) []byte {
	for _, b := range src {
		dst = append(dst, hexDigits[b>>4], hexDigits[b&0x0f])
	}
	return dst
}

// hexByte decodes two lowercase hex digits. Uppercase is invalid in
// traceparent.
func hexByte(hi, lo byte) (byte, bool) {
	h, ok1 := unhex(hi)
	l, ok2 := unhex(lo)
	return h<<4 | l, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
