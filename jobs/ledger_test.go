package jobs_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/goleak"

	"github.com/tracebridge/tracebridge/jobs"
)

// ledger records, from inside the handlers and the dead-job handler, what
// happened to each job, keyed by its payload (a key the test chooses, so a
// job whose Enqueue failed, and which therefore has no ID, is known too).
// audit then holds the record against Shutdown's report: every accepted job
// is exactly one of run to completion (succeeded once, or dead once) or
// reported unrun, and no rejected job ever ran.
type ledger struct {
	active atomic.Int64 // handler calls that have not returned

	mu         sync.Mutex
	jobs       map[string]*jobLog
	violations []string
}

type jobLog struct {
	started   []int // attempt numbers, in the order they started
	running   bool
	succeeded int // attempts that returned nil
	dead      int // calls of the dead-job handler
}

func newLedger() *ledger { return &ledger{jobs: make(map[string]*jobLog)} }

func (l *ledger) logLocked(key string) *jobLog {
	j := l.jobs[key]
	if j == nil {
		j = &jobLog{}
		l.jobs[key] = j
	}
	return j
}

func (l *ledger) violate(format string, args ...any) {
	l.violations = append(l.violations, fmt.Sprintf(format, args...))
}

// start records an attempt starting: attempts of one job run one at a
// time and in order (the in-memory queue never redelivers).
func (l *ledger) start(j *jobs.Job) {
	l.active.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	key := string(j.Payload)
	g := l.logLocked(key)
	if g.running {
		l.violate("job %s: attempt %d started while attempt %d still runs", key, j.Attempt, g.started[len(g.started)-1])
	}
	if j.Attempt != len(g.started)+1 {
		l.violate("job %s: attempt %d started after attempts %v", key, j.Attempt, g.started)
	}
	if g.succeeded > 0 || g.dead > 0 {
		l.violate("job %s: attempt %d started after the job finished", key, j.Attempt)
	}
	g.started = append(g.started, j.Attempt)
	g.running = true
}

// end records an attempt returning err; call it last in the handler.
func (l *ledger) end(j *jobs.Job, err error) {
	l.mu.Lock()
	g := l.logLocked(string(j.Payload))
	g.running = false
	if err == nil {
		g.succeeded++
	}
	l.mu.Unlock()
	l.active.Add(-1)
}

// deadJob is the runner's DeadJobHandler.
func (l *ledger) deadJob(_ context.Context, j *jobs.Job, _ error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.logLocked(string(j.Payload)).dead++
}

// quiesce waits until no handler runs and every goroutine that leaks does
// not ignore (the runner's, when leaks was taken before jobs.New) is gone,
// so that an abandoned handler's late start and return have happened
// before audit. No handler running is not enough: a worker that took its
// job but had not yet called the handler when Shutdown reported it calls
// it later, on a loaded machine after any wait for running handlers.
func (l *ledger) quiesce(within time.Duration, leaks goleak.Option) error {
	deadline := time.Now().Add(within)
	for {
		err := goleak.Find(leaks)
		if l.active.Load() == 0 && err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d handlers still running after %v; goroutines: %v", l.active.Load(), within, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// counts summarises a ledger for logs.
type counts struct{ accepted, succeeded, dead, reported, interrupted, abandoned int }

// audit checks the record against Shutdown's report. accepted and rejected
// are the keys whose Enqueue returned nil and an error. It returns every
// violation, the handlers' own ones included.
func (l *ledger) audit(accepted, rejected []string, unrun []jobs.Unrun) ([]string, counts) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := slices.Clone(l.violations)
	bad := func(format string, args ...any) { v = append(v, fmt.Sprintf(format, args...)) }
	c := counts{accepted: len(accepted), reported: len(unrun)}

	reported := make(map[string]jobs.Unrun, len(unrun))
	acc := make(map[string]bool, len(accepted))
	for _, k := range accepted {
		acc[k] = true
	}
	for _, u := range unrun {
		key := string(u.Payload)
		if _, dup := reported[key]; dup {
			bad("job %s reported twice", key)
		}
		if !acc[key] {
			bad("job %s reported but never accepted", key)
		}
		reported[key] = u
		if u.Interrupted {
			c.interrupted++
		}
		if u.Abandoned {
			c.abandoned++
		}
	}
	for _, key := range rejected {
		if g := l.jobs[key]; g != nil && len(g.started) > 0 {
			bad("job %s ran although its Enqueue failed", key)
		}
		if _, ok := reported[key]; ok {
			bad("job %s reported although its Enqueue failed", key)
		}
	}
	for _, key := range accepted {
		g := l.jobs[key]
		if g == nil {
			g = &jobLog{}
		}
		c.succeeded += min(g.succeeded, 1)
		c.dead += min(g.dead, 1)
		if g.running {
			bad("job %s: handler still running at audit", key)
		}
		if g.succeeded > 1 || g.dead > 1 || g.succeeded+g.dead > 1 {
			bad("job %s finished more than once: %d successes, %d dead", key, g.succeeded, g.dead)
		}
		u, isReported := reported[key]
		if !isReported {
			if g.succeeded+g.dead == 0 {
				bad("job %s lost: accepted, never finished (attempts %v) and not reported", key, g.started)
			}
			continue
		}
		switch {
		case g.dead > 0:
			bad("job %s both dead and reported unrun", key)
		case g.succeeded > 0 && !u.Abandoned:
			bad("job %s both ran to completion and reported unrun (interrupted %v)", key, u.Interrupted)
		case u.Abandoned && !u.Interrupted:
			bad("job %s reported abandoned but not interrupted", key)
		}
		// The reported attempt is the last one that started (interrupted) or
		// the next one (never started): a reported job never runs again.
		// An abandoned job may have been reported before its handler began
		// (the worker had taken it, the handler had not started); the
		// runner then never starts it.
		notBegun := u.Abandoned && len(g.started) == u.Attempt-1
		if u.Interrupted && !notBegun && (len(g.started) != u.Attempt || g.started[len(g.started)-1] != u.Attempt) {
			bad("job %s reported interrupted at attempt %d, attempts started %v", key, u.Attempt, g.started)
		}
		if !u.Interrupted && len(g.started) != u.Attempt-1 {
			bad("job %s reported unstarted at attempt %d, attempts started %v", key, u.Attempt, g.started)
		}
	}
	return v, c
}
