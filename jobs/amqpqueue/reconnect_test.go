package amqpqueue_test

import (
	"context"
	"fmt"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/jobs/amqpqueue"
)

// TestReconnectAfterBrokerRestart stops the RabbitMQ application under a
// runner and starts it again: enqueues wait for the connection to come
// back, the workers consume again by themselves, every job runs, and the
// job that was running at the stop runs again (its ack was lost).
func TestReconnectAfterBrokerRestart(t *testing.T) {
	testenv.SkipUnlessFaultTests(t)
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Skipf("no rabbitmqctl to stop the node: %v", err)
	}
	url := testenv.ExclusiveAMQP(t)
	name := fmt.Sprintf("tbjobs-reconnect-%d", time.Now().UnixNano())
	// Cleanups run last first: the node is started again before the
	// queues are removed. Not broker.Remove: it takes the shared broker
	// lock, which this test holds exclusively.
	t.Cleanup(func() { removeQueues(t, url, name) })
	t.Cleanup(func() {
		// Whatever happened, leave the node running for every other test.
		_ = exec.Command("rabbitmqctl", "start_app").Run()
		_ = exec.Command("rabbitmqctl", "await_startup").Run()
	})
	q, err := amqpqueue.New(url, amqpqueue.Config{Queue: name, ReconnectWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	r := jobs.New(jobs.Config{Queue: q, Timeout: -1})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = r.Shutdown(ctx)
	}()
	var mu sync.Mutex
	ran := map[string]bool{}
	if err := r.Register("echo", func(_ context.Context, j *jobs.Job) error {
		mu.Lock()
		defer mu.Unlock()
		ran[j.ID] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A job running when the node stops: its ack is lost with the
	// connection, so RabbitMQ requeues it and it runs again afterwards.
	started, release := make(chan struct{}), make(chan struct{})
	var slowRuns int
	if err := r.Register("slow", func(context.Context, *jobs.Job) error {
		mu.Lock()
		slowRuns++
		first := slowRuns == 1
		mu.Unlock()
		if first {
			close(started)
			<-release
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	enqueue := func(n int) []string {
		ids := make([]string, n)
		for i := range ids {
			if ids[i], err = r.Enqueue(context.Background(), "echo", nil); err != nil {
				t.Fatalf("enqueue: %v", err)
			}
		}
		return ids
	}
	waitRan := func(ids []string) {
		testenv.WaitFor(t, "jobs to run", 60*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				if !ran[id] {
					return false
				}
			}
			return true
		})
	}
	before := enqueue(5)
	waitRan(before)
	if _, err := r.Enqueue(context.Background(), "slow", nil); err != nil {
		t.Fatal(err)
	}
	<-started

	if out, err := exec.Command("rabbitmqctl", "stop_app").CombinedOutput(); err != nil {
		t.Fatalf("stop_app: %v\n%s", err, out)
	}
	close(release) // its ack goes nowhere
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(2 * time.Second)
		out, err := exec.Command("rabbitmqctl", "start_app").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		restarted <- err
	}()
	// A caller's deadline holds during the outage: it is not queued
	// behind the workers' redial.
	tctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	t0 := time.Now()
	_, derr := r.Enqueue(tctx, "echo", nil)
	cancel()
	if took := time.Since(t0); derr == nil || took > 2*time.Second {
		t.Fatalf("enqueue with a 300ms deadline while the node is down: err %v after %v", derr, took)
	}
	// Enqueued while the node is down: the publish waits for the
	// reconnect instead of failing.
	after := enqueue(5)
	if err := <-restarted; err != nil {
		t.Fatalf("start_app: %v", err)
	}
	waitRan(after)
	testenv.WaitFor(t, "the job whose ack was lost to run again", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slowRuns >= 2
	})
}
