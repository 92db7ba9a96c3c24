package msgtrace

import (
	"container/list"
	"sync"

	"go.opentelemetry.io/otel/trace"
)

// Attempts remembers the process span of each message's last failed
// attempt, so a broker redelivery within this process links to it. It is
// bounded in entries, the oldest going first because a message that is not
// redelivered soon is unlikely to be redelivered to this process at all,
// and in bytes per entry: an identity is at most maxAttemptID bytes and
// the span context is kept without its tracestate, so an entry holds at
// most about 1.5 KiB whatever the message carried.
type Attempts struct {
	mu    sync.Mutex
	max   int
	order *list.List // of string, oldest at the front
	m     map[string]attemptEntry
}

type attemptEntry struct {
	sc   trace.SpanContext
	elem *list.Element
}

// maxAttemptID is the longest identity remembered. Identities are broker
// positions or a destination with a publisher's message ID (AMQP caps
// both at 255 bytes); a longer one is not remembered, and a redelivery of
// that message then simply has no link to its previous attempt.
const maxAttemptID = 1024

// NewAttempts returns a record holding at most max messages.
func NewAttempts(max int) *Attempts {
	return &Attempts{max: max, order: list.New(), m: make(map[string]attemptEntry)}
}

// Put records sc as the latest failed attempt of message id. Only what a
// link needs is kept: the tracestate (up to 32 members of 512 bytes each)
// would pin up to 16 KiB per entry for nothing the link uses.
func (a *Attempts) Put(id string, sc trace.SpanContext) {
	if id == "" || len(id) > maxAttemptID || !sc.IsValid() {
		return
	}
	sc = sc.WithTraceState(trace.TraceState{})
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.m[id]; ok {
		a.order.MoveToBack(e.elem)
		a.m[id] = attemptEntry{sc: sc, elem: e.elem}
		return
	}
	a.m[id] = attemptEntry{sc: sc, elem: a.order.PushBack(id)}
	for len(a.m) > a.max {
		oldest := a.order.Front()
		a.order.Remove(oldest)
		delete(a.m, oldest.Value.(string))
	}
}

// Get returns the latest failed attempt of message id.
func (a *Attempts) Get(id string) (trace.SpanContext, bool) {
	if id == "" {
		return trace.SpanContext{}, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.m[id]
	return e.sc, ok
}

// Forget drops message id once it has succeeded or been given up.
func (a *Attempts) Forget(id string) {
	if id == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.m[id]; ok {
		a.order.Remove(e.elem)
		delete(a.m, id)
	}
}

// Len returns how many messages are remembered.
func (a *Attempts) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.m)
}
