package msgtrace

import (
	"context"
	"time"
)

// Redial calls dial until it succeeds or ctx ends, sleeping a jittered
// backoff (drawn from b, at least min) between failures. onFail, when not
// nil, sees every failure with its number so the front end can log it. It
// returns ctx's error when ctx ends first. Every broker front end that
// reconnects shares it, so their pacing after an outage is the same and
// many consumers that lost the broker together do not return in lockstep.
func Redial(ctx context.Context, b Backoff, min time.Duration, dial func(context.Context) error, onFail func(n int, err error)) error {
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := dial(ctx)
		if err == nil {
			return nil
		}
		if onFail != nil {
			onFail(n, err)
		}
		if !Sleep(ctx, max(b.Delay(n), min)) {
			return ctx.Err()
		}
	}
}
