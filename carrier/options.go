package carrier

import (
	"log/slog"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// scope is the instrumentation scope of everything the carrier records.
const scope = "github.com/tracebridge/tracebridge/carrier"

// Trust says how far incoming context is believed.
type Trust uint8

const (
	// Trusted input continues the journey: its traceparent becomes the
	// parent, and its baggage and session are kept (within the limits).
	// Use it inside one system. It is the default.
	Trusted Trust = iota
	// Untrusted input, from outside the system, cannot steer it: its
	// traceparent becomes a link while a new trace starts, its baggage is
	// dropped except for an allow-list, and its session ID is kept only if
	// it matches the configured format.
	Untrusted
)

// String returns "trusted" or "untrusted".
func (t Trust) String() string {
	if t == Untrusted {
		return "untrusted"
	}
	return "trusted"
}

type config struct {
	names         Names
	trust         Trust
	allowBaggage  []string
	sessionFormat func(string) bool
	filter        BaggageFilter
	mp            metric.MeterProvider
	logger        *slog.Logger
	debugIDs      []string // see WithDebugSessions
	debug         debugSet
}

// Option configures a Propagator.
type Option func(*config)

// WithNames renames headers; empty fields keep their defaults.
func WithNames(n Names) Option { return func(c *config) { c.names = n } }

// WithTrust sets the trust policy for extracted context. The default is
// Trusted.
func WithTrust(t Trust) Option { return func(c *config) { c.trust = t } }

// WithUntrustedBaggage lists the baggage keys that an Untrusted propagator
// still accepts. By default it accepts none.
func WithUntrustedBaggage(keys ...string) Option {
	return func(c *config) { c.allowBaggage = append(c.allowBaggage, keys...) }
}

// WithSessionFormat sets the check an untrusted session ID must pass. The
// default accepts canonical UUIDs (IsUUID), which is what NewSessionID makes.
func WithSessionFormat(valid func(id string) bool) Option {
	return func(c *config) { c.sessionFormat = valid }
}

// WithBaggageFilter sets the produce-side filter applied on Inject. The
// default is DenySensitive. Pass DenyKeys() to send all baggage.
func WithBaggageFilter(f BaggageFilter) Option { return func(c *config) { c.filter = f } }

// WithMeterProvider sets the provider of the dropped-content counter. The
// default is the global provider.
func WithMeterProvider(mp metric.MeterProvider) Option { return func(c *config) { c.mp = mp } }

// WithLogger sets where drops are logged (once per kind, at debug level).
// The default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

func newConfig(opts []Option) config {
	c := config{}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	c.names = c.names.withDefaults()
	if c.sessionFormat == nil {
		c.sessionFormat = IsUUID
	}
	if c.filter == nil {
		c.filter = DenySensitive
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	c.debug = newDebugSet(&c)
	return c
}
