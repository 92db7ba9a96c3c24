package jobs

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tracebridge/tracebridge/internal/msgtrace"
	"go.opentelemetry.io/otel/propagation"
)

// Message header names under which a broker-backed queue carries the
// Envelope fields that are not journey headers. They are defined here once,
// so a job pushed by one queue implementation reads back the same way in
// any process, and they share the "job-" prefix so that EncodeEnvelope and
// DecodeEnvelope can tell them from the journey headers.
const (
	HeaderID             = "job-id"
	HeaderKind           = "job-kind"
	HeaderAttempt        = "job-attempt"
	HeaderEnqueuedAt     = "job-enqueued-at" // RFC 3339 with nanoseconds
	HeaderNotBefore      = "job-not-before"  // RFC 3339 with nanoseconds; absent means now
	HeaderMaxAttempts    = "job-max-attempts"
	HeaderTimeout        = "job-timeout" // a time.Duration string
	HeaderBackoffInitial = "job-backoff-initial"
	HeaderBackoffMax     = "job-backoff-max"

	jobHeaderPrefix = "job-"
)

// EncodeEnvelope writes e's journey headers and its job fields into c, a
// broker package's header carrier (nats.HeaderCarrier, amqp.Carrier,
// kafka.NewCarrier), so the message carries the same header schema as any
// other tracebridge message. The payload is the message body; Receipt is
// not sent. Zero-valued optional fields are left out to keep messages small.
func EncodeEnvelope(c propagation.TextMapCarrier, e *Envelope) {
	for k, v := range e.Headers {
		c.Set(k, v)
	}
	c.Set(HeaderID, e.ID)
	c.Set(HeaderKind, e.Kind)
	c.Set(HeaderAttempt, strconv.Itoa(max(e.Attempt, 1)))
	c.Set(HeaderEnqueuedAt, e.EnqueuedAt.UTC().Format(time.RFC3339Nano))
	if !e.NotBefore.IsZero() {
		c.Set(HeaderNotBefore, e.NotBefore.UTC().Format(time.RFC3339Nano))
	}
	if e.MaxAttempts > 0 {
		c.Set(HeaderMaxAttempts, strconv.Itoa(e.MaxAttempts))
	}
	for k, d := range map[string]time.Duration{HeaderTimeout: e.Timeout,
		HeaderBackoffInitial: e.BackoffInitial, HeaderBackoffMax: e.BackoffMax} {
		if d != 0 {
			c.Set(k, d.String())
		}
	}
}

// DecodeEnvelope rebuilds an Envelope from a message's body and headers,
// read through the broker package's carrier. Every header outside the job
// fields goes to Envelope.Headers with its key lowercased (the schema's
// names are lowercase, and NATS may have capitalised them), which is where
// the runner reads the journey. It fails, naming the header, when the job
// ID or kind is missing or a field does not parse: such a message was not
// written by EncodeEnvelope, and the queue should settle it as poison
// rather than run it.
func DecodeEnvelope(c propagation.TextMapCarrier, payload []byte) (*Envelope, error) {
	e := &Envelope{Payload: payload, Headers: make(map[string]string, 6)}
	for _, k := range c.Keys() {
		lk := strings.ToLower(k)
		if !strings.HasPrefix(lk, jobHeaderPrefix) {
			if v := c.Get(k); v != "" {
				e.Headers[lk] = v
			}
		}
	}
	e.ID, e.Kind = c.Get(HeaderID), c.Get(HeaderKind)
	if e.ID == "" || e.Kind == "" {
		return nil, fmt.Errorf("jobs: decode envelope: missing %s or %s header (id %q, kind %q)", HeaderID, HeaderKind, e.ID, e.Kind)
	}
	var err error
	num := func(key string, dst *int) {
		if v := c.Get(key); v != "" && err == nil {
			if *dst, err = strconv.Atoi(v); err != nil {
				err = fmt.Errorf("jobs: decode job %s: header %s=%q: %w", e.ID, key, v, err)
			}
		}
	}
	at := func(key string, dst *time.Time) {
		if v := c.Get(key); v != "" && err == nil {
			if *dst, err = time.Parse(time.RFC3339Nano, v); err != nil {
				err = fmt.Errorf("jobs: decode job %s: header %s=%q: %w", e.ID, key, v, err)
			}
		}
	}
	dur := func(key string, dst *time.Duration) {
		if v := c.Get(key); v != "" && err == nil {
			if *dst, err = time.ParseDuration(v); err != nil {
				err = fmt.Errorf("jobs: decode job %s: header %s=%q: %w", e.ID, key, v, err)
			}
		}
	}
	num(HeaderAttempt, &e.Attempt)
	num(HeaderMaxAttempts, &e.MaxAttempts)
	at(HeaderEnqueuedAt, &e.EnqueuedAt)
	at(HeaderNotBefore, &e.NotBefore)
	dur(HeaderTimeout, &e.Timeout)
	dur(HeaderBackoffInitial, &e.BackoffInitial)
	dur(HeaderBackoffMax, &e.BackoffMax)
	if err != nil {
		return nil, err
	}
	e.Attempt = max(e.Attempt, 1)
	return e, nil
}

// WaitUntil waits until t (the NotBefore of a job) or until ctx ends, for
// a broker-backed queue that cannot ask its broker to hold a message back
// and so waits out a delay or backoff itself before handing the job over.
func WaitUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return nil // due already: not even an ended ctx stops it
	}
	if !msgtrace.Sleep(ctx, d) {
		return ctx.Err()
	}
	return nil
}

// EnqueueOnly wraps a broker-backed queue for a runner that only enqueues
// (a web server handing work to worker processes): its Pop waits for ctx
// and never takes a job, so the runner's workers stay idle and every job
// goes to the processes that run the kinds. Everything else is q's.
func EnqueueOnly(q Queue) Queue { return enqueueOnly{q} }

type enqueueOnly struct{ Queue }

func (enqueueOnly) Pop(ctx context.Context) (*Envelope, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// Remote forwards the wrapped queue's answer.
func (q enqueueOnly) Remote() bool { return isRemote(q.Queue) }
