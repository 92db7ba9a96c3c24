package testenv

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The RabbitMQ fault test stops the whole node, and `go test ./...` runs
// packages in parallel processes. A file lock shared by every RabbitMQ test
// and taken exclusively by the test that restarts the node keeps the two
// apart across processes.
var amqpLockPath = filepath.Join(os.TempDir(), "tracebridge-rabbitmq.lock")

func lockAMQP(t testing.TB, how int) {
	t.Helper()
	f, err := os.OpenFile(amqpLockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("open RabbitMQ test lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		_ = f.Close()
		t.Fatalf("lock RabbitMQ test lock: %v", err)
	}
	t.Cleanup(func() { _ = f.Close() }) // closing releases the lock
}

// ExclusiveAMQP returns the RabbitMQ URL for a test that stops or restarts
// the node. It waits until no other test, in any package, uses RabbitMQ,
// and holds them off until t ends.
func ExclusiveAMQP(t testing.TB) string {
	t.Helper()
	u := reachableAMQP(t)
	lockAMQP(t, syscall.LOCK_EX)
	return u
}
