package natsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"pgregory.net/rapid"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/jobs/internal/queuetest"
	"github.com/tracebridge/tracebridge/jobs/natsqueue"
)

// crashAckWait is short so that a crashed worker's jobs come back soon;
// the heartbeat keeps a running job from being redelivered meanwhile.
const crashAckWait = 200 * time.Millisecond

// first is what a job's first delivery does; every later delivery (a
// retry, or a redelivery after a crash or a Shutdown) succeeds.
type first int

const (
	firstSucceeds first = iota
	firstFails          // retried through the stream
	firstSlow           // succeeds after a moment unless cancelled
	firstHangs          // until a Shutdown or a crash cancels it
	firstKinds
)

// crashModel runs workers on one stream, one at a time, and kills them
// (closes their connection without Shutdown) or shuts them down between
// steps. Every enqueued job must then run to completion at least once,
// and no Shutdown reports a job (with a broker-backed queue every
// unfinished job stays with the broker).
type crashModel struct {
	admin  jetstream.JetStream
	stream string
	enq    *jobs.Runner
	worker *crashWorker
	nextID int // workers started
	// finishing is closed when the steps are over, so that a first call
	// that hangs in the last worker fails (and is retried) instead.
	finishing chan struct{}

	mu        sync.Mutex
	script    map[string]first // by job payload
	calls     map[string]int   // handler calls by payload
	succeeded map[string]int   // successful handler calls by payload, in any worker
	enqueued  []string
}

type crashWorker struct {
	id int
	nc *natsgo.Conn
	r  *jobs.Runner
}

var quiet = tracebridge.WithLogger(slog.New(slog.DiscardHandler)) // crashed workers log every failed pull

func (m *crashModel) queue(t *rapid.T) (*natsgo.Conn, jobs.Queue) {
	nc, err := natsgo.Connect(testenv.NATSURL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := natsqueue.New(ctx, js, natsqueue.Config{Stream: m.stream, AckWait: crashAckWait})
	if err != nil {
		t.Fatalf("open %s: %v", m.stream, err)
	}
	return nc, q
}

func (m *crashModel) handle(ctx context.Context, j *jobs.Job) error {
	key := string(j.Payload)
	m.mu.Lock()
	m.calls[key]++
	firstCall := m.calls[key] == 1
	how := m.script[key]
	m.mu.Unlock()
	if firstCall {
		switch how {
		case firstFails:
			return fmt.Errorf("job %s: first call fails", key)
		case firstSlow:
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		case firstHangs:
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-m.finishing:
				return fmt.Errorf("job %s: first call hung until the end", key)
			}
		}
	}
	m.mu.Lock()
	m.succeeded[key]++
	m.mu.Unlock()
	return nil
}

func (m *crashModel) startWorker(t *rapid.T) {
	nc, q := m.queue(t)
	q, registered := queuetest.Gate(q)
	m.nextID++
	r := jobs.New(jobs.Config{Queue: q, Timeout: -1, ShutdownGrace: 100 * time.Millisecond},
		tracebridge.WithConcurrency(2), tracebridge.WithRetry(5, time.Millisecond, 5*time.Millisecond), quiet)
	if err := r.Register("job", m.handle); err != nil {
		t.Fatal(err)
	}
	registered()
	m.worker = &crashWorker{id: m.nextID, nc: nc, r: r}
}

