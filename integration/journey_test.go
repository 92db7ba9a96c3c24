package integration

import (
	"testing"
	"time"

	tbjourney "github.com/tracebridge/tracebridge/journey"
	"github.com/tracebridge/tracebridge/journeytest"
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
	all := w.assemble(js)
	x := w.checkJourneys(t, js, all, func(*journey) [numHops]arrival { return [numHops]arrival{} })
	x.lost = len(missing)
	record(t, x)
}

// checkJourneys asserts, with journeytest, each journey's parent links (as
// arrive says), that it is whole (no orphan, no broken link), that it holds
// its own session only and on as many traces as it should, and that no
// handler saw another journey's session or baggage. It returns their tally
// (lost is the caller's to fill); spans counts the spans on the journeys'
// first traces, the callers'.
func (w *world) checkJourneys(t *testing.T, js []*journey, all map[string]*tbjourney.Journey,
	arrive func(*journey) [numHops]arrival) tally {
	t.Helper()
	rep := &reporter{t: t}
	x := tally{journeys: len(js)}
	w.mu.Lock()
	for _, j := range js {
		jn := journeyOf(all, j)
		x.spans += spansOn(jn, j.client.TraceID())
		links, held := w.checkChain(rep, j, jn, arrive(j))
		x.links += links
		x.broken += links - held
		journeytest.Whole(rep, jn)
		journeytest.OneSession(rep, jn)
		if len(jn.Traces) != j.traces {
			rep.Errorf("session %s is on %d traces, want %d", j.session, len(jn.Traces), j.traces)
		}
	}
	crossTalk, unknown := w.crossTalk, w.unknown
	w.mu.Unlock()
	rep.done()
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
