package jobs_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
)

// TestAttackKindOnEverySpan enqueues jobs of two kinds from several
// goroutines, one kind failing its first attempt: every send span and every
// attempt's process span carries the kind of its own job, once.
func TestAttackKindOnEverySpan(t *testing.T) {
	const each = 15
	r, tel := newRunner(t, jobs.Config{}, tracebridge.WithConcurrency(4))
	var mu sync.Mutex
	kinds := map[string]string{} // job id -> kind
	attempts := map[string]int{}
	done := make(chan struct{}, 2*each)
	handler := func(kind string) jobs.Handler {
		return func(ctx context.Context, job *jobs.Job) error {
			mu.Lock()
			attempts[job.ID]++
			mu.Unlock()
			if kind == "a" && job.Attempt == 1 {
				return errors.New("first attempt fails")
			}
			done <- struct{}{}
			return nil
		}
	}
	for _, k := range []string{"a", "bbbbbbbb"} {
		if err := r.Register(k, handler(k), jobs.WithMaxAttempts(3), jobs.WithBackoff(time.Millisecond, 5*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for _, k := range []string{"a", "bbbbbbbb"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, root := journey(t, tel, "sess-"+k, "u")
			defer root.End()
			for range each {
				id, err := r.Enqueue(ctx, k, []byte("x"))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				kinds[id] = k
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for range 2 * each {
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("jobs did not finish")
		}
	}
	if _, err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	seen := map[string]map[trace.SpanKind]int{}
	for _, s := range tel.Ended() {
		id, ok := testenv.Attr(s, semconv.MessagingMessageIDKey)
		if !ok {
			continue
		}
		want, known := kinds[id.AsString()]
		if !known {
			t.Errorf("span %q: unknown job %s", s.Name(), id.AsString())
			continue
		}
		n := 0
		for _, a := range s.Attributes() {
			if a.Key == jobs.KindKey {
				n++
				if a.Value.AsString() != want {
					t.Errorf("span %q of job %s (%s): kind %q", s.Name(), id.AsString(), want, a.Value.AsString())
				}
			}
		}
		if n != 1 {
			t.Errorf("span %q of job %s: %d kind attributes, want 1", s.Name(), id.AsString(), n)
		}
		if seen[id.AsString()] == nil {
			seen[id.AsString()] = map[trace.SpanKind]int{}
		}
		seen[id.AsString()][s.SpanKind()]++
	}
	for id, k := range kinds {
		wantProcess := 1
		if k == "a" {
			wantProcess = 2
		}
		if seen[id][trace.SpanKindProducer] != 1 || seen[id][trace.SpanKindConsumer] != wantProcess || attempts[id] != wantProcess {
			t.Errorf("job %s (%s): %d send, %d process spans, %d attempts; want 1, %d, %d", id, k,
				seen[id][trace.SpanKindProducer], seen[id][trace.SpanKindConsumer], attempts[id], wantProcess, wantProcess)
		}
	}
}
