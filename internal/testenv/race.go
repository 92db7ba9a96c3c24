//go:build race

package testenv

// RaceEnabled reports whether the race detector is on: it allocates on
// its own, so allocation bounds differ under it.
const RaceEnabled = true
