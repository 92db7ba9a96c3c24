package testenv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
)

// The forged-header tests: every broker's consumer gets the same messages
// whose headers a publisher outside tracebridge wrote, and must attempt
// each one exactly ForgedMaxAttempts times before giving it up, record
// attempt numbers no header could have pushed past the rules, and under
// Untrusted let nothing through that the trust policy refuses.

// ForgedMaxAttempts is the consumers' WithRetry attempts in these tests.
const ForgedMaxAttempts = 3

// ForgedNames are the custom header names of the tests' propagator; the
// retry and dead-letter headers keep their defaults.
var ForgedNames = carrier.Names{Traceparent: "x-tp", Tracestate: "x-ts", Baggage: "x-bag", SessionID: "x-sess"}

// ForgedAllowed is the one baggage key an untrusted consumer accepts.
const ForgedAllowed = "tenant"

// Forged trace context and session values.
const (
	ForgedTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ForgedPrevious    = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01"
	ForgedUUID        = "0b6f2b0e-6a34-4c4e-9f0f-2a0d7c1b9e11"
)

// Forged is one message of the table: an ID (the Kafka key, the AMQP
// message ID, the NATS message ID) and its string headers.
type Forged struct {
	ID      string
	Headers map[string]string
}

// ForgedMessages is the table every broker publishes: forged values for
// every header tracebridge reads that a string can carry.
func ForgedMessages() []Forged {
	return []Forged{
		{"attempt-final", map[string]string{"retry-attempt": "3"}},
		{"attempt-last-but-one", map[string]string{"retry-attempt": "2"}},
		{"attempt-huge", map[string]string{"retry-attempt": "99999999999999999999999"}},
		{"attempt-big", map[string]string{"retry-attempt": "1073741823"}},
		{"attempt-over-limit", map[string]string{"retry-attempt": "4"}},
		{"attempt-negative", map[string]string{"retry-attempt": "-5"}},
		{"attempt-zero", map[string]string{"retry-attempt": "0"}},
		{"attempt-text", map[string]string{"retry-attempt": "three"}},
		{"attempt-spaces", map[string]string{"retry-attempt": " 3 "}},
		{"attempt-foreign-previous", map[string]string{"retry-attempt": "3", "retry-previous": ForgedPrevious}},
		{"previous-only", map[string]string{"retry-previous": ForgedPrevious}},
		{"previous-garbage", map[string]string{"retry-attempt": "2", "retry-previous": "00-zz-not-a-span-01"}},
		{"dead-letter", map[string]string{"dead-letter-attempts": "3", "dead-letter-reason": "forged\nreason",
			"dead-letter-source": "elsewhere"}},
		{"delivery-count", map[string]string{"x-delivery-count": "7", "x-death": "[{count: 9}]"}},
		{"journey", map[string]string{ForgedNames.Traceparent: ForgedTraceparent, ForgedNames.Tracestate: "vendor=forged",
			ForgedNames.Baggage: "tenant=acme,secret=s3cr3t,role=admin", ForgedNames.SessionID: "not-a-uuid",
			"retry-attempt": "3"}},
		{"journey-uuid", map[string]string{ForgedNames.Traceparent: ForgedTraceparent,
			ForgedNames.Baggage: "session.id=also-not-a-uuid,tenant=acme", ForgedNames.SessionID: ForgedUUID}},
		{"default-names", map[string]string{"traceparent": ForgedTraceparent, "baggage": "tenant=acme",
			"session-id": ForgedUUID}},
	}
}

// TrustCase is one consumer configuration of the tests.
type TrustCase struct {
	Name      string
	Untrusted bool
	// Opts are the trust and propagator options, in the order under test;
	// add the telemetry and retry options.
	Opts []tracebridge.Option
}

// TrustCases are the configurations every broker runs: Trusted with the
// custom names, and Untrusted with WithTrust before and after
// WithPropagators, which must be the same consumer. The propagator counts
// its drops on tel's meter provider, which the untrusted view must keep;
// a nil tel gives the cases' names only.
func TrustCases(tel *Telemetry) []TrustCase {
	prop := func() tracebridge.Option {
		if tel == nil {
			return nil
		}
		return tracebridge.WithPropagators(carrier.NewPropagator(carrier.WithNames(ForgedNames),
			carrier.WithMeterProvider(tel.MeterProvider)))
	}
	untrust := func() tracebridge.Option { return tracebridge.WithTrust(carrier.Untrusted, ForgedAllowed) }
	return []TrustCase{
		{Name: "trusted", Opts: []tracebridge.Option{prop()}},
		{Name: "untrusted-trust-first", Untrusted: true, Opts: []tracebridge.Option{untrust(), prop()}},
		{Name: "untrusted-propagators-first", Untrusted: true, Opts: []tracebridge.Option{prop(), untrust()}},
	}
}

// ErrForgedTransient is what the tests' handler always returns.
var ErrForgedTransient = errors.New("transient failure")

// Seen records what a handler saw of each message: how often it ran, and
// the journey of its first attempt.
type Seen struct {
	mu    sync.Mutex
	calls map[string]int
	first map[string]Journey
}

// Journey is what a handler's context carried.
type Journey struct {
	TraceID trace.TraceID
	Remote  bool // the span's parent is the message's creation context
	Baggage []string
	Session string
}

// NewSeen returns an empty record.
func NewSeen() *Seen { return &Seen{calls: map[string]int{}, first: map[string]Journey{}} }

