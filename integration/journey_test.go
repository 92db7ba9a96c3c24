package integration

import (
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TestJourneys1000 runs 1,000 journeys at once through HTTP → Kafka →
// RabbitMQ → NATS JetStream → job, each with its own session and baggage,
// and asserts every parent link of every journey, one trace per journey,
// and that no handler saw another journey's session or baggage.
func TestJourneys1000(t *testing.T) {
	const n = 1000
	w := newWorld(t, worldConfig{})
	js := make([]*journey, n)
	for i := range js {
		js[i] = w.newJourney(i)
	}
	start := time.Now()
	w.beginAll(js, 100)
	missing := w.waitDone(js, 45*time.Second, isDone)
	t.Logf("%d journeys through 4 hops in %s", n, time.Since(start).Round(time.Millisecond))
	all := w.spans(js)
	x := w.checkJourneys(t, js, all, func(*journey) [numHops]arrival { return [numHops]arrival{} })
	x.lost = len(missing)
	record(t, x)
}

// checkJourneys asserts continuity, session integrity and no cross-talk
// for js, and returns their tally (lost is the caller's to fill).
func (w *world) checkJourneys(t *testing.T, js []*journey, all map[trace.SpanID]sdktrace.ReadOnlySpan,
	arrive func(*journey) [numHops]arrival) tally {
	t.Helper()
	x := tally{journeys: len(js), spans: spansOfJourneys(js, all)}
	var problems []string
	w.mu.Lock()
	for _, j := range js {
		r := w.checkChain(j, all, arrive(j))
		x.links += r.links
		x.broken += r.broken
		problems = append(problems, r.problems...)
	}
	crossTalk, unknown := w.crossTalk, w.unknown
	w.mu.Unlock()
	problems = append(problems, sessionIntegrity(js, all)...)
	for i, p := range problems {
		if i == 10 {
			t.Errorf("... and %d more", len(problems)-10)
			break
		}
		t.Error(p)
	}
	for i, c := range crossTalk {
		if i == 10 {
			break
		}
		t.Errorf("cross-talk: %s", c)
	}
	if len(crossTalk) > 0 || unknown > 0 {
		t.Errorf("%d handlers saw a foreign session or baggage; %d deliveries named no journey", len(crossTalk), unknown)
	}
	return x
}
