package msgtrace

import (
	"container/list"
	"sync"

	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
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
	n    int    // attempts vouched for, in a record of vouchers
	dest string // where the retry is to arrive, in a record of vouchers
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
	if id == "" || !sc.IsValid() {
		return
	}
	a.put(id, attemptEntry{sc: sc})
}

// put records e under id; every entry goes through it, so none keeps a
// tracestate or an identity past the byte bound.
func (a *Attempts) put(id string, e attemptEntry) {
	if len(id) > maxAttemptID {
		return
	}
	e.sc = e.sc.WithTraceState(trace.TraceState{})
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.m[id]; ok {
		a.order.MoveToBack(old.elem)
		e.elem = old.elem
		a.m[id] = e
		return
	}
	e.elem = a.order.PushBack(id)
	a.m[id] = e
	for len(a.m) > a.max {
		oldest := a.order.Front()
		a.order.Remove(oldest)
		delete(a.m, oldest.Value.(string))
	}
}

// Vouch records that the failed attempt sc, handed on for a retry that is
// to arrive at dest, was attempt n as far as this consumer can vouch (see
// Tracer.StartProcess). Only this consumer writes the record, so a retry
// whose retry-previous names sc continues from n whatever its headers say.
func (a *Attempts) Vouch(sc trace.SpanContext, n int, dest string) {
	if !sc.IsValid() || n < 1 {
		return
	}
	a.put(voucherKey(sc), attemptEntry{sc: sc, n: n, dest: dest})
}

// Vouched returns what Vouch recorded for the failed attempt prev, if the
// retry arrived where it was sent.
func (a *Attempts) Vouched(prev trace.SpanContext, dest string) (int, bool) {
	if !prev.IsValid() {
		return 0, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.m[voucherKey(prev)]
	if !ok || e.dest != dest {
		return 0, false
	}
	return e.n, true
}

// voucherKey names a span by its trace and span IDs.
func voucherKey(sc trace.SpanContext) string {
	tid, sid := sc.TraceID(), sc.SpanID()
	return string(tid[:]) + string(sid[:])
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

// ForgetVoucher drops what Vouch recorded for sc.
func (a *Attempts) ForgetVoucher(sc trace.SpanContext) {
	if sc.IsValid() {
		a.Forget(voucherKey(sc))
	}
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

// number is what StartProcess works out about an attempt's number.
type number struct {
	shown   int // tracebridge.attempt
	vouched int // attempts the consumer can vouch for, this one included
	claim   int // what the headers claim, within [1, MaxAttempts]
	voucher trace.SpanContext
}

// number works out an attempt's number by the rule the README's "Retries
// and trust" section states. The consumer vouches for: the attempts of an
// in-place retry (d.Attempt), the broker's own delivery count
// (d.Deliveries), and, for a retry this consumer republished itself, the
// attempts it recorded for the failed attempt that retry-previous names.
// Only those make a failure final. Headers anyone can write (retry-attempt,
// and the broker headers in d.Claimed) form a claim, which under Trusted
// raises the number shown. Where the library decides the retries
// (d.decides), the claim shows at most MaxAttempts-1, so a header alone
// never makes an attempt look like the last one; a low-level StartProcess,
// whose caller decides, shows it whole. A retry-attempt above MaxAttempts
// is one the library never writes, and is not believed.
func (t *Tracer) number(d *Delivery, r carrier.Retry) number {
	limit := t.MaxAttempts
	var n number
	if d.Attempt > 0 {
		n.vouched = d.Attempt
	} else {
		n.vouched = max(d.Deliveries, 1)
		if v, ok := t.vouchers.Vouched(r.Previous, d.Destination); ok {
			n.vouched += v
			n.voucher = r.Previous
		}
	}
	// Each term is bounded (retry-attempt below 1<<30, front ends' claims
	// below 1<<20), so the sum cannot overflow.
	claimed := max(d.Deliveries, 1) + min(max(d.Claimed, 0), 1<<20)
	if r.Attempt > 0 && r.Attempt <= limit {
		claimed += r.Attempt - 1
	}
	n.claim = min(claimed, limit)
	if r.Attempt > limit {
		n.claim = limit // routes the retry (RetryInPlace); sets no number
	}
	n.shown = n.vouched
	if t.Trust == carrier.Trusted {
		if d.decides {
			claimed = min(claimed, limit-1)
		}
		n.shown = max(n.vouched, claimed)
	}
	return n
}
