package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	amqp091 "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	tbjourney "github.com/tracebridge/tracebridge/journey"
	"github.com/tracebridge/tracebridge/journeytest"
)

// TestRetriesAndDeadLettersAcrossHops fails, on every hop, some journeys
// once (they must finish, with the retry linked to the failed attempt on the
// same trace) and some always (their message must wait in that hop's
// dead-letter destination with the journey and the dead-letter-* headers).
func TestRetriesAndDeadLettersAcrossHops(t *testing.T) {
	const perHop = 4
	onceAt := map[string]hop{}
	alwaysAt := map[string]hop{}
	w := newWorld(t, worldConfig{fail: func(h hop, key string, attempt int) error {
		if at, ok := onceAt[key]; ok && at == h && attempt == 1 {
			return fmt.Errorf("%s fails once: %w", h, errInjected)
		}
		if at, ok := alwaysAt[key]; ok && at == h {
			return fmt.Errorf("%s always fails: %w", h, errInjected)
		}
		return nil
	}})
	var retried, dead, all []*journey
	for h := range numHops {
		for i := range perHop {
			j := w.newJourney(int(h)*100 + i)
			onceAt[j.key] = h
			retried = append(retried, j)
			j = w.newJourney(int(h)*100 + 50 + i)
			alwaysAt[j.key] = h
			dead = append(dead, j)
		}
	}
	all = append(append(all, retried...), dead...)
	w.beginAll(all, 32)

	missing := w.waitDone(retried, 30*time.Second, isDone)
	deadLetters := w.collectDeadLetters(t, dead, alwaysAt)
	journeys := w.assemble(all)
	x := w.checkJourneys(t, retried, journeys, func(*journey) [numHops]arrival { return [numHops]arrival{} })
	x.journeys = len(all)
	x.spans = 0
	for _, j := range all {
		x.spans += spansOn(journeyOf(journeys, j), j.client.TraceID())
	}
	x.lost = len(missing)

	w.mu.Lock()
	defer w.mu.Unlock()
	// Retried hops: two attempts, both children of the one send span,
	// attempt 2 linked to attempt 1.
	for _, j := range retried {
		h := onceAt[j.key]
		x.links++
		if !w.checkAttempts(t, j, journeyOf(journeys, j), h, 2, tbjourney.Succeeded) {
			x.broken++
		}
	}
	for _, j := range dead {
		h := alwaysAt[j.key]
		jn := journeyOf(journeys, j)
		x.links++
		// Every hop but the job has a dead-letter destination; a dead job
		// goes to the dead-job handler, which records no span.
		outcome := tbjourney.DeadLettered
		if h == hopJob {
			outcome = tbjourney.Failed
		}
		if !w.checkAttempts(t, j, jn, h, w.cfg.attempts, outcome) {
			x.broken++
		}
		journeytest.Whole(t, jn)
		if j.done {
			t.Errorf("journey %s finished although its %s hop always fails", j.key, h)
		}
		for later := h + 1; later < numHops; later++ {
			if j.attempts[later] != 0 {
				t.Errorf("journey %s reached the %s hop past its dead letter", j.key, later)
			}
		}
		dl, ok := deadLetters[j.key]
		if !ok {
			x.lost++
			t.Errorf("journey %s: no dead letter at its %s hop", j.key, h)
			continue
		}
		first, ok := jn.Span(j.tries[h][0].SpanID())
		if !ok {
			t.Errorf("journey %s: no first attempt span", j.key)
			continue
		}
		want := map[string]string{
			"session-id":           j.session,
			"dead-letter-attempts": fmt.Sprint(w.cfg.attempts),
		}
		if h != hopJob {
			// The dead letter keeps the message's creation context: the
			// send span the attempts are children of.
			want["traceparent"] = carrier.FormatTraceparent(trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: first.TraceID, SpanID: first.Parent, TraceFlags: trace.FlagsSampled}))
			want["dead-letter-source"] = w.dest(h)
		}
		for k, v := range want {
			if dl[k] != v {
				t.Errorf("journey %s %s dead letter: %s = %q, want %q", j.key, h, k, dl[k], v)
			}
		}
		if h != hopJob && !strings.Contains(dl["dead-letter-reason"], "always fails") {
			t.Errorf("journey %s %s dead letter: reason %q", j.key, h, dl["dead-letter-reason"])
		}
	}
	record(t, x)
}

