//go:build unix

package carrier_test

import "syscall"

// cpuNanos returns the CPU time the test process has used, GC included. The
// benchmark machine is shared, so wall-clock ns/op also counts time spent
// waiting for a core; cpu-ns/op does not.
func cpuNanos() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
