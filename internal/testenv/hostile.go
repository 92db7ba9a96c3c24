package testenv

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/carrier"
)

// MaxRetainedPerHostileMessage bounds what a message with hostile headers
// may leave behind in a consumer and the producer its handler publishes
// with, in heap bytes per message, once its handling is over.
const MaxRetainedPerHostileMessage = 16 << 10

// HostileHeaders returns the tracing headers of message i, about size
// bytes in all (values and names), built to cost: a valid traceparent of
// its own, a tracestate whose two members a=1 and b=2 stand among a
// quarter of size of whitespace and empty members, and a baggage whose
// small members n=i and keep=1 precede one huge member that is dropped.
// CheckHostileContext checks what Extract must keep of them.
func HostileHeaders(i, size int) map[string]string {
	tp := fmt.Sprintf("00-%032x-%016x-01", i+1, i+1)
	ts := "a=1" + strings.Repeat(" ,", size/8) + "b=2"
	bag := fmt.Sprintf("n=%d,keep=1,big=", i)
	fill := size - len(tp) - len(ts) - len(bag) - len("traceparenttracestatebaggage")
	return map[string]string{"traceparent": tp, "tracestate": ts, "baggage": bag + strings.Repeat("x", max(fill, 0))}
}

// CheckHostileContext reports what ctx, extracted from HostileHeaders(i,
// …), lacks of what it must keep: the traceparent, the tracestate a=1,b=2
// and the baggage members n and keep. It returns "" when nothing is
// missing.
func CheckHostileContext(ctx context.Context, i int) string {
	sc := trace.SpanContextFromContext(ctx)
	if want := fmt.Sprintf("%032x", i+1); sc.TraceID().String() != want {
		return fmt.Sprintf("trace %s, want %s", sc.TraceID(), want)
	}
	if got := sc.TraceState().String(); got != "a=1,b=2" {
		return fmt.Sprintf("tracestate %q, want a=1,b=2", got)
	}
	b := baggage.FromContext(ctx)
	if b.Member("n").Value() != fmt.Sprint(i) || b.Member("keep").Value() != "1" || b.Len() != 2 {
		return fmt.Sprintf("baggage %q, want n=%d and keep=1", b.String(), i)
	}
	return ""
}

// TimeExtract returns how long a fresh Propagator takes to extract c (the
// fastest of three), for reporting what the largest header a broker
// delivers costs.
func TimeExtract(c propagation.TextMapCarrier) time.Duration {
	best := time.Duration(1 << 62)
	for range 3 {
		p := carrier.NewPropagator()
		start := time.Now()
		p.Extract(context.Background(), c)
		best = min(best, time.Since(start))
	}
	return best
}

// HeapAfterGC is the live heap once garbage is collected. Two cycles also
// empty the sync.Pool victim caches.
func HeapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// CheckRetained fails t when the live heap grew since before by more than
// MaxRetainedPerHostileMessage for each of n messages of size bytes, plus
// twice size once: a broker client, or kfake serving in this process, may
// open (or re-open after a read timeout on a loaded machine) a connection
// whose buffers grow to the largest message, as a heap profile of kfake's
// connection writer showed. Retaining a header per message exceeds that by
// far.
func CheckRetained(t testing.TB, before uint64, n, size int) {
	t.Helper()
	after := HeapAfterGC()
	t.Logf("%d messages retained %d bytes each (heap %d -> %d)", n, (int64(after)-int64(before))/int64(n), before, after)
	CheckGrowth(t, int64(after)-int64(before), n, size)
}

// CheckGrowth is CheckRetained for a heap growth measured by the caller.
func CheckGrowth(t testing.TB, growth int64, n, size int) {
	t.Helper()
	if limit := int64(n)*MaxRetainedPerHostileMessage + 2*int64(size); growth > limit {
		t.Fatalf("%d messages with hostile headers retained %d bytes (%d each), bound %d (%d each and %d once)",
			n, growth, growth/int64(n), limit, MaxRetainedPerHostileMessage, 2*size)
	}
}
