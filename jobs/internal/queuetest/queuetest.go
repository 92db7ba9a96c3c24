// Package queuetest is the conformance suite every broker-backed jobs.Queue
// runs against its real broker, so the three queues are held to the same
// promises by the same code: a worker in another process continues the
// journey, a worker killed mid-job loses nothing, and retries across the
// broker keep their attempt links.
package queuetest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
)

// Broker opens queues on one broker.
type Broker struct {
	// Open returns a queue on destination name over a connection of its
	// own, closed after t. Open is called for the same name by several
	// runners, in this process and in the worker subprocess.
	Open func(t testing.TB, name string) jobs.Queue
	// Remove deletes destination name from the broker.
	Remove func(t testing.TB, name string)
	// Env is passed to the worker subprocess, so it reaches the same
	// broker (an embedded one's address, say).
	Env []string
	// Redelivery bounds how long the broker takes to hand a killed
	// worker's job to another worker.
	Redelivery time.Duration
	// DeadLetter opens a queue on name that moves messages which are not
	// jobs to destination dead, and returns it with a func that waits for
	// the next message on dead.
	DeadLetter func(t testing.TB, name, dead string) (jobs.Queue, func(t testing.TB) Raw)
	// Garbage puts m on name as a raw message that is not a job.
	Garbage func(t testing.TB, name string, m Raw)
}

// Raw is a message as the broker holds it.
type Raw struct {
	Body    []byte
	Headers map[string]string
}

const (
	envRole = "QUEUETEST_ROLE"
	envName = "QUEUETEST_NAME"
)

// record is one line the worker subprocess writes per event.
type record struct {
	// Event is "ready" (its kinds are registered and it pops), "started",
	// "done" or "dead" (a job it gave up on; Error says why).
	Event   string `json:"event"`
	Error   string `json:"error,omitempty"`
	ID      string `json:"id"`
	Attempt int    `json:"attempt"`
	Trace   string `json:"trace"`
	Parent  string `json:"parent"`
	Session string `json:"session"`
	User    string `json:"user"`
}

// Child runs the worker subprocess's side and reports whether this
// process is one: call it first in the test that calls Run, and return
// when it reports true.
func Child(t *testing.T, b Broker) bool {
	if os.Getenv(envRole) != "worker" {
		return false
	}
	tel := testenv.NewTelemetry(t)
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	write := func(rec record) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(rec)
	}
	emit := func(ctx context.Context, event string, j *jobs.Job, err error) {
		rec := record{Event: event, ID: j.ID, Attempt: j.Attempt,
			Trace:   trace.SpanContextFromContext(ctx).TraceID().String(),
			Session: carrier.SessionFromContext(ctx), User: baggage.FromContext(ctx).Member("user").Value()}
		if ro, ok := trace.SpanFromContext(ctx).(sdktrace.ReadOnlySpan); ok {
			rec.Parent = ro.Parent().SpanID().String()
		}
		if err != nil {
			rec.Error = err.Error()
		}
		write(rec)
	}
	q, registered := Gate(b.Open(t, os.Getenv(envName)))
	// A job given up on is reported, so the parent fails at once with the
	// reason instead of waiting for a report that cannot come.
	r := jobs.New(jobs.Config{Queue: q, Timeout: -1,
		DeadJob: func(ctx context.Context, j *jobs.Job, err error) { emit(ctx, "dead", j, err) }},
		tracebridge.WithTracerProvider(tel.TracerProvider), tracebridge.WithConcurrency(1))
	must(t, r.Register("echo", func(ctx context.Context, j *jobs.Job) error {
		emit(ctx, "done", j, nil)
		return nil
	}))
	must(t, r.Register("hang", func(ctx context.Context, j *jobs.Job) error {
		emit(ctx, "started", j, nil)
		<-ctx.Done() // until the parent kills this process
		return ctx.Err()
	}))
	registered()
	write(record{Event: "ready"})
	// The parent ends a well-behaved worker by closing stdin.
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = r.Shutdown(ctx)
	return true
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Run runs the suite on destinations named after name, which must be
// unique to the call; b.Remove deletes each after its subtest. Once every
// subtest's cleanups have run, no goroutine started during the suite may
// remain: a connection some subtest left open (a pooled one, say, that a
// client keeps alive in the background) would otherwise surface as a leak
// in whichever later subtest checks for one.
func Run(t *testing.T, b Broker, name string) {
	leaks := goleak.IgnoreCurrent()
	defer noGoroutinesBut(t, leaks)
	for _, c := range []struct {
		name string
		run  func(*testing.T, Broker, string)
	}{{"CrossProcess", crossProcess}, {"KilledWorker", killedWorker}, {"RetryLinks", retryLinks}, {"Undecodable", undecodable},
		{"ShutdownHandsBack", shutdownHandsBack}, {"NoLeaks", noLeaks}, {"RegisterLate", registerLate}} {
		t.Run(c.name, func(t *testing.T) {
			dest := name + "-" + c.name
			t.Cleanup(func() { b.Remove(t, dest) })
			c.run(t, b, dest)
		})
	}
}

