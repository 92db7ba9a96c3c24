package tracebridge_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// The message every option-pair case consumes. It carries two journeys:
// one under the default header names (trace A) and one under the custom
// names (trace B), so which one the consumer read shows whose names it
// used.
const (
	traceA = "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-aaaaaaaaaaaaaaaa-01"
	traceB = "00-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-bbbbbbbbbbbbbbbb-01"
)

var customNames = carrier.Names{Traceparent: "x-tp", Baggage: "x-bag", SessionID: "x-sess"}

func pairMessage() propagation.MapCarrier {
	return propagation.MapCarrier{
		"traceparent": traceA, "baggage": "tenant=a,secret=s,role=admin,session.id=sess-a", "session-id": "sess-a",
		"x-tp": traceB, "x-bag": "tenant=b,secret=s,role=admin", "x-sess": "sess-b",
	}
}

// consumed is what one consumer made of pairMessage.
type consumed struct {
	parent, link trace.TraceID // the creation context as parent or as link
	baggage      []string      // keys the handler sees, session.id aside
	session      string
	spans        int // process spans on the case's tracer provider
	dropped      int64
	droppedOn    bool // the drop counter reported on the case's meter provider
	consumedOn   bool // messaging.client.consumed.messages reported there
}

func consume(t *testing.T, tel *testenv.Telemetry, opts []tracebridge.Option) consumed {
	t.Helper()
	tr := msgtrace.New("kafka", opts)
	ctx, p := tr.StartProcess(context.Background(), msgtrace.Delivery{
		Message: msgtrace.Message{Destination: "in"}, Carrier: pairMessage()})
	var got consumed
	for _, m := range baggage.FromContext(ctx).Members() {
		if m.Key() != carrier.BaggageSessionKey {
			got.baggage = append(got.baggage, m.Key())
		}
	}
	slices.Sort(got.baggage)
	got.session = carrier.SessionFromContext(ctx)
	p.End(ctx, nil, false)
	for _, s := range tel.Named("process in") {
		got.spans++
		got.parent = s.Parent().TraceID()
		for _, l := range s.Links() {
			got.link = l.SpanContext.TraceID()
		}
	}
	got.dropped, got.droppedOn = tel.SumInt(t, carrier.DroppedMetric)
	_, got.consumedOn = tel.SumInt(t, "messaging.client.consumed.messages")
	return got
}

func traceID(tp string) trace.TraceID {
	sc, _ := carrier.ParseTraceparent(tp)
	return sc.TraceID()
}

// want describes the consumer a pair of options must make, in either order.
type want struct {
	untrusted bool
	trace     string   // the traceparent the creation context came from
	baggage   []string // keys the handler sees
	session   string
	metrics   bool // drops counted on the case's meter provider
}

func (w want) check(t *testing.T, got consumed) {
	t.Helper()
	if got.spans != 1 {
		t.Fatalf("%d process spans on the configured tracer provider, want 1", got.spans)
	}
	tid := traceID(w.trace)
	if w.untrusted {
		if got.parent.IsValid() || got.link != tid {
			t.Errorf("untrusted: parent %v link %v, want no parent and a link to %v", got.parent, got.link, tid)
		}
	} else if got.parent != tid {
		t.Errorf("trusted: parent %v, want %v", got.parent, tid)
	}
	if !slices.Equal(got.baggage, w.baggage) {
		t.Errorf("baggage keys %v, want %v", got.baggage, w.baggage)
	}
	if got.session != w.session {
		t.Errorf("session %q, want %q", got.session, w.session)
	}
	if w.metrics && (!got.droppedOn || got.dropped == 0) {
		t.Errorf("drops not counted on the configured meter provider (reported %v, %d)", got.droppedOn, got.dropped)
	}
	if !got.consumedOn {
		t.Error("consumed messages not counted on the configured meter provider")
	}
}

