// Package integration is tracebridge's cross-broker suite: journeys that
// enter over HTTP and cross Kafka, RabbitMQ, NATS JetStream and a background
// job on real brokers (embedded Kafka and local RabbitMQ and NATS by
// default; KAFKA_BROKERS, AMQP_URL and NATS_URL point it at docker-compose).
// It ends with a summary table of journeys, spans, broken links and lost
// messages.
package integration

import (
	"fmt"
	"os"
	"sort"
	"sync"
	"testing"
)

// tally is one test's line in the summary.
type tally struct {
	journeys, spans, links, broken, lost int
}

var (
	summaryMu sync.Mutex
	summary   = map[string]tally{}
)

// record adds a test's numbers to the summary and fails the test when a
// link is broken or a message lost: the suite's two promises.
func record(t *testing.T, x tally) {
	t.Helper()
	summaryMu.Lock()
	summary[t.Name()] = x
	summaryMu.Unlock()
	t.Logf("journeys=%d spans=%d links=%d broken=%d lost=%d", x.journeys, x.spans, x.links, x.broken, x.lost)
	if x.broken != 0 || x.lost != 0 {
		t.Errorf("%d broken links and %d lost messages, want 0 and 0", x.broken, x.lost)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	summaryMu.Lock()
	names := make([]string, 0, len(summary))
	for n := range summary {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) > 0 {
		var sum tally
		fmt.Printf("\n%-44s %9s %8s %8s %8s %6s\n", "integration summary", "journeys", "spans", "links", "broken", "lost")
		for _, n := range names {
			x := summary[n]
			fmt.Printf("%-44s %9d %8d %8d %8d %6d\n", n, x.journeys, x.spans, x.links, x.broken, x.lost)
			sum.journeys += x.journeys
			sum.spans += x.spans
			sum.links += x.links
			sum.broken += x.broken
			sum.lost += x.lost
		}
		fmt.Printf("%-44s %9d %8d %8d %8d %6d\n\n", "total", sum.journeys, sum.spans, sum.links, sum.broken, sum.lost)
	}
	summaryMu.Unlock()
	os.Exit(code)
}