// Bounds of the waits on the worker subprocess. They only bound a failure;
// a passing run takes a fraction of them. The start covers exec'ing the
// race-built test binary, connecting and setting up the destination on a
// loaded machine; a report covers one job's trip through the broker to a
// worker that is already popping.
const (
	workerStartBound  = 60 * time.Second
	workerReportBound = 30 * time.Second
)

// worker is a running worker subprocess.
type worker struct {
	cmd     *exec.Cmd
	stdin   interface{ Close() error }
	records chan record
}

// startWorker starts a worker subprocess on name and returns once it
// reports ready: its kinds registered, popping. Until then nothing is
// timed but its start, so a slow exec under load cannot eat into the
// bound of a job's report.
func startWorker(t *testing.T, b Broker, name string) *worker {
	t.Helper()
	// Re-run this test binary, selecting the top-level test only, so the
	// child reaches Child before any subtest.
	top := strings.SplitN(t.Name(), "/", 2)[0]
	cmd := exec.Command(os.Args[0], "-test.run=^"+top+"$", "-test.count=1")
	cmd.Env = append(append(os.Environ(), b.Env...), envRole+"=worker", envName+"="+name)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	must(t, err)
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	w := &worker{cmd: cmd, stdin: stdin, records: make(chan record, 100)}
	go func() {
		defer close(w.records)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var rec record
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Event != "" {
				w.records <- rec
			}
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	if rec := w.receive(t, workerStartBound, "ready"); rec.Event != "ready" {
		t.Fatalf("worker subprocess reported %+v before it was ready", rec)
	}
	return w
}

// next returns the worker's next job report.
func (w *worker) next(t *testing.T) record {
	t.Helper()
	return w.receive(t, workerReportBound, "a job report")
}

func (w *worker) receive(t *testing.T, within time.Duration, what string) record {
	t.Helper()
	select {
	case rec, ok := <-w.records:
		if !ok {
			t.Fatalf("worker subprocess exited before %s", what)
		}
		if rec.Event == "dead" {
			t.Fatalf("worker subprocess gave up on job %s attempt %d: %s", rec.ID, rec.Attempt, rec.Error)
		}
		return rec
	case <-time.After(within):
		t.Fatalf("no %s from the worker subprocess within %v", what, within)
	}
	return record{}
}

// Gate holds q's Pop until open is called. A runner's workers start in
// jobs.New, before its kinds are registered, so a worker on a broker that
// already holds jobs could take one first and give it up as of an unknown
// kind; a test opens the gate once its kinds are registered.
func Gate(q jobs.Queue) (gated jobs.Queue, open func()) {
	g := gatedQueue{Queue: q, open: make(chan struct{})}
	var once sync.Once
	return g, func() { once.Do(func() { close(g.open) }) }
}

type gatedQueue struct {
	jobs.Queue
	open chan struct{}
}

func (g gatedQueue) Pop(ctx context.Context) (*jobs.Envelope, error) {
	select {
	case <-g.open:
		return g.Queue.Pop(ctx)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Remote forwards q's answer, so the runner treats it as the broker queue
// it is.
func (g gatedQueue) Remote() bool {
	rq, ok := g.Queue.(jobs.RemoteQueue)
	return ok && rq.Remote()
}

// enqueuer returns an enqueue-only runner on name and its telemetry.
func enqueuer(t *testing.T, b Broker, name string, kinds ...string) (*jobs.Runner, *testenv.Telemetry) {
	tel := testenv.NewTelemetry(t)
	r := jobs.New(jobs.Config{Queue: jobs.EnqueueOnly(b.Open(t, name))},
		tracebridge.WithTracerProvider(tel.TracerProvider))
	for _, k := range kinds {
		must(t, r.Register(k, func(context.Context, *jobs.Job) error { return nil }))
	}
	t.Cleanup(func() { shutdown(t, r) })
	return r, tel
}

func shutdown(t testing.TB, r *jobs.Runner) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// journey is a request context with a span, a session and baggage.
func journey(t *testing.T, tel *testenv.Telemetry, session, user string) (context.Context, trace.Span) {
	m, err := baggage.NewMember("user", user)
	must(t, err)
	bag, _ := baggage.New(m)
	ctx := baggage.ContextWithBaggage(carrier.ContextWithSession(context.Background(), session), bag)
	return tel.TracerProvider.Tracer("queuetest").Start(ctx, "request")
}

// sendSpan returns the span ID of job id's send span.
func sendSpan(t *testing.T, tel *testenv.Telemetry, id string) trace.SpanContext {
	t.Helper()
	for _, s := range tel.Ended() {
		if s.SpanKind() == trace.SpanKindProducer {
			for _, kv := range s.Attributes() {
				if string(kv.Key) == "messaging.message.id" && kv.Value.AsString() == id {
					return s.SpanContext()
				}
			}
		}
	}
	t.Fatalf("no send span for job %s", id)
	return trace.SpanContext{}
}

type want struct {
	trace, parent, session, user string
}

// crossProcess enqueues from three sessions here and checks that the
// worker subprocess ran each job on its enqueuer's trace, under its send
// span, with its session and baggage.
func crossProcess(t *testing.T, b Broker, name string) {
	r, tel := enqueuer(t, b, name, "echo")
	w := startWorker(t, b, name)
	wants := map[string]want{}
	for i := range 3 {
		session, user := fmt.Sprintf("sess-x-%d", i), fmt.Sprintf("user-%d", i)
		ctx, span := journey(t, tel, session, user)
		id, err := r.Enqueue(ctx, "echo", []byte("x"))
		span.End()
		must(t, err)
		wants[id] = want{trace: span.SpanContext().TraceID().String(),
			parent: sendSpan(t, tel, id).SpanID().String(), session: session, user: user}
	}
	for range wants {
		rec := w.next(t)
		wn, ok := wants[rec.ID]
		if !ok {
			t.Fatalf("worker ran unknown or repeated job %+v", rec)
		}
		delete(wants, rec.ID)
		got := want{rec.Trace, rec.Parent, rec.Session, rec.User}
		if got != wn || rec.Attempt != 1 {
			t.Errorf("job %s in the worker process: got %+v attempt %d, want %+v attempt 1", rec.ID, got, rec.Attempt, wn)
		}
	}
}

// killedWorker kills the worker subprocess while it runs a job, with more
// jobs queued behind it, and checks that a worker here then runs every
// job on its journey: nothing is lost to the crash.
func killedWorker(t *testing.T, b Broker, name string) {
	r, tel := enqueuer(t, b, name, "hang", "echo")
	w := startWorker(t, b, name)
	ctx, span := journey(t, tel, "sess-killed", "victim")
	hang, err := r.Enqueue(ctx, "hang", nil)
	must(t, err)
	if rec := w.next(t); rec.ID != hang || rec.Event != "started" {
		t.Fatalf("worker reported %+v, want job %s started", rec, hang)
	}
	ids := map[string]bool{hang: true}
	for range 4 {
		id, err := r.Enqueue(ctx, "echo", nil)
		must(t, err)
		ids[id] = true
	}
	span.End()
	must(t, w.cmd.Process.Kill())
	for rec := range w.records { // what it finished before it died counts
		if rec.Event == "done" {
			delete(ids, rec.ID)
		}
	}

	wtel := testenv.NewTelemetry(t)
	wq, registered := Gate(b.Open(t, name))
	wr := jobs.New(jobs.Config{Queue: wq}, tracebridge.WithTracerProvider(wtel.TracerProvider))
	done := make(chan *jobs.Job, 10)
	handler := func(ctx context.Context, j *jobs.Job) error {
		if trace.SpanContextFromContext(ctx).TraceID() != span.SpanContext().TraceID() ||
			carrier.SessionFromContext(ctx) != "sess-killed" {
			t.Errorf("job %s redelivered off its journey: trace %s session %q", j.ID,
				trace.SpanContextFromContext(ctx).TraceID(), carrier.SessionFromContext(ctx))
		}
		done <- j
		return nil
	}
	must(t, wr.Register("hang", handler))
	must(t, wr.Register("echo", handler))
	registered()
	defer shutdown(t, wr)
	deadline := time.After(b.Redelivery + 10*time.Second)
	for len(ids) > 0 {
		select {
		case j := <-done:
			delete(ids, j.ID)
		case <-deadline:
			t.Fatalf("jobs lost after the worker was killed: %v", ids)
		}
	}
}

// retryLinks runs a job that fails twice in a worker with its own
// connection and checks the three attempts: one trace, attempt numbers
// 1..3, attempt N linked to attempt N-1, and the backoff waited.
func retryLinks(t *testing.T, b Broker, name string) {
	const backoff = 50 * time.Millisecond
	r, tel := enqueuer(t, b, name, "flaky")
	wr := jobs.New(jobs.Config{Queue: b.Open(t, name)}, tracebridge.WithTracerProvider(tel.TracerProvider),
		tracebridge.WithRetry(5, backoff, backoff))
	var (
		mu    sync.Mutex
		calls int
	)
	ok := make(chan struct{})
	must(t, wr.Register("flaky", func(ctx context.Context, j *jobs.Job) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls < 3 {
			return fmt.Errorf("flaky attempt %d", j.Attempt)
		}
		close(ok)
		return nil
	}))
	defer shutdown(t, wr)
	ctx, span := journey(t, tel, "sess-retry", "retrier")
	_, err := r.Enqueue(ctx, "flaky", nil)
	span.End()
	must(t, err)
	select {
	case <-ok:
	case <-time.After(15 * time.Second):
		t.Fatal("flaky job did not succeed")
	}
	var attempts [3]sdktrace.ReadOnlySpan
	deadline := time.Now().Add(5 * time.Second)
	for attempts[2] == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		for _, s := range tel.Ended() {
			if s.SpanKind() != trace.SpanKindConsumer {
				continue
			}
			for _, kv := range s.Attributes() {
				if kv.Key == msgtrace.AttemptKey && kv.Value.AsInt64() >= 1 && kv.Value.AsInt64() <= 3 {
					attempts[kv.Value.AsInt64()-1] = s
				}
			}
		}
	}
	for i, s := range attempts {
		if s == nil {
			t.Fatalf("attempt %d has no process span", i+1)
		}
		if s.SpanContext().TraceID() != span.SpanContext().TraceID() {
			t.Errorf("attempt %d on trace %s, want the enqueuer's %s", i+1, s.SpanContext().TraceID(), span.SpanContext().TraceID())
		}
		if i == 0 {
			continue
		}
		prev := attempts[i-1]
		linked := false
		for _, l := range s.Links() {
			linked = linked || l.SpanContext.SpanID() == prev.SpanContext().SpanID()
		}
		if !linked {
			t.Errorf("attempt %d does not link to attempt %d (%s): links %v", i+1, i, prev.SpanContext().SpanID(), s.Links())
		}
		if s.StartTime().Before(prev.EndTime()) {
			t.Errorf("attempt %d started before attempt %d ended", i+1, i)
		}
	}
}

// undecodable: a message that is not a job moves to the dead-letter
// destination with its headers (its journey) and the dead-letter-*
// headers, and does not hold up the jobs behind it.
func undecodable(t *testing.T, b Broker, name string) {
	dead := name + "-dead"
	t.Cleanup(func() { b.Remove(t, dead) })
	q, next := b.DeadLetter(t, name, dead)
	tel := testenv.NewTelemetry(t)
	// One worker: a message that is not a job must not stop it.
	r := jobs.New(jobs.Config{Queue: q, Timeout: -1}, tracebridge.WithTracerProvider(tel.TracerProvider),
		tracebridge.WithConcurrency(1))
	defer shutdown(t, r)
	ran := make(chan string, 1)
	must(t, r.Register("echo", func(_ context.Context, j *jobs.Job) error {
		ran <- j.ID
		return nil
	}))

	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	b.Garbage(t, name, Raw{Body: []byte("not a job"), Headers: map[string]string{"traceparent": tp, "x-app": "v1"}})
	id, err := r.Enqueue(context.Background(), "echo", []byte("after the garbage"))
	must(t, err)
	select {
	case got := <-ran:
		if got != id {
			t.Fatalf("ran job %s, want %s", got, id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the job behind a message that is not a job did not run")
	}

	m := next(t)
	if string(m.Body) != "not a job" || m.Headers["traceparent"] != tp || m.Headers["x-app"] != "v1" {
		t.Fatalf("dead letter %q with headers %v: body or original headers lost", m.Body, m.Headers)
	}
	if m.Headers["dead-letter-source"] != name || !strings.Contains(m.Headers["dead-letter-reason"], "decode") {
		t.Fatalf("dead-letter headers %v: want source %q and the decode error as reason", m.Headers, name)
	}
}

// blockedWorker is a runner on name with two workers: "honour" blocks
// until its ctx is cancelled, "ignore" until release is closed. started
// receives each job's ID as its handler begins.
func blockedWorker(t *testing.T, q jobs.Queue, grace time.Duration) (r *jobs.Runner, started chan string, release chan struct{}) {
	r = jobs.New(jobs.Config{Queue: q, ShutdownGrace: grace, Timeout: -1}, tracebridge.WithConcurrency(2))
	started, release = make(chan string, 2), make(chan struct{})
	must(t, r.Register("honour", func(ctx context.Context, j *jobs.Job) error {
		started <- j.ID
		<-ctx.Done()
		return ctx.Err()
	}))
	must(t, r.Register("ignore", func(_ context.Context, j *jobs.Job) error {
		started <- j.ID
		<-release
		return nil
	}))
	return r, started, release
}

func awaitStarted(t *testing.T, started chan string, ids ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for len(want) > 0 {
		select {
		case id := <-started:
			delete(want, id)
		case <-time.After(15 * time.Second):
			t.Fatalf("jobs %v did not start", want)
		}
	}
}

// shutdownHandsBack: a worker's Shutdown deadline passes while one handler
// honours the cancellation and another ignores it past the grace. Shutdown
// reports neither: both stay with the broker, and a second worker runs
// them. A job reported unrun and also redelivered would run twice for a
// caller who re-enqueues the report.
func shutdownHandsBack(t *testing.T, b Broker, name string) {
	r, _ := enqueuer(t, b, name, "honour", "ignore")
	a, started, release := blockedWorker(t, b.Open(t, name), 50*time.Millisecond)
	defer close(release)
	honour, err := r.Enqueue(context.Background(), "honour", nil)
	must(t, err)
	ignore, err := r.Enqueue(context.Background(), "ignore", nil)
	must(t, err)
	awaitStarted(t, started, honour, ignore)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	unrun, err := a.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || len(unrun) != 0 {
		t.Fatalf("shutdown past its deadline: %d reported (%+v), %v; want none reported and DeadlineExceeded", len(unrun), unrun, err)
	}

	wq, registered := Gate(b.Open(t, name))
	w := jobs.New(jobs.Config{Queue: wq})
	ran := make(chan string, 4)
	for _, k := range []string{"honour", "ignore"} {
		must(t, w.Register(k, func(_ context.Context, j *jobs.Job) error { ran <- j.ID; return nil }))
	}
	registered()
	defer shutdown(t, w)
	want := map[string]bool{honour: true, ignore: true}
	deadline := time.After(b.Redelivery + 10*time.Second)
	for len(want) > 0 {
		select {
		case id := <-ran:
			delete(want, id)
		case <-deadline:
			t.Fatalf("jobs handed back at Shutdown were not delivered again: %v", want)
		}
	}
}

// noLeaks: no goroutine outlives a runner's Shutdown whose deadline
// passed with handlers blocked in flight (once they returned), nor a
// queue closed with a popped job it never settled, nor their connections.
func noLeaks(t *testing.T, b Broker, name string) {
	leaks := goleak.IgnoreCurrent()
	// Registered first, so it runs last: after the cleanups that close
	// the connections b.Open made.
	t.Cleanup(func() { noGoroutinesBut(t, leaks) })

	a, started, release := blockedWorker(t, b.Open(t, name), 50*time.Millisecond)
	honour, err := a.Enqueue(context.Background(), "honour", nil)
	must(t, err)
	ignore, err := a.Enqueue(context.Background(), "ignore", nil)
	must(t, err)
	awaitStarted(t, started, honour, ignore)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := a.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown: %v, want DeadlineExceeded", err)
	}
	close(release) // the abandoned handler returns; its worker must exit

	// The queue alone: one of those jobs, popped and never settled.
	q := b.Open(t, name)
	pctx, pcancel := context.WithTimeout(context.Background(), b.Redelivery+10*time.Second)
	defer pcancel()
	if _, err := q.Pop(pctx); err != nil {
		t.Fatalf("pop: %v", err)
	}
	must(t, q.Close())
	if _, err := q.Pop(pctx); !errors.Is(err, jobs.ErrClosed) {
		t.Fatalf("pop after close: %v, want ErrClosed", err)
	}
}

// noGoroutinesBut fails t if goroutines other than those leaks ignores
// are running. A broker client may close a connection in the background
// after its Close returned (and an embedded broker then ends its side), so
// the check allows that a few seconds; a leak lasts longer (kafka-go's idle
// connections, say, live for 30s, and a pool's metadata refresh keeps its
// connection from ever being idle).
func noGoroutinesBut(t *testing.T, leaks goleak.Option) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := goleak.Find(leaks)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Error(err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// registerLate takes a job before the worker's program registered its kind,
// as a worker does whose broker already holds jobs when it starts: the job
// must be retried until the kind is there, not dead-lettered on the spot.
func registerLate(t *testing.T, b Broker, name string) {
	r, _ := enqueuer(t, b, name, "late")
	id, err := r.Enqueue(context.Background(), "late", nil)
	must(t, err)

	wtel := testenv.NewTelemetry(t)
	var dead atomic.Int32
	wr := jobs.New(jobs.Config{Queue: b.Open(t, name), DeadJob: func(context.Context, *jobs.Job, error) { dead.Add(1) }},
		tracebridge.WithTracerProvider(wtel.TracerProvider), tracebridge.WithRetry(50, 20*time.Millisecond, 50*time.Millisecond))
	defer shutdown(t, wr)
	// Wait until the worker has tried the job with the kind unknown.
	testenv.WaitFor(t, "an attempt of the unregistered kind", 15*time.Second, func() bool {
		for _, s := range wtel.Ended() {
			if s.SpanKind() == trace.SpanKindConsumer {
				return true
			}
		}
		return false
	})
	ran := make(chan string, 1)
	must(t, wr.Register("late", func(_ context.Context, j *jobs.Job) error { ran <- j.ID; return nil }))
	select {
	case got := <-ran:
		if got != id {
			t.Fatalf("ran job %s, want %s", got, id)
		}
	case <-time.After(b.Redelivery + 15*time.Second):
		t.Fatalf("job %s of a kind registered after the worker started never ran (dead-job calls: %d)", id, dead.Load())
	}
	if n := dead.Load(); n != 0 {
		t.Fatalf("job went to the dead-job handler %d times before its kind was registered", n)
	}
}