// stop shuts the current worker down with deadline, after killing its
// connection first when crash is set, and checks that Shutdown reported
// nothing: the broker keeps every job the worker did not finish.
func (m *crashModel) stop(t *rapid.T, crash bool, deadline time.Duration) {
	w := m.worker
	m.worker = nil
	if crash {
		w.nc.Close() // no ack, nak or heartbeat from here on
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	unrun, err := w.r.Shutdown(ctx)
	if !crash {
		defer w.nc.Close()
	}
	if len(unrun) != 0 {
		t.Fatalf("worker %d (crashed %v) reported %d jobs unrun, which its broker also keeps: %+v", w.id, crash, len(unrun), unrun)
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("worker %d shutdown: %v", w.id, err)
	}
}

func (m *crashModel) Enqueue(t *rapid.T) {
	n := rapid.IntRange(1, 3).Draw(t, "jobs")
	for range n {
		how := first(rapid.IntRange(0, int(firstKinds)-1).Draw(t, "first"))
		m.mu.Lock()
		key := fmt.Sprintf("job-%d", len(m.enqueued)+1)
		m.script[key] = how
		m.enqueued = append(m.enqueued, key)
		m.mu.Unlock()
		if _, err := m.enq.Enqueue(context.Background(), "job", []byte(key)); err != nil {
			t.Fatalf("enqueue %s: %v", key, err)
		}
	}
}

func (m *crashModel) Wait(t *rapid.T) {
	time.Sleep(time.Duration(rapid.IntRange(0, 20).Draw(t, "waitMs")) * time.Millisecond)
}

// Crash closes the worker's connection under it, then starts another.
func (m *crashModel) Crash(t *rapid.T) {
	m.stop(t, true, 0)
	m.startWorker(t)
}

// Restart shuts the worker down with a random deadline, then starts
// another.
func (m *crashModel) Restart(t *rapid.T) {
	m.stop(t, false, time.Duration(rapid.IntRange(0, 30).Draw(t, "deadlineMs"))*time.Millisecond)
	m.startWorker(t)
}

// finish replaces the worker (freeing one a hanging job holds), then waits
// until every job has succeeded at least once and the stream is empty, so
// every message was acked and none is left to run.
func (m *crashModel) finish(t *rapid.T) {
	close(m.finishing)
	m.Restart(t)
	deadline := time.Now().Add(10*crashAckWait + 15*time.Second)
	for {
		m.mu.Lock()
		var missing []string
		for _, k := range m.enqueued {
			if m.succeeded[k] == 0 {
				missing = append(missing, k)
			}
		}
		m.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := m.admin.Stream(ctx, m.stream)
		var left uint64
		if err == nil {
			left = info.CachedInfo().State.Msgs
		}
		cancel()
		if err != nil {
			t.Fatalf("stream %s: %v", m.stream, err)
		}
		if len(missing) == 0 && left == 0 {
			break
		}
		if time.Now().After(deadline) {
			sort.Strings(missing)
			t.Fatalf("jobs never ran to completion after the crashes: %v; %d messages left in the stream", missing, left)
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.stop(t, false, 5*time.Second)
}

// Workers on one JetStream stream are killed (their connection closed,
// no Shutdown) or shut down with a random deadline between random
// enqueues, with jobs that succeed, fail once, run slow or hang until
// cancelled. Every enqueued job runs to completion at least once after a
// new worker starts, the stream ends empty, and no Shutdown reports a job
// that its broker also keeps (which would run it twice).
func TestCrashModel(t *testing.T) {
	nc, err := natsgo.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer nc.Close()
	admin, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	run := time.Now().UnixNano()
	checks, jobsRun, crashes, twice := 0, 0, 0, 0
	start := time.Now()
	rapid.Check(t, func(t *rapid.T) {
		checks++
		m := &crashModel{admin: admin, stream: fmt.Sprintf("tbjobs-crash-%d-%d", run, checks),
			script: map[string]first{}, calls: map[string]int{}, succeeded: map[string]int{},
			finishing: make(chan struct{})}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = admin.DeleteStream(ctx, m.stream)
		})
		enc, eq := m.queue(t)
		defer enc.Close()
		m.enq = jobs.New(jobs.Config{Queue: jobs.EnqueueOnly(eq)}, quiet)
		if err := m.enq.Register("job", m.handle); err != nil { // runs nowhere: it only enqueues
			t.Fatal(err)
		}
		defer func() { _, _ = m.enq.Shutdown(context.Background()) }()
		m.startWorker(t)
		t.Cleanup(func() { // a check that failed midway leaves its worker
			if w := m.worker; w != nil {
				w.nc.Close()
				ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
				defer cancel()
				_, _ = w.r.Shutdown(ctx)
			}
		})
		// A bounded number of steps rather than Repeat's 30 on average:
		// each crash costs a connection and a consumer, and 100 checks
		// must stay well under a minute.
		actions := map[string]func(*rapid.T){"Enqueue": m.Enqueue, "Wait": m.Wait, "Crash": m.Crash, "Restart": m.Restart}
		names := []string{"Crash", "Enqueue", "Enqueue", "Restart", "Wait"}
		for range rapid.IntRange(1, 10).Draw(t, "steps") {
			name := rapid.SampledFrom(names).Draw(t, "action")
			if name == "Crash" {
				crashes++
			}
			actions[name](t)
		}
		m.finish(t)
		jobsRun += len(m.enqueued)
		for _, n := range m.succeeded {
			if n > 1 {
				twice++
			}
		}
	})
	t.Logf("%d checks, %d jobs, %d crashes, %d jobs completed more than once (at least once allows it), in %v",
		checks, jobsRun, crashes, twice, time.Since(start).Round(time.Millisecond))
}
