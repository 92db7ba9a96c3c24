package integration

import (
	"context"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/tracebridge/tracebridge/internal/testenv"
)

// faultJourneys is sized so the journeys are still crossing the hops when
// the fault hits, on a loaded 2-core machine.
const faultJourneys = 400

// startInBackground begins the journeys at a steady pace, one every
// interval, so that a fault lands while journeys are still arriving; the
// returned channel closes when every edge request was answered.
func startInBackground(w *world, js []*journey, interval time.Duration) <-chan struct{} {
	began := make(chan struct{})
	go func() {
		defer close(began)
		var wg sync.WaitGroup
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for _, j := range js {
			<-tick.C
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := w.begin(context.Background(), j); err != nil {
					w.t.Error(err)
				}
			}()
		}
		wg.Wait()
	}()
	return began
}

func (w *world) successesAt(h hop) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, j := range w.journeys {
		if len(j.successes[h]) > 0 {
			n++
		}
	}
	return n
}

func (w *world) waitSuccesses(t *testing.T, h hop, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for w.successesAt(h) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d journeys passed the %s hop after 30s", w.successesAt(h), h)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFaultKafkaConsumerCrash stops the Kafka hop's consumer mid-stream and
// starts a new one in the same group: messages it fetched but did not
// commit are delivered again, so no journey is lost and each stays whole
// (a redelivered message may forward twice; both copies are on the
// journey's trace).
func TestFaultKafkaConsumerCrash(t *testing.T) {
	testenv.SkipUnlessFaultTests(t)
	w := newWorld(t, worldConfig{})
	js := make([]*journey, faultJourneys)
	for i := range js {
		js[i] = w.newJourney(i)
	}
	began := startInBackground(w, js, 5*time.Millisecond)
	w.waitSuccesses(t, hopKafka, faultJourneys/4)
	w.kafkaStop()
	stoppedAt := w.successesAt(hopKafka)
	w.kafkaStop = w.startKafkaConsumer()
	<-began
	missing := w.waitDone(js, 45*time.Second, isDone)
	if stoppedAt >= faultJourneys {
		t.Errorf("the consumer stopped after every journey had passed it (%d): not mid-stream", stoppedAt)
	}
	t.Logf("Kafka consumer replaced after %d of %d journeys", stoppedAt, faultJourneys)
	all := w.assemble(js)
	x := w.checkJourneys(t, js, all, func(*journey) [numHops]arrival { return [numHops]arrival{} })
	x.lost = len(missing)
	record(t, x)
}

const rabbitmqctl = "rabbitmqctl"

// TestFaultRabbitMQRestart stops the RabbitMQ application mid-journey and
// starts it again: the Kafka hop's publishes fail and are retried in place,
// the RabbitMQ consumer reconnects, unacked deliveries come back, and every
// journey still arrives whole.
func TestFaultRabbitMQRestart(t *testing.T) {
	testenv.SkipUnlessFaultTests(t)
	if _, err := exec.LookPath(rabbitmqctl); err != nil {
		t.Skipf("no %s to stop the node: %v", rabbitmqctl, err)
	}
	w := newWorld(t, worldConfig{exclusiveAMQP: true, attempts: 30, backoff: 100 * time.Millisecond,
		maxBackof: time.Second, reconnectWait: 5 * time.Second})
	t.Cleanup(func() {
		// Whatever happened, leave the node running for every other test.
		_ = exec.Command(rabbitmqctl, "start_app").Run()
		_ = exec.Command(rabbitmqctl, "await_startup").Run()
	})
	js := make([]*journey, faultJourneys)
	for i := range js {
		js[i] = w.newJourney(i)
	}
	began := startInBackground(w, js, 10*time.Millisecond)
	w.waitSuccesses(t, hopAMQP, faultJourneys/5)
	if out, err := exec.Command(rabbitmqctl, "stop_app").CombinedOutput(); err != nil {
		t.Fatalf("stop_app: %v\n%s", err, out)
	}
	stoppedAt := w.successesAt(hopAMQP)
	time.Sleep(2 * time.Second)
	if out, err := exec.Command(rabbitmqctl, "start_app").CombinedOutput(); err != nil {
		t.Fatalf("start_app: %v\n%s", err, out)
	}
	waitUntil := time.Now().Add(30 * time.Second)
	for w.amqpReconnects.Load() == 0 && time.Now().Before(waitUntil) {
		time.Sleep(50 * time.Millisecond)
	}
	<-began
	missing := w.waitDone(js, 50*time.Second, isDone)
	if stoppedAt >= faultJourneys {
		t.Errorf("RabbitMQ stopped after every journey had passed it (%d): not mid-journey", stoppedAt)
	}
	t.Logf("RabbitMQ stopped after %d of %d journeys; consumer reconnects: %d", stoppedAt, faultJourneys, w.amqpReconnects.Load())
	if w.amqpReconnects.Load() == 0 {
		t.Error("the RabbitMQ consumer never reconnected: the node did not go down mid-journey")
	}
	all := w.assemble(js)
	x := w.checkJourneys(t, js, all, func(*journey) [numHops]arrival { return [numHops]arrival{} })
	x.lost = len(missing)
	record(t, x)
}

// TestFaultNATSRestart stops the JetStream server (file-backed, the test's
// own) mid-journey and starts it again: the RabbitMQ hop's publishes to it
// fail and are retried, the NATS consumer resumes by itself after the
// reconnect, deliveries whose ack was lost come back, and every journey
// still arrives whole.
func TestFaultNATSRestart(t *testing.T) {
	testenv.SkipUnlessFaultTests(t)
	w := newWorld(t, worldConfig{embeddedNATS: true, attempts: 30, backoff: 100 * time.Millisecond,
		maxBackof: time.Second})
	js := make([]*journey, faultJourneys)
	for i := range js {
		js[i] = w.newJourney(i)
	}
	began := startInBackground(w, js, 10*time.Millisecond)
	w.waitSuccesses(t, hopNATS, faultJourneys/5)
	w.natsSrv.Stop()
	stoppedAt := w.successesAt(hopNATS)
	time.Sleep(2 * time.Second)
	if err := w.natsSrv.Restart(); err != nil {
		t.Fatalf("restart NATS: %v", err)
	}
	<-began
	missing := w.waitDone(js, 60*time.Second, isDone)
	if stoppedAt >= faultJourneys {
		t.Errorf("NATS stopped after every journey had passed it (%d): not mid-journey", stoppedAt)
	}
	// nats.go buffers publishes while it reconnects, so few forwards fail;
	// the reconnect shows the outage happened mid-journey.
	t.Logf("NATS stopped after %d of %d journeys for 2s; reconnects %d, failed forwards retried %d",
		stoppedAt, faultJourneys, w.nc.Stats().Reconnects, w.forwardErrs.Load())
	if w.nc.Stats().Reconnects == 0 {
		t.Error("the NATS connection never reconnected: the server did not go down mid-journey")
	}
	all := w.assemble(js)
	x := w.checkJourneys(t, js, all, func(*journey) [numHops]arrival { return [numHops]arrival{} })
	x.lost = len(missing)
	record(t, x)
}
