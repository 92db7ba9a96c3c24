package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
)

// attemptsOf returns job id's process spans ordered by attempt.
func attemptsOf(t *testing.T, procs []sdktrace.ReadOnlySpan, id string) []sdktrace.ReadOnlySpan {
	t.Helper()
	var out []sdktrace.ReadOnlySpan
	for _, p := range procs {
		if v, _ := testenv.Attr(p, "messaging.message.id"); v.AsString() == id {
			out = append(out, p)
		}
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			a, _ := testenv.Attr(out[i], msgtrace.AttemptKey)
			b, _ := testenv.Attr(out[j], msgtrace.AttemptKey)
			if b.AsInt64() < a.AsInt64() {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func previousLink(s sdktrace.ReadOnlySpan) (trace.SpanContext, bool) {
	for _, l := range s.Links() {
		for _, kv := range l.Attributes {
			if kv.Key == msgtrace.LinkTypeKey && kv.Value.AsString() == msgtrace.LinkPreviousAttempt {
				return l.SpanContext, true
			}
		}
	}
	return trace.SpanContext{}, false
}

// Jobs that fail twice then succeed: three attempt spans per job, each a
// child of the enqueue span, attempt N linked to N-1, errors recorded but
// no Error status, and backoff delays within the full-jitter bounds.
func TestFailTwiceThenSucceed(t *testing.T) {
	const n = 20
	initial, maxB := 80*time.Millisecond, 120*time.Millisecond
	// Wall-clock gaps include ending a span and scheduling under -race on
	// a shared machine; the drawn delays themselves are checked exactly in
	// msgtrace (TestBackoffFullJitterBounds).
	slack := 200 * time.Millisecond
	r, tel := newRunner(t, jobs.Config{}, tracebridge.WithConcurrency(n))

	var mu sync.Mutex
	ends := map[string]time.Time{}
	gaps := map[int][]time.Duration{} // by failed attempt number
	done := make(chan string, n)
	err := r.Register("flaky", func(ctx context.Context, job *jobs.Job) error {
		now := time.Now()
		mu.Lock()
		if last, ok := ends[job.ID]; ok {
			gaps[job.Attempt-1] = append(gaps[job.Attempt-1], now.Sub(last))
		}
		mu.Unlock()
		if job.Attempt < 3 {
			mu.Lock()
			ends[job.ID] = time.Now()
			mu.Unlock()
			return fmt.Errorf("flaky %s: attempt %d", job.ID, job.Attempt)
		}
		done <- job.ID
		return nil
	}, jobs.WithMaxAttempts(5), jobs.WithBackoff(initial, maxB))
	if err != nil {
		t.Fatal(err)
	}
	ctx, root := journey(t, tel, "sess-retry", "u1")
	ids := map[string]bool{}
	for i := range n {
		id, err := r.Enqueue(ctx, "flaky", []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		ids[id] = true
	}
	root.End()
	for range n {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("jobs did not succeed on attempt 3")
		}
	}
	if _, err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	b := msgtrace.Backoff{Initial: initial, Max: maxB}
	for attempt := 1; attempt <= 2; attempt++ {
		ceiling := b.Ceiling(attempt)
		var lo, hi, sum time.Duration
		lo = time.Hour
		for _, g := range gaps[attempt] {
			lo, hi, sum = min(lo, g), max(hi, g), sum+g
		}
		t.Logf("backoff after attempt %d: %d delays in [%v, %v], mean %v; bounds [0, %v] (+%v slack)",
			attempt, len(gaps[attempt]), lo, hi, sum/time.Duration(len(gaps[attempt])), ceiling, slack)
		if len(gaps[attempt]) != n {
			t.Fatalf("%d delays after attempt %d, want %d", len(gaps[attempt]), attempt, n)
		}
		if hi > ceiling+slack {
			t.Errorf("delay %v after attempt %d exceeds ceiling %v + %v", hi, attempt, ceiling, slack)
		}
		// Full jitter spreads the delays: all of 20 uniform draws below a
		// quarter of the ceiling has probability 0.25^20.
		if hi < ceiling/4 {
			t.Errorf("delays after attempt %d all below %v: no jitter or no backoff", attempt, ceiling/4)
		}
	}

	sends := map[trace.SpanID]bool{}
	for _, s := range tel.Named("send jobs") {
		sends[s.SpanContext().SpanID()] = true
	}
	procs := tel.Named("process jobs")
	for id := range ids {
		spans := attemptsOf(t, procs, id)
		if len(spans) != 3 {
			t.Fatalf("job %s: %d attempt spans, want 3", id, len(spans))
		}
		for i, s := range spans {
			if a, _ := testenv.Attr(s, msgtrace.AttemptKey); a.AsInt64() != int64(i+1) {
				t.Fatalf("job %s: span %d has attempt %d", id, i, a.AsInt64())
			}
			if !sends[s.Parent().SpanID()] || s.SpanContext().TraceID() != root.SpanContext().TraceID() {
				t.Fatalf("job %s attempt %d is not a child of its enqueue span on the request's trace", id, i+1)
			}
			if s.Status().Code == codes.Error {
				t.Fatalf("job %s attempt %d has status Error although the job recovered", id, i+1)
			}
			prev, linked := previousLink(s)
			if i == 0 {
				if linked {
					t.Fatalf("job %s attempt 1 links to a previous attempt", id)
				}
				continue
			}
			if !linked || prev.SpanID() != spans[i-1].SpanContext().SpanID() {
				t.Fatalf("job %s attempt %d does not link to attempt %d", id, i+1, i)
			}
			if len(spans[i-1].Events()) == 0 || spans[i-1].Events()[0].Name != "exception" {
				t.Fatalf("job %s attempt %d's failure is not recorded as an exception", id, i)
			}
		}
	}
	if got, _ := tel.SumInt(t, "tracebridge.retries"); got != 2*n {
		t.Fatalf("tracebridge.retries = %d, want %d", got, 2*n)
	}
}

type deadCall struct {
	job     jobs.Job
	err     error
	session string
	traceID trace.TraceID
	inSpan  trace.SpanID
}

func deadRecorder() (jobs.DeadJobHandler, chan deadCall) {
	ch := make(chan deadCall, 10)
	return func(ctx context.Context, job *jobs.Job, err error) {
		sc := trace.SpanContextFromContext(ctx)
		ch <- deadCall{job: *job, err: err, session: carrier.SessionFromContext(ctx), traceID: sc.TraceID(), inSpan: sc.SpanID()}
	}, ch
}

func waitDead(t *testing.T, ch chan deadCall) deadCall {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("dead-job handler not called")
	}
	return deadCall{}
}

// An always-failing job reaches the dead-job handler after max attempts,
// inside its final attempt's span, on its enqueuer's journey; only the
// final attempt has status Error.
func TestAlwaysFailingJobGoesDead(t *testing.T) {
	onDead, deadCh := deadRecorder()
	r, tel := newRunner(t, jobs.Config{DeadJob: onDead})
	var calls int
	boom := errors.New("smtp down")
	if err := r.Register("doomed", func(ctx context.Context, job *jobs.Job) error {
		calls++
		return fmt.Errorf("send mail: %w", boom)
	}, jobs.WithMaxAttempts(3), jobs.WithBackoff(time.Millisecond, 5*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	ctx, root := journey(t, tel, "sess-dead", "u2")
	id, err := r.Enqueue(ctx, "doomed", []byte("x"))
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	d := waitDead(t, deadCh)
	if _, err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d.job.ID != id || d.job.Attempt != 3 || d.job.MaxAttempts != 3 || calls != 3 {
		t.Fatalf("dead job %s at attempt %d/%d after %d calls, want %s at 3/3 after 3", d.job.ID, d.job.Attempt, d.job.MaxAttempts, calls, id)
	}
	if !errors.Is(d.err, boom) {
		t.Fatalf("dead-job error %v does not wrap the handler's", d.err)
	}
	if d.session != "sess-dead" || d.traceID != root.SpanContext().TraceID() {
		t.Fatalf("dead-job handler journey: session %q trace %s", d.session, d.traceID)
	}
	spans := attemptsOf(t, tel.Named("process jobs"), id)
	if len(spans) != 3 {
		t.Fatalf("%d attempt spans, want 3", len(spans))
	}
	if d.inSpan != spans[2].SpanContext().SpanID() {
		t.Fatal("dead-job handler does not run inside the final attempt's span")
	}
	for i, s := range spans {
		wantErr := i == 2
		if (s.Status().Code == codes.Error) != wantErr {
			t.Fatalf("attempt %d status %v; only the final attempt is Error", i+1, s.Status())
		}
		final, _ := testenv.Attr(s, msgtrace.RetryFinalKey)
		if final.AsBool() != wantErr {
			t.Fatalf("attempt %d tracebridge.retry.final = %v", i+1, final.AsBool())
		}
	}
	if got, _ := tel.SumInt(t, "tracebridge.dead_letters"); got != 1 {
		t.Fatalf("tracebridge.dead_letters = %d, want 1", got)
	}
}

// With WithErrorOnEveryAttempt every failed attempt has status Error.
func TestErrorOnEveryAttempt(t *testing.T) {
	onDead, deadCh := deadRecorder()
	r, tel := newRunner(t, jobs.Config{DeadJob: onDead}, tracebridge.WithErrorOnEveryAttempt(),
		tracebridge.WithRetry(2, time.Millisecond, time.Millisecond))
	_ = r.Register("doomed", func(context.Context, *jobs.Job) error { return errors.New("no") })
	id, err := r.Enqueue(context.Background(), "doomed", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitDead(t, deadCh)
	_, _ = r.Shutdown(context.Background())
	spans := attemptsOf(t, tel.Named("process jobs"), id)
	if len(spans) != 2 {
		t.Fatalf("%d attempts, want 2 (WithRetry's runner default)", len(spans))
	}
	for i, s := range spans {
		if s.Status().Code != codes.Error {
			t.Fatalf("attempt %d status %v, want Error", i+1, s.Status())
		}
	}
}

// A panicking job is retried, then dead, with the panic's stack on each
// attempt span; the worker survives.
func TestPanickingJobGoesDeadWithStack(t *testing.T) {
	onDead, deadCh := deadRecorder()
	r, tel := newRunner(t, jobs.Config{DeadJob: onDead}, tracebridge.WithConcurrency(1))
	_ = r.Register("panics", func(context.Context, *jobs.Job) error { panicInHandler(); return nil },
		jobs.WithMaxAttempts(2), jobs.WithBackoff(time.Millisecond, time.Millisecond))
	ok := make(chan struct{})
	_ = r.Register("fine", func(context.Context, *jobs.Job) error { close(ok); return nil })
	ctx, root := journey(t, tel, "sess-panic", "u3")
	id, err := r.Enqueue(ctx, "panics", nil)
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	d := waitDead(t, deadCh)
	var pe *tracebridge.PanicError
	if !errors.As(d.err, &pe) || !strings.Contains(string(pe.Stack), "panicInHandler") {
		t.Fatalf("dead-job error %v is not a PanicError with the handler's stack", d.err)
	}
	if d.session != "sess-panic" || d.traceID != root.SpanContext().TraceID() || d.job.Attempt != 2 {
		t.Fatalf("dead job after panic: attempt %d session %q trace %s", d.job.Attempt, d.session, d.traceID)
	}
	if _, err := r.Enqueue(context.Background(), "fine", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ok:
	case <-time.After(5 * time.Second):
		t.Fatal("the only worker did not survive the panics")
	}
	_, _ = r.Shutdown(context.Background())
	spans := attemptsOf(t, tel.Named("process jobs"), id)
	if len(spans) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(spans))
	}
	for i, s := range spans {
		var stack string
		for _, ev := range s.Events() {
			for _, kv := range ev.Attributes {
				if kv.Key == "exception.stacktrace" {
					stack = kv.Value.AsString()
				}
			}
		}
		if !strings.Contains(stack, "panicInHandler") {
			t.Fatalf("attempt %d: no stack with the panicking function on the span", i+1)
		}
		if et, _ := testenv.Attr(s, "error.type"); et.AsString() != "panic" {
			t.Fatalf("attempt %d error.type %q, want panic", i+1, et.AsString())
		}
	}
}

func panicInHandler() { panic("nil map in handler") }

// A permanent error goes dead on the first attempt.
func TestPermanentSkipsRetries(t *testing.T) {
	onDead, deadCh := deadRecorder()
	r, tel := newRunner(t, jobs.Config{DeadJob: onDead})
	_ = r.Register("bad", func(context.Context, *jobs.Job) error {
		return tracebridge.Permanent(errors.New("payload does not decode"))
	}, jobs.WithMaxAttempts(5))
	id, _ := r.Enqueue(context.Background(), "bad", []byte("{"))
	d := waitDead(t, deadCh)
	_, _ = r.Shutdown(context.Background())
	if d.job.Attempt != 1 || !tracebridge.IsPermanent(d.err) {
		t.Fatalf("permanent failure dead at attempt %d with %v", d.job.Attempt, d.err)
	}
	if n := len(attemptsOf(t, tel.Named("process jobs"), id)); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}

// Each attempt is bounded by its timeout, and a per-job option overrides
// the kind's.
func TestTimeoutPerAttempt(t *testing.T) {
	onDead, deadCh := deadRecorder()
	r, _ := newRunner(t, jobs.Config{DeadJob: onDead})
	_ = r.Register("slow", func(ctx context.Context, job *jobs.Job) error {
		<-ctx.Done()
		return ctx.Err()
	}, jobs.WithTimeout(time.Hour), jobs.WithMaxAttempts(1))
	start := time.Now()
	if _, err := r.Enqueue(context.Background(), "slow", nil, jobs.WithTimeout(30*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	d := waitDead(t, deadCh)
	if !errors.Is(d.err, context.DeadlineExceeded) {
		t.Fatalf("timed-out attempt failed with %v", d.err)
	}
	if el := time.Since(start); el < 30*time.Millisecond || el > 3*time.Second {
		t.Fatalf("attempt with a 30ms timeout ended after %v", el)
	}
}
