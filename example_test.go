package tracebridge_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/tracebridge/tracebridge"
)

// Options are shared by every producer, consumer and job runner, so a
// setting means the same thing everywhere. A handler marks input that can
// never succeed as permanent, and it skips the remaining retries.
func Example() {
	opts := []tracebridge.Option{
		tracebridge.WithRetry(5, 200*time.Millisecond, 30*time.Second),
		tracebridge.WithDeadLetter("orders.dlq"),
		tracebridge.WithParentPolicy(tracebridge.ParentWhileYoung, time.Hour),
	}
	fmt.Println(len(opts), "options")

	err := fmt.Errorf("decode order: %w", tracebridge.Permanent(errors.New("unexpected EOF")))
	fmt.Println(tracebridge.IsPermanent(err))
	// Output:
	// 3 options
	// true
}
