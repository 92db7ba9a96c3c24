package msgtrace

import (
	"math/rand/v2"
	"time"
)

// Backoff is exponential backoff with full jitter: the delay before attempt
// n+1 is uniform in [0, min(Max, Initial*2^(n-1))]. Full jitter spreads the
// retries of many consumers that failed together, so they do not hammer a
// recovering dependency in lockstep.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

// Ceiling is the upper bound of the delay after failed attempt n (from 1).
func (b Backoff) Ceiling(n int) time.Duration {
	if b.Initial <= 0 {
		return 0
	}
	d := b.Initial
	for i := 1; i < n; i++ {
		if b.Max > 0 && d >= b.Max/2 {
			d = b.Max
			break
		}
		d *= 2
	}
	if b.Max > 0 && d > b.Max {
		d = b.Max
	}
	return d
}

// Delay draws the delay after failed attempt n (from 1).
func (b Backoff) Delay(n int) time.Duration {
	c := b.Ceiling(n)
	if c <= 0 {
		return 0
	}
	return rand.N(c + 1)
}
