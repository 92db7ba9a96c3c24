package sampling_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/sampling"
)

// readmeVectors are the test vectors of the README's sampling section,
// character for character.
var readmeVectors = []struct {
	session string
	rv      string // 14 hex digits
	ratio   float64
	th      string // "" for ratio 0: nothing is sampled
	sampled bool
}{
	{"0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a", "ce2b7f498a8158", 0.1, "e666", false},
	{"0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a", "ce2b7f498a8158", 0.5, "8", true},
	{"s1", "e8bc163c82eee1", 0.1, "e666", true},
	{"s1", "e8bc163c82eee1", 0.01, "fd70a", false},
	{"session-178", "fe66c15185327f", 0.01, "fd70a", true},
	{"session-167369", "e66655c7735399", 0.1, "e666", true}, // sampled only because T is rounded
	{"session-15548", "e665c7d8d4f3a0", 0.1, "e666", false},
	{"a", "ca978112ca1bbd", 1, "0", true},
	{"a", "ca978112ca1bbd", 0, "", false},
}

// specThreshold is the OpenTelemetry specification's reference algorithm
// (tracestate-probability-sampling, "Converting floating-point probability
// to threshold value", written in Python there) transcribed literally,
// string operations included, with the recommended precision of 4: it
// shares no code with sampling.Threshold.
func specThreshold(probability float64) string {
	const precision = 4
	if probability == 1 {
		return "0"
	}
	_, exp := math.Frexp(probability)
	p := int(math.Max(1, math.Min(12, precision+math.Floor(float64(exp)/-4))))
	rejection := 2 - probability
	rejection += math.Ldexp(0.5, -4*p)
	var digits string
	if rejection >= 2.0 {
		digits = "fffffffffffff"
	} else {
		s := strconv.FormatFloat(rejection, 'x', 13, 64) // "0x1.e666666666666p+00"
		digits = s[len("0x1.") : len("0x1.")+13]
	}
	return strings.TrimRight(digits[:p], "0")
}

// specDecision decides as a reader of the README would: rv and th as
// 14-digit hex strings (th padded with zeros on the right), compared as
// strings, which for equal lengths is the numeric comparison.
func specDecision(rv, th string) bool {
	if th == "" {
		return false
	}
	return rv >= th+strings.Repeat("0", 14-len(th))
}

// TestREADMEVectors computes the README's vectors independently of the
// sampler code, then checks that the sampler reaches the same decision and
// writes the same tracestate.
func TestREADMEVectors(t *testing.T) {
	for _, v := range readmeVectors {
		sum := sha256.Sum256([]byte(v.session))
		rv := hex.EncodeToString(sum[:])[:14]
		th := ""
		if v.ratio > 0 {
			th = specThreshold(v.ratio)
		}
		if rv != v.rv || th != v.th || specDecision(rv, th) != v.sampled {
			t.Errorf("vector %q at %g: independent rv %s th %q sampled %v, README says %s %q %v",
				v.session, v.ratio, rv, th, specDecision(rv, th), v.rv, v.th, v.sampled)
		}

		if got := strconv.FormatUint(sampling.Randomness(v.session)|1<<56, 16)[1:]; got != v.rv {
			t.Errorf("Randomness(%q) = %s, want %s", v.session, got, v.rv)
		}
		if _, gotTh := sampling.Threshold(v.ratio); gotTh != v.th {
			t.Errorf("Threshold(%g) th = %q, want %q", v.ratio, gotTh, v.th)
		}
		if got := sampling.Sampled(v.session, v.ratio); got != v.sampled {
			t.Errorf("Sampled(%q, %g) = %v, want %v", v.session, v.ratio, got, v.sampled)
		}
		res := sampling.New(v.ratio).ShouldSample(sdktrace.SamplingParameters{
			ParentContext: carrier.ContextWithSession(context.Background(), v.session),
			TraceID:       trace.TraceID{1}, Name: "root"})
		if got := res.Decision == sdktrace.RecordAndSample; got != v.sampled {
			t.Errorf("sampler on %q at %g: decision %v, want sampled=%v", v.session, v.ratio, res.Decision, v.sampled)
		}
		wantTS := ""
		if v.sampled {
			wantTS = "ot=rv:" + v.rv + ";th:" + v.th
		}
		if got := res.Tracestate.String(); got != wantTS {
			t.Errorf("sampler on %q at %g: tracestate %q, want %q", v.session, v.ratio, got, wantTS)
		}
	}
}

// TestThresholdMatchesSpecTable checks Threshold against the precision-4
// column of the specification's table of 1-in-N thresholds, and against
// the transcribed reference algorithm over a sweep of ratios.
func TestThresholdMatchesSpecTable(t *testing.T) {
	table := map[float64]string{1: "0", 0.5: "8", 1.0 / 3: "aaab", 0.25: "c", 0.2: "cccd", 0.125: "e",
		0.1: "e666", 0.0625: "f", 0.01: "fd70a", 0.001: "ffbe77", 0.0001: "fff9724", 0.00001: "ffff583a",
		0.000001: "ffffef39"}
	for ratio, want := range table {
		tv, th := sampling.Threshold(ratio)
		if th != want {
			t.Errorf("Threshold(%g) th = %q, the spec's table says %q", ratio, th, want)
		}
		if enc := strconv.FormatUint(tv|1<<56, 16)[1:]; strings.TrimRight(enc, "0") != strings.TrimRight(want, "0") && tv != 0 {
			t.Errorf("Threshold(%g) T = %014x does not match th %q", ratio, tv, want)
		}
	}
	for i := 1; i < 2000; i++ {
		ratio := float64(i) / 2000
		if _, th := sampling.Threshold(ratio); th != specThreshold(ratio) && specThreshold(ratio) != "" {
			t.Fatalf("Threshold(%g) = %q, reference algorithm %q", ratio, th, specThreshold(ratio))
		}
	}
}

// TestThresholdEdges pins the documented fallbacks for ratios outside
// (0, 1).
func TestThresholdEdges(t *testing.T) {
	for _, r := range []float64{0, -1, math.NaN(), math.Inf(-1)} {
		if tv, th := sampling.Threshold(r); tv != sampling.MaxThreshold || th != "" {
			t.Errorf("Threshold(%g) = %x %q, want 2^56 and no th", r, tv, th)
		}
	}
	for _, r := range []float64{1, 1.5, math.Inf(1)} {
		if tv, th := sampling.Threshold(r); tv != 0 || th != "0" {
			t.Errorf("Threshold(%g) = %x %q, want 0 \"0\"", r, tv, th)
		}
	}
	// So close to 1 that the kept digits are all zero: T = 0, not an
	// empty th.
	if tv, th := sampling.Threshold(1 - 1e-9); tv != 0 || th != "0" {
		t.Errorf("Threshold(1-1e-9) = %x %q, want 0 \"0\"", tv, th)
	}
	// Below 2^-56 the spec's algorithm keeps 12 digits of f: the smallest
	// ratio it can express, never 0.
	if tv, th := sampling.Threshold(1e-30); tv != 0xffffffffffff00 || th != "ffffffffffff" {
		t.Errorf("Threshold(1e-30) = %x %q", tv, th)
	}
}
