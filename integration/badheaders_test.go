package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// corruption is what a middle hop does to the journey's headers when it
// forwards from Kafka to RabbitMQ with its own, untraced publish.
type corruption int

const (
	intact     corruption = iota // the traced publisher: the control group
	garbage                      // unparsable traceparent and baggage, valid session
	wrongTypes                   // traceparent as an integer, baggage as a table, session as bytes
	bytesValid                   // valid values, but as []byte (AMQP allows both)
	badSession                   // valid traceparent, session with a control character
	numCorruptions
)

// TestBadHeadersMidJourney has the Kafka hop forward to RabbitMQ with
// corrupted headers. Nothing may panic and every message must be handled;
// where the traceparent is unusable DESIGN says a new trace starts at the
// RabbitMQ hop and the rest of the journey (NATS, job) continues on it;
// values of the wrong AMQP type are ignored; an invalid session is dropped
// and no new one is made up.
func TestBadHeadersMidJourney(t *testing.T) {
	const n = 100
	kinds := map[string]corruption{}
	var rawMu sync.Mutex
	var raw *amqp091.Channel
	w := newWorld(t, worldConfig{forwardAMQP: func(w *world, ctx context.Context, key string) error {
		k := kinds[key]
		if k == intact {
			return w.publishAMQP(ctx, key)
		}
		tp := carrier.FormatTraceparent(trace.SpanContextFromContext(ctx))
		j := w.journeys[key] // written before any journey began
		var h amqp091.Table
		switch k {
		case garbage:
			h = amqp091.Table{"traceparent": "00-this-is-not-a-trace-01", "baggage": "journey=%zz;;,=,,", "session-id": j.session}
		case wrongTypes:
			h = amqp091.Table{"traceparent": int64(7), "baggage": amqp091.Table{"journey": key}, "session-id": []byte(j.session)}
		case bytesValid:
			h = amqp091.Table{"traceparent": []byte(tp), "baggage": []byte("journey=" + key), "session-id": []byte(j.session)}
		case badSession:
			h = amqp091.Table{"traceparent": tp, "session-id": "bad\x01" + j.session}
		}
		rawMu.Lock()
		defer rawMu.Unlock()
		conf, err := raw.PublishWithDeferredConfirmWithContext(ctx, "", w.queue, false, false,
			amqp091.Publishing{MessageId: key, DeliveryMode: amqp091.Persistent, Body: []byte(key), Headers: h})
		if err != nil {
			return fmt.Errorf("raw forward: %w", err)
		}
		if ok, err := conf.WaitContext(ctx); err != nil || !ok {
			return fmt.Errorf("raw forward not confirmed (ack %v): %w", ok, err)
		}
		return nil
	}})
	conn, err := amqp091.Dial(w.amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if raw, err = conn.Channel(); err != nil {
		t.Fatal(err)
	}
	if err := raw.Confirm(false); err != nil {
		t.Fatal(err)
	}

	js := make([]*journey, n)
	arrivals := map[*journey][numHops]arrival{}
	for i := range js {
		j := w.newJourney(i)
		k := corruption(i % int(numCorruptions))
		kinds[j.key] = k
		var a [numHops]arrival
		switch k {
		case garbage, wrongTypes:
			a[hopAMQP] = newTrace
			j.traces = 2
			for h := hopAMQP; h < numHops; h++ {
				j.wantBag[h] = "" // the corrupted baggage is dropped, not half-read
			}
		case bytesValid:
			a[hopAMQP] = direct // no send span: the raw forwarder made none
		case badSession:
			a[hopAMQP] = direct
			for h := hopAMQP; h < numHops; h++ {
				j.wantSession[h], j.wantBag[h] = "", "" // dropped; consumers make up no session
			}
		}
		arrivals[j] = a
		js[i] = j
	}
	w.beginAll(js, 32)
	missing := w.waitDone(js, 30*time.Second, isDone)
	all := w.assemble(js)
	x := w.checkJourneys(t, js, all, func(j *journey) [numHops]arrival { return arrivals[j] })
	x.lost = len(missing)
	for _, j := range missing {
		t.Errorf("journey %s (corruption %d) did not finish", j.key, kinds[j.key])
	}
	record(t, x)
}
