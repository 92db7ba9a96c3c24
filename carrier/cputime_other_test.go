//go:build !unix

package carrier_test

// cpuNanos is unavailable here; the cpu-ns/op metric then reads 0.
func cpuNanos() int64 { return 0 }
