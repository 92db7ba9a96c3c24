package sampling

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
	"strconv"
	"strings"
)

// MaxThreshold is 2^56, the number of distinct 56-bit randomness values. A
// threshold of MaxThreshold rejects every value: it is what a ratio of 0
// (or below, or NaN) becomes.
const MaxThreshold uint64 = 1 << 56

// precision is how many hex digits of the threshold are kept (raised for
// small ratios, as below). OpenTelemetry recommends 4 for SDKs.
const precision = 4

// Randomness returns the session's 56-bit randomness value R: the first 7
// bytes of the SHA-256 of the session ID's bytes (its UTF-8 encoding), read
// as a big-endian integer. Every process and every language computes the
// same R for the same session, which is what makes the decision the same
// everywhere.
func Randomness(sessionID string) uint64 {
	sum := sha256.Sum256([]byte(sessionID))
	return binary.BigEndian.Uint64(sum[:8]) >> 8
}

// Threshold returns the rejection threshold T for ratio and its encoding
// th, as the OpenTelemetry tracestate probability-sampling specification
// defines them: T = (1 - ratio) * 2^56, rounded to 4 significant hex
// digits (more for ratios below 1/16, see the README), and th is T in
// lowercase hex without leading "0x", 14 digits with trailing zeros
// removed ("0" for T = 0). A session is sampled if and only if
// Randomness(session) >= T. A ratio of 1 or more gives T = 0 and th "0";
// 0, below 0 or NaN gives T = MaxThreshold, which rejects every session,
// and th "" (never sampling is not probability sampling, so it has no th).
func Threshold(ratio float64) (t uint64, th string) {
	switch {
	case !(ratio > 0): // NaN too
		return MaxThreshold, ""
	case ratio >= 1:
		return 0, "0"
	}
	// The spec's algorithm: keep `prec` hex digits of 1 + (1 - ratio),
	// rounded half up, with one more digit per factor of 16 that the ratio
	// is below 1, so that small ratios keep their significant digits.
	_, exp := math.Frexp(ratio) // ratio = frac * 2^exp, frac in [0.5, 1), exp <= 0
	prec := max(1, min(12, precision+(-exp)/4))
	rejection := 2 - ratio + math.Ldexp(0.5, -4*prec)
	var mantissa uint64 // the 52 bits (13 hex digits) after "1."
	if rejection >= 2 {
		mantissa = 1<<52 - 1
	} else {
		mantissa = math.Float64bits(rejection) & (1<<52 - 1)
	}
	digits := mantissa >> (52 - 4*prec)
	t = digits << (56 - 4*prec)
	return t, encodeThreshold(t)
}

// encodeThreshold writes t as a th value: 14 lowercase hex digits with the
// trailing zeros removed, or "0".
func encodeThreshold(t uint64) string {
	if t == 0 {
		return "0"
	}
	s := strconv.FormatUint(t|1<<56, 16)[1:] // 14 digits, leading zeros kept
	return strings.TrimRight(s, "0")
}

// encodeRandomness writes r as an rv value: exactly 14 lowercase hex
// digits.
func encodeRandomness(r uint64) string {
	return strconv.FormatUint(r|1<<56, 16)[1:]
}

// parseHex56 decodes a th (1 to 14 digits, padded with trailing zeros) or
// rv (14 digits) value; ok is false for anything else.
func parseHex56(s string, exact bool) (v uint64, ok bool) {
	if s == "" || len(s) > 14 || exact && len(s) != 14 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(d)
	}
	return v << (4 * (14 - len(s))), true
}

// Sampled reports whether the session sampler at ratio records a session's
// traces: Randomness(sessionID) >= T. Debug sessions are recorded whatever
// it says. Use it where something other than spans should follow the same
// decision, for example to keep the debug logs of exactly the sessions
// whose traces are kept.
func Sampled(sessionID string, ratio float64) bool {
	t, _ := Threshold(ratio)
	return Randomness(sessionID) >= t
}
