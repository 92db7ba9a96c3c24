package jobs

import (
	"container/heap"
	"context"
	"fmt"
	"sync"
	"time"
)

// MemoryQueue is the default Queue: a bounded FIFO in this process, with
// delayed jobs (WithDelay, backoff) held aside until they are due. Its jobs
// are lost with the process; Shutdown returns the ones that did not run.
type MemoryQueue struct {
	name string
	size int

	mu      sync.Mutex
	ready   []*Envelope // FIFO; head is ready[0]
	delayed delayHeap
	closed  bool
	changed chan struct{} // closed and replaced on a change while anyone waits
	waiting int           // callers parked on changed
}

// NewMemoryQueue returns an in-memory queue holding up to size jobs (new
// ones; retries are always accepted). name is the destination on spans.
func NewMemoryQueue(name string, size int) *MemoryQueue {
	if size < 1 {
		size = 1
	}
	return &MemoryQueue{name: name, size: size, changed: make(chan struct{})}
}

// System reports "tracebridge.jobs": no broker is involved, and a value of
// its own keeps in-process jobs apart from broker traffic on dashboards.
func (q *MemoryQueue) System() string { return "tracebridge.jobs" }

// Name is the destination given to NewMemoryQueue.
func (q *MemoryQueue) Name() string { return q.name }

// broadcast wakes every waiter; the caller holds q.mu. Without waiters it
// costs nothing, which is the common case under load.
func (q *MemoryQueue) broadcast() {
	if q.waiting == 0 {
		return
	}
	close(q.changed)
	q.changed = make(chan struct{})
}

// wait parks until the next broadcast, ctx's end, or due; it is called
// with q.mu held and returns with it held.
func (q *MemoryQueue) wait(ctx context.Context, due <-chan time.Time) error {
	ch := q.changed
	q.waiting++
	q.mu.Unlock()
	var err error
	select {
	case <-ch:
	case <-due:
	case <-ctx.Done():
		err = ctx.Err()
	}
	q.mu.Lock()
	q.waiting--
	return err
}

func (q *MemoryQueue) lenLocked() int { return len(q.ready) + len(q.delayed) }

// Push adds e, waiting for room when block is true.
func (q *MemoryQueue) Push(ctx context.Context, e *Envelope, block bool) error {
	q.mu.Lock()
	for {
		if q.closed {
			q.mu.Unlock()
			return fmt.Errorf("jobs: push job %s: %w", e.ID, ErrClosed)
		}
		if q.lenLocked() < q.size {
			break
		}
		if !block {
			q.mu.Unlock()
			return fmt.Errorf("jobs: push job %s to %q (%d jobs): %w", e.ID, q.name, q.size, ErrQueueFull)
		}
		if err := q.wait(ctx, nil); err != nil {
			q.mu.Unlock()
			return fmt.Errorf("jobs: push job %s: waiting for room in %q: %w", e.ID, q.name, err)
		}
	}
	q.addLocked(e)
	q.mu.Unlock()
	return nil
}

func (q *MemoryQueue) addLocked(e *Envelope) {
	if !e.NotBefore.IsZero() && time.Now().Before(e.NotBefore) {
		heap.Push(&q.delayed, e)
	} else {
		q.ready = append(q.ready, e)
	}
	q.broadcast()
}

// Pop takes the oldest due job, waiting for one until ctx ends. Once ctx
// has ended it takes none, so a stopped worker leaves the rest to Drain.
func (q *MemoryQueue) Pop(ctx context.Context) (*Envelope, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		q.mu.Lock()
		now := time.Now()
		for len(q.delayed) > 0 && !now.Before(q.delayed[0].NotBefore) {
			q.ready = append(q.ready, heap.Pop(&q.delayed).(*Envelope))
		}
		if len(q.ready) > 0 {
			e := q.ready[0]
			q.ready[0] = nil
			q.ready = q.ready[1:]
			if len(q.ready) == 0 {
				q.ready = q.ready[:0:0] // let the backing array go once drained
			}
			q.broadcast() // room for a blocked Push
			q.mu.Unlock()
			return e, nil
		}
		var due <-chan time.Time
		if len(q.delayed) > 0 {
			d := q.delayed[0].NotBefore.Sub(now)
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			due = timer.C
		}
		err := q.wait(ctx, due)
		q.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// Ack does nothing: a popped job is no longer held.
func (q *MemoryQueue) Ack(context.Context, *Envelope) error { return nil }

// Retry schedules next regardless of the bound.
func (q *MemoryQueue) Retry(_ context.Context, _, next *Envelope) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return fmt.Errorf("jobs: retry job %s: %w", next.ID, ErrClosed)
	}
	q.addLocked(next)
	return nil
}

// Release does nothing: the runner reports interrupted jobs itself, and
// putting one back would run it again during the shutdown that stopped it.
func (q *MemoryQueue) Release(context.Context, *Envelope) error { return nil }

// Drain removes and returns every job held, due or delayed.
func (q *MemoryQueue) Drain(context.Context) ([]*Envelope, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]*Envelope, 0, q.lenLocked())
	out = append(out, q.ready...)
	out = append(out, q.delayed...)
	q.ready, q.delayed = nil, nil
	q.broadcast()
	return out, nil
}

// Len is the number of jobs held, due or delayed.
func (q *MemoryQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.lenLocked()
}

// Close makes Push and Retry fail and wakes blocked callers.
func (q *MemoryQueue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		q.broadcast()
	}
	return nil
}

// delayHeap orders delayed jobs by NotBefore.
type delayHeap []*Envelope

func (h delayHeap) Len() int           { return len(h) }
func (h delayHeap) Less(i, j int) bool { return h[i].NotBefore.Before(h[j].NotBefore) }
func (h delayHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)        { *h = append(*h, x.(*Envelope)) }
func (h *delayHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}