// TestOptionPairsComposeInAnyOrder runs every pair of options that touch
// the same setting in both orders through a consumer, and requires the
// same consumer either way: trust is the consumer's and no later option
// undoes it; a propagator's names, session format and meter provider
// survive WithTrust; the last of two like options wins.
func TestOptionPairsComposeInAnyOrder(t *testing.T) {
	stock := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	untrusted := []string{"tenant"}
	cases := []struct {
		name string
		a, b func(tel *testenv.Telemetry) tracebridge.Option
		// base options are given first; the pair may override them.
		want want
	}{
		{
			name: "WithTrust x WithPropagators(custom names)",
			a:    func(*testenv.Telemetry) tracebridge.Option { return tracebridge.WithTrust(carrier.Untrusted, "tenant") },
			b: func(tel *testenv.Telemetry) tracebridge.Option {
				return tracebridge.WithPropagators(carrier.NewPropagator(carrier.WithNames(customNames),
					carrier.WithMeterProvider(tel.MeterProvider)))
			},
			want: want{untrusted: true, trace: traceB, baggage: untrusted, metrics: true},
		},
		{
			name: "WithTrust x WithPropagators(stock composite)",
			a:    func(*testenv.Telemetry) tracebridge.Option { return tracebridge.WithTrust(carrier.Untrusted, "tenant") },
			b:    func(*testenv.Telemetry) tracebridge.Option { return tracebridge.WithPropagators(stock) },
			want: want{untrusted: true, trace: traceA, baggage: untrusted, metrics: true},
		},
		{
			name: "WithTrust x WithMeterProvider",
			a:    func(*testenv.Telemetry) tracebridge.Option { return tracebridge.WithTrust(carrier.Untrusted, "tenant") },
			b: func(tel *testenv.Telemetry) tracebridge.Option {
				return tracebridge.WithMeterProvider(tel.MeterProvider)
			},
			want: want{untrusted: true, trace: traceA, baggage: untrusted, metrics: true},
		},
		{
			name: "WithTrust x WithTracerProvider",
			a:    func(*testenv.Telemetry) tracebridge.Option { return tracebridge.WithTrust(carrier.Untrusted, "tenant") },
			b: func(tel *testenv.Telemetry) tracebridge.Option {
				return tracebridge.WithTracerProvider(tel.TracerProvider)
			},
			want: want{untrusted: true, trace: traceA, baggage: untrusted, metrics: true},
		},
		{
			name: "WithTrust(Untrusted) x WithTrust(Trusted)",
			a:    func(*testenv.Telemetry) tracebridge.Option { return tracebridge.WithTrust(carrier.Untrusted, "tenant") },
			b:    func(*testenv.Telemetry) tracebridge.Option { return tracebridge.WithTrust(carrier.Trusted) },
			// Last wins: see the order-dependent check below.
		},
		{
			name: "WithTrust(Untrusted, tenant) x WithTrust(Untrusted, role)",
			a:    func(*testenv.Telemetry) tracebridge.Option { return tracebridge.WithTrust(carrier.Untrusted, "tenant") },
			b:    func(*testenv.Telemetry) tracebridge.Option { return tracebridge.WithTrust(carrier.Untrusted, "role") },
		},
		{
			name: "WithPropagators x WithPropagators",
			a: func(tel *testenv.Telemetry) tracebridge.Option {
				return tracebridge.WithPropagators(carrier.NewPropagator(carrier.WithMeterProvider(tel.MeterProvider)))
			},
			b: func(tel *testenv.Telemetry) tracebridge.Option {
				return tracebridge.WithPropagators(carrier.NewPropagator(carrier.WithNames(customNames),
					carrier.WithMeterProvider(tel.MeterProvider)))
			},
		},
	}
	for _, c := range cases {
		for _, order := range []string{"a,b", "b,a"} {
			t.Run(c.name+"/"+order, func(t *testing.T) {
				tel := testenv.NewTelemetry(t)
				// The base options come first. For a pair with a provider
				// option they send that provider's signal elsewhere, so a
				// pair that loses the provider it sets shows it.
				other := testenv.NewTelemetry(t)
				opts := tel.Options()
				switch {
				case strings.Contains(c.name, "WithTracerProvider"):
					opts = []tracebridge.Option{tracebridge.WithTracerProvider(other.TracerProvider),
						tracebridge.WithMeterProvider(tel.MeterProvider)}
				case strings.Contains(c.name, "WithMeterProvider"):
					opts = []tracebridge.Option{tracebridge.WithTracerProvider(tel.TracerProvider),
						tracebridge.WithMeterProvider(other.MeterProvider)}
				}
				first, second := c.a(tel), c.b(tel)
				if order == "b,a" {
					first, second = second, first
				}
				opts = append(opts, first, second)
				w := c.want
				switch c.name {
				case "WithTrust(Untrusted) x WithTrust(Trusted)":
					w = want{untrusted: order == "b,a", trace: traceA}
					if w.untrusted {
						w.baggage, w.metrics = untrusted, true
					} else {
						w.baggage, w.session = []string{"role", "secret", "tenant"}, "sess-a"
					}
				case "WithTrust(Untrusted, tenant) x WithTrust(Untrusted, role)":
					w = want{untrusted: true, trace: traceA, baggage: []string{"role"}, metrics: true}
					if order == "b,a" {
						w.baggage = untrusted
					}
				case "WithPropagators x WithPropagators":
					w = want{trace: traceB, baggage: []string{"role", "secret", "tenant"}, session: "sess-b"}
					if order == "b,a" {
						w.trace, w.session = traceA, "sess-a"
					}
				}
				w.check(t, consume(t, tel, opts))
			})
		}
	}
}

// TestTrustKeepsThePropagatorsSessionFormat: an untrusted consumer judges
// a session by its propagator's format, whichever option came first, and
// an untrusted propagator stays untrusted under WithTrust(Trusted).
func TestTrustKeepsThePropagatorsSessionFormat(t *testing.T) {
	format := carrier.WithSessionFormat(func(id string) bool { return strings.HasPrefix(id, "sess-") })
	for _, order := range []string{"trust first", "propagators first"} {
		t.Run(order, func(t *testing.T) {
			tel := testenv.NewTelemetry(t)
			prop := tracebridge.WithPropagators(carrier.NewPropagator(format, carrier.WithMeterProvider(tel.MeterProvider)))
			trust := tracebridge.WithTrust(carrier.Untrusted)
			opts := tel.Options(trust, prop)
			if order == "propagators first" {
				opts = tel.Options(prop, trust)
			}
			want{untrusted: true, trace: traceA, session: "sess-a", metrics: true}.check(t, consume(t, tel, opts))
		})
	}
	t.Run("untrusted propagator under WithTrust(Trusted)", func(t *testing.T) {
		tel := testenv.NewTelemetry(t)
		opts := tel.Options(tracebridge.WithPropagators(carrier.NewPropagator(carrier.WithTrust(carrier.Untrusted),
			carrier.WithMeterProvider(tel.MeterProvider))), tracebridge.WithTrust(carrier.Trusted))
		want{untrusted: true, trace: traceA, metrics: true}.check(t, consume(t, tel, opts))
	})
}
