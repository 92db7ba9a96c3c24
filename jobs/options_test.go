package jobs_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
)

// A delayed job does not start before its delay.
func TestDelayBeforeFirstRun(t *testing.T) {
	r, _ := newRunner(t, jobs.Config{})
	started := make(chan time.Time, 1)
	_ = r.Register("later", func(context.Context, *jobs.Job) error { started <- time.Now(); return nil },
		jobs.WithDelay(time.Hour)) // the kind's default, overridden below
	at := time.Now()
	if _, err := r.Enqueue(context.Background(), "later", nil, jobs.WithDelay(80*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-started:
		if d := s.Sub(at); d < 80*time.Millisecond {
			t.Fatalf("delayed job started after %v, want at least 80ms", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("delayed job never ran")
	}
}

// A duplicate of a pending unique job is dropped, or merged into it.
func TestUniqueDropAndMerge(t *testing.T) {
	r, tel := newRunner(t, jobs.Config{})
	var mu sync.Mutex
	var ran []string
	done := make(chan struct{}, 10)
	handler := func(_ context.Context, job *jobs.Job) error {
		mu.Lock()
		ran = append(ran, job.Kind+":"+string(job.Payload))
		mu.Unlock()
		done <- struct{}{}
		return nil
	}
	join := func(pending, incoming []byte) []byte { return append(append(pending, ','), incoming...) }
	_ = r.Register("drop", handler, jobs.WithDelay(50*time.Millisecond))
	_ = r.Register("merge", handler, jobs.WithDelay(50*time.Millisecond),
		jobs.WithUniqueBy(func(p []byte) string { return string(p[:1]) }, join))

	first, err := r.Enqueue(context.Background(), "drop", []byte("a"), jobs.WithUnique("k", nil))
	if err != nil {
		t.Fatal(err)
	}
	again, err := r.Enqueue(context.Background(), "drop", []byte("b"), jobs.WithUnique("k", nil))
	if !errors.Is(err, jobs.ErrDuplicate) || again != first {
		t.Fatalf("duplicate enqueue: %q, %v; want %q and ErrDuplicate", again, err, first)
	}
	if _, err := r.Enqueue(context.Background(), "merge", []byte("x1")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Enqueue(context.Background(), "merge", []byte("x2")); !errors.Is(err, jobs.ErrDuplicate) {
		t.Fatalf("merge: %v, want ErrDuplicate", err)
	}
	if _, err := r.Enqueue(context.Background(), "merge", []byte("y1")); err != nil {
		t.Fatalf("a different key is not a duplicate: %v", err)
	}
	for range 3 {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("unique jobs did not run")
		}
	}
	// Once taken by a worker, the key is free again.
	if _, err := r.Enqueue(context.Background(), "drop", []byte("c"), jobs.WithUnique("k", nil)); err != nil {
		t.Fatalf("enqueue after the pending job ran: %v", err)
	}
	<-done
	_, _ = r.Shutdown(context.Background())
	mu.Lock()
	got := strings.Join(ran, " ")
	mu.Unlock()
	for _, want := range []string{"drop:a", "merge:x1,x2", "merge:y1", "drop:c"} {
		if !strings.Contains(got, want) {
			t.Fatalf("ran %q, missing %q", got, want)
		}
	}
	if strings.Contains(got, "drop:b") || len(ran) != 4 {
		t.Fatalf("ran %q: the dropped duplicate ran", got)
	}
	dups := 0
	for _, s := range tel.Named("send jobs") {
		if v, ok := testenv.Attr(s, jobs.DuplicateKey); ok && (v.AsString() == "dropped" || v.AsString() == "merged") {
			dups++
		}
	}
	if dups != 2 {
		t.Fatalf("%d send spans marked duplicate, want 2", dups)
	}
}

// Errors name their input and wrap the sentinel.
func TestErrors(t *testing.T) {
	r, _ := newRunner(t, jobs.Config{})
	if _, err := r.Enqueue(context.Background(), "nope", nil); !errors.Is(err, jobs.ErrUnknownKind) || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("unknown kind: %v", err)
	}
	h := func(context.Context, *jobs.Job) error { return nil }
	if err := r.Register("k", h); err != nil {
		t.Fatal(err)
	}
	if err := r.Register("k", h); err == nil || !strings.Contains(err.Error(), `"k"`) {
		t.Fatalf("duplicate register: %v", err)
	}
	if err := r.Register("", h); err == nil {
		t.Fatal("empty kind registered")
	}
}