// checkAttempts asserts, with journeytest, n attempts at hop h of journey
// j, numbered 1..n and each linked to the one before: exactly the attempts
// the hop's handler ran, in order, on the caller's trace. It also asserts
// the chain's outcome (for DeadLettered, a dead letter sent by the last
// attempt) and that only a final attempt has status Error.
func (w *world) checkAttempts(t *testing.T, j *journey, jn *tbjourney.Journey, h hop, n int, outcome tbjourney.Outcome) bool {
	t.Helper()
	name := "process " + w.dest(h)
	if !journeytest.RetryChain(t, jn, name, n) {
		return false
	}
	if outcome == tbjourney.DeadLettered && !journeytest.DeadLetter(t, jn, name) {
		return false
	}
	for _, c := range jn.Retries {
		if c.Name != name || len(c.Attempts) != n {
			continue
		}
		if c.Outcome != outcome {
			t.Errorf("session %s %s: the chain's outcome is %s, want %s", jn.Session, name, c.Outcome, outcome)
			return false
		}
		if len(j.tries[h]) != n {
			t.Errorf("journey %s %s hop: the handler ran %d attempts, want %d", j.key, h, len(j.tries[h]), n)
			return false
		}
		for i, a := range c.Attempts {
			if a.Span.SpanID != j.tries[h][i].SpanID() || a.Span.TraceID != j.client.TraceID() {
				t.Errorf("journey %s %s attempt %d is not the handler's attempt %d on the caller's trace", j.key, h, a.Number, i+1)
				return false
			}
			s, _ := jn.Span(a.Span.SpanID)
			if final := i == n-1 && outcome != tbjourney.Succeeded; s.Error != final {
				t.Errorf("session %s %s attempt %d: status Error is %v, want %v", jn.Session, name, a.Number, s.Error, final)
				return false
			}
		}
		return true
	}
	t.Errorf("session %s: no chain of %d attempts at %s", jn.Session, n, name)
	return false
}

// collectDeadLetters reads every hop's dead-letter destination until it
// holds a message for each dead journey (or 30s pass), and returns each
// dead letter's headers by journey key.
func (w *world) collectDeadLetters(t *testing.T, dead []*journey, at map[string]hop) map[string]map[string]string {
	t.Helper()
	want := map[hop]int{}
	for _, j := range dead {
		want[at[j.key]]++
	}
	out := map[string]map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Kafka: the dead-letter topic, read from the start by a fresh group.
	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: w.kafkaAddrs, GroupID: w.group + "-dlq",
		GroupTopics: []string{w.dlqTopic}, StartOffset: kafkago.FirstOffset, MaxWait: 50 * time.Millisecond})
	for n := 0; n < want[hopKafka]; n++ {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Errorf("read Kafka dead letters: %v", err)
			break
		}
		h := map[string]string{}
		for _, kv := range m.Headers {
			h[kv.Key] = string(kv.Value)
		}
		out[string(m.Value)] = h
	}
	_ = r.Close()

	// RabbitMQ: the dead-letter queue.
	if err := w.withChannel(func(ch *amqp091.Channel) error {
		for n := 0; n < want[hopAMQP]; {
			d, ok, err := ch.Get(w.dlqQueue, true)
			if err != nil {
				return fmt.Errorf("get from %s: %w", w.dlqQueue, err)
			}
			if !ok {
				if ctx.Err() != nil {
					return fmt.Errorf("dead-letter queue %s: %d of %d: %w", w.dlqQueue, n, want[hopAMQP], ctx.Err())
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			h := map[string]string{}
			for k, v := range d.Headers {
				if s, ok := v.(string); ok {
					h[k] = s
				}
			}
			out[string(d.Body)] = h
			n++
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// NATS: the dead-letter subject's stream.
	cons, err := w.js.CreateOrUpdateConsumer(ctx, w.dlqStream, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Errorf("NATS dead-letter consumer: %v", err)
	} else {
		for n := 0; n < want[hopNATS]; n++ {
			m, err := cons.Next(jetstream.FetchMaxWait(time.Until(deadlineOf(ctx))))
			if err != nil {
				t.Errorf("read NATS dead letters (%d of %d): %v", n, want[hopNATS], err)
				break
			}
			h := map[string]string{}
			for k, v := range m.Headers() {
				h[strings.ToLower(k)] = v[0]
			}
			out[string(m.Data())] = h
		}
	}

	// Jobs: the dead-job handler, which sees the job's journey.
	for {
		w.mu.Lock()
		n := len(w.deadJobs)
		if n >= want[hopJob] || ctx.Err() != nil {
			for key, job := range w.deadJobs {
				out[key] = map[string]string{"session-id": w.deadJobSessions[key],
					"dead-letter-attempts": fmt.Sprint(job.Attempt)}
			}
			w.mu.Unlock()
			break
		}
		w.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	return out
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}
