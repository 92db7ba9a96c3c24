package jobs

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Go runs fn in a new goroutine that keeps ctx's journey (trace, baggage,
// session) but not its cancellation, deadline or other values, for work
// that must outlive a request without a queue or retries (a cache warm-up,
// a notification). Its span, named name, is a child of the starter's span,
// so the journey stays one trace, and also links to it (link type
// "starter"), so a backend that draws links shows where it forked off. A
// panic is recovered and recorded with its stack, and an error is recorded
// and logged. fn's ctx is cancelled when Shutdown's deadline passes, and
// Shutdown waits for fn. Go returns ErrClosed once Shutdown has begun.
func (r *Runner) Go(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return fmt.Errorf("jobs: go %q: %w", name, ErrClosed)
	}
	r.outstanding++
	r.tasks.Add(1)
	r.mu.Unlock()

	// The same round trip through headers as a job: the goroutine gets the
	// journey and nothing else of a context that may soon be cancelled.
	hdr := make(propagation.MapCarrier, 4)
	r.t.Inject(ctx, hdr)
	starter := trace.SpanContextFromContext(ctx)
	go func() {
		defer r.tasks.Done()
		defer r.finish()
		gctx := r.t.Extract(r.hard, hdr)
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal),
			trace.WithAttributes(TaskKey.String(name))}
		if starter.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: starter,
				Attributes: []attribute.KeyValue{msgtrace.LinkTypeKey.String(msgtrace.LinkStarter)}}))
		}
		if s := carrier.SessionFromContext(gctx); s != "" {
			opts = append(opts, trace.WithAttributes(msgtrace.SessionIDKey.String(s)))
		}
		gctx, span := r.tracer.Start(gctx, name, opts...)
		defer span.End()
		if err := msgtrace.Call(func() error { return fn(gctx) }); err != nil {
			msgtrace.RecordError(span, err, true)
			r.t.Logger.ErrorContext(gctx, "jobs: go task failed", "task", name, "error", err)
		}
	}()
	return nil
}
