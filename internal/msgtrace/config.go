// Package msgtrace is the messaging-span machinery every tracebridge front
// end calls: producer, create and process spans with semantic-convention
// attributes, the parent policy, links to previous attempts, final-versus-
// retried error status, backoff and the messaging metrics. The broker
// packages describe a message; msgtrace decides what the spans are.
package msgtrace

import (
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/logsafe"
)

// ParentPolicy chooses how a process span relates to the creation context.
type ParentPolicy uint8

const (
	ParentOnCreation ParentPolicy = iota
	LinkToCreation
	ParentWhileYoung
)

// Config is what the public tracebridge options set.
type Config struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator
	// Trust is the consumer's trust policy, applied to whatever Propagator
	// extracts; AllowBaggage lists the baggage keys an Untrusted consumer
	// still accepts.
	Trust               carrier.Trust
	AllowBaggage        []string
	Parent              ParentPolicy
	YoungFor            time.Duration
	ErrorOnEveryAttempt bool
	NoCreateSpans       bool
	// ParentBasedSampling promises that the sampler never records a child
	// of an unsampled parent, so such a message starts no span at all.
	ParentBasedSampling bool
	SettleSpans         bool
	MaxAttempts         int
	Backoff             Backoff
	DeadLetter          string
	RetryDestination    string
	Concurrency         int
	Logger              *slog.Logger
	// Confirms makes producers wait for the broker's acknowledgement of
	// each message (RabbitMQ publisher confirms).
	Confirms bool
	// ReconnectWait is how long a publish waits for a lost connection to
	// come back before it fails; 0 fails at once.
	ReconnectWait time.Duration

	// AskSampler turns off the sampler probe (see unsampled.go): every
	// span is started and offered to the sampler, even under an unsampled
	// parent.
	AskSampler bool
}

// Option sets part of a Config.
type Option = func(*Config)

// NewConfig applies opts over the defaults.
func NewConfig(opts []Option) Config {
	c := Config{
		MaxAttempts: 3,
		Backoff:     Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second},
		Concurrency: 1,
	}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.Propagator == nil {
		if p, ok := otel.GetTextMapPropagator().(*carrier.Propagator); ok {
			c.Propagator = p
		} else {
			c.Propagator = carrier.NewPropagator(carrier.WithMeterProvider(c.MeterProvider))
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	// What the components log (message and job IDs, destinations, error
	// texts) can come from message headers: no control character of it
	// may reach the log line, whatever handler the user configured.
	c.Logger = logsafe.Logger(c.Logger)
	if c.MaxAttempts < 1 {
		c.MaxAttempts = 1
	}
	if c.Concurrency < 1 {
		c.Concurrency = 1
	}
	return c
}
