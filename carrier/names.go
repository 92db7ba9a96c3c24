package carrier

// Names holds the header names the propagator reads and writes. The zero value
// of a field means "use the default", so a caller who renames one header sets
// only that field.
type Names struct {
	Traceparent        string // default "traceparent"
	Tracestate         string // default "tracestate"
	Baggage            string // default "baggage"
	SessionID          string // default "session-id"
	RetryAttempt       string // default "retry-attempt"
	RetryPrevious      string // default "retry-previous"
	DeadLetterReason   string // default "dead-letter-reason"
	DeadLetterAttempts string // default "dead-letter-attempts"
	DeadLetterSource   string // default "dead-letter-source"
}

// Default header names. These are what the README documents and what every
// tracebridge package writes unless configured otherwise.
const (
	HeaderTraceparent        = "traceparent"
	HeaderTracestate         = "tracestate"
	HeaderBaggage            = "baggage"
	HeaderSessionID          = "session-id"
	HeaderRetryAttempt       = "retry-attempt"
	HeaderRetryPrevious      = "retry-previous"
	HeaderDeadLetterReason   = "dead-letter-reason"
	HeaderDeadLetterAttempts = "dead-letter-attempts"
	HeaderDeadLetterSource   = "dead-letter-source"
)

// BaggageSessionKey is the baggage member that carries the session ID, so that
// OpenTelemetry services that do not use tracebridge still pass it on.
const BaggageSessionKey = "session.id"

// DefaultNames returns the default header names.
func DefaultNames() Names {
	return Names{}.withDefaults()
}

func (n Names) withDefaults() Names {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&n.Traceparent, HeaderTraceparent)
	def(&n.Tracestate, HeaderTracestate)
	def(&n.Baggage, HeaderBaggage)
	def(&n.SessionID, HeaderSessionID)
	def(&n.RetryAttempt, HeaderRetryAttempt)
	def(&n.RetryPrevious, HeaderRetryPrevious)
	def(&n.DeadLetterReason, HeaderDeadLetterReason)
	def(&n.DeadLetterAttempts, HeaderDeadLetterAttempts)
	def(&n.DeadLetterSource, HeaderDeadLetterSource)
	return n
}