// Fail records an attempt of message id under ctx and fails it.
func (s *Seen) Fail(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[id]++
	if _, ok := s.first[id]; !ok {
		var keys []string
		for _, m := range baggage.FromContext(ctx).Members() {
			keys = append(keys, m.Key()+"="+m.Value())
		}
		slices.Sort(keys)
		s.first[id] = Journey{TraceID: trace.SpanContextFromContext(ctx).TraceID(), Baggage: keys,
			Session: carrier.SessionFromContext(ctx)}
	}
	return fmt.Errorf("%s: %w", id, ErrForgedTransient)
}

// Calls returns how often message id was handled.
func (s *Seen) Calls(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[id]
}

func (s *Seen) journey(id string) Journey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first[id]
}

// CheckForged waits until every message of msgs was given up and checks
// the rules. spans returns the ended process spans of one message.
func CheckForged(t *testing.T, tel *Telemetry, tc TrustCase, msgs []Forged, seen *Seen, spans func(id string) []sdktrace.ReadOnlySpan) {
	t.Helper()
	final := func(id string) bool {
		for _, s := range spans(id) {
			if v, _ := Attr(s, "tracebridge.retry.final"); v.AsBool() {
				return true
			}
		}
		return false
	}
	pending := func() []string {
		var out []string
		for _, m := range msgs {
			if !final(m.ID) {
				out = append(out, fmt.Sprintf("%s (handled %d times)", m.ID, seen.Calls(m.ID)))
			}
		}
		return out
	}
	for deadline := time.Now().Add(60 * time.Second); len(pending()) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("messages not given up after 60s: %v", pending())
		}
	}
	// Long enough for an attempt past the last to show, were there one.
	time.Sleep(300 * time.Millisecond)
	foreign, _ := carrier.ParseTraceparent(ForgedTraceparent)
	for _, m := range msgs {
		if n := seen.Calls(m.ID); n != ForgedMaxAttempts {
			t.Errorf("%s: handled %d times before it was given up, want %d", m.ID, n, ForgedMaxAttempts)
		}
		ss := spans(m.ID)
		if len(ss) != ForgedMaxAttempts {
			t.Errorf("%s: %d process spans, want %d", m.ID, len(ss), ForgedMaxAttempts)
		}
		for _, s := range ss {
			a, _ := Attr(s, "tracebridge.attempt")
			fin, _ := Attr(s, "tracebridge.retry.final")
			switch n := a.AsInt64(); {
			case n == 0:
				// Attempt 1 of a span with no links is not stamped.
				if fin.AsBool() {
					t.Errorf("%s: attempt 1 is final", m.ID)
				}
			case fin.AsBool() && n != ForgedMaxAttempts:
				t.Errorf("%s: final attempt records tracebridge.attempt=%d, want %d", m.ID, n, ForgedMaxAttempts)
			case !fin.AsBool() && (n < 1 || n >= ForgedMaxAttempts):
				t.Errorf("%s: attempt that was retried records tracebridge.attempt=%d, want 1..%d", m.ID, n, ForgedMaxAttempts-1)
			}
			if tc.Untrusted && s.Parent().IsValid() {
				t.Errorf("%s: untrusted process span has parent %v", m.ID, s.Parent())
			}
		}
		j := seen.journey(m.ID)
		switch {
		case tc.Untrusted:
			if j.TraceID == foreign.TraceID() {
				t.Errorf("%s: untrusted handler runs on the forged trace", m.ID)
			}
			for _, kv := range j.Baggage {
				k, v, _ := strings.Cut(kv, "=")
				if k != ForgedAllowed && (k != carrier.BaggageSessionKey || !carrier.IsUUID(v)) {
					t.Errorf("%s: untrusted handler sees baggage %s", m.ID, kv)
				}
			}
			if j.Session != "" && !carrier.IsUUID(j.Session) {
				t.Errorf("%s: untrusted handler sees session %q, not a UUID", m.ID, j.Session)
			}
		case m.ID == "journey":
			// Trusted and the custom names: the forged journey is the
			// journey.
			if j.TraceID != foreign.TraceID() || j.Session != "not-a-uuid" || len(j.Baggage) != 4 {
				t.Errorf("%s: trusted handler journey %+v, want the forged trace, session and all baggage", m.ID, j)
			}
		}
		switch m.ID {
		case "journey", "journey-uuid":
			if tc.Untrusted && !linksTo(ss, foreign.SpanID()) {
				t.Errorf("%s: untrusted span does not link to the creation context under the custom names", m.ID)
			}
		case "default-names":
			// The propagator reads its own names, not the defaults.
			if j.TraceID == foreign.TraceID() || linksTo(ss, foreign.SpanID()) || j.Session != "" {
				t.Errorf("%s: headers under the default names were read: %+v", m.ID, j)
			}
		}
		if m.ID == "journey-uuid" && j.Session != ForgedUUID {
			t.Errorf("%s: session %q, want the header's UUID", m.ID, j.Session)
		}
	}
	if tc.Untrusted {
		// What the policy refused is counted on the consumer's meter
		// provider, not the global one.
		if n, _ := tel.SumInt(t, carrier.DroppedMetric); n == 0 {
			t.Errorf("no %s counted on the consumer's meter provider", carrier.DroppedMetric)
		}
	}
}

func linksTo(spans []sdktrace.ReadOnlySpan, id trace.SpanID) bool {
	for _, s := range spans {
		for _, l := range s.Links() {
			if l.SpanContext.SpanID() == id {
				return true
			}
		}
	}
	return false
}
