package testenv

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Machine-wide test locks are flock(2) locks on files in lockDir, held
// until the test ends. `go test ./...` runs packages in parallel
// processes, and several checkouts (CI next to a developer's run) share
// one machine and its brokers; a lock keeps apart what must not overlap.
var lockDir = os.TempDir()

// lock takes the lock called name (LOCK_SH or LOCK_EX) for t, waiting as
// long as another holder prevents it.
func lock(t testing.TB, name string, how int) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(lockDir, "tracebridge-"+name+".lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("open test lock %q: %v", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		_ = f.Close()
		t.Fatalf("take test lock %q: %v", name, err)
	}
	t.Cleanup(func() { _ = f.Close() }) // closing releases the lock
}

// Exclusive waits until no other test on this machine, in any process,
// holds the lock called name, and holds it until t ends. A test whose
// destinations on a shared broker have fixed names (the journey demo's)
// takes one, so that two runs at once never consume each other's
// messages.
func Exclusive(t testing.TB, name string) {
	t.Helper()
	lock(t, name, syscall.LOCK_EX)
}

// The RabbitMQ fault tests stop the whole node. Every RabbitMQ test holds
// the lock "rabbitmq" shared, and a test that stops the node holds it
// exclusively (and starts the node again before it lets go), so the two
// never overlap. The lock comes first and the reachability check after:
// a node found down while a restart holds the lock is coming back.
const amqpLock = "rabbitmq"

// AMQP returns the RabbitMQ URL for t, skipping (or failing) t when nothing
// listens there. It waits for any test that is restarting the node, and
// holds such tests off until t ends.
func AMQP(t testing.TB) string {
	t.Helper()
	lock(t, amqpLock, syscall.LOCK_SH)
	return reachableAMQP(t)
}

// ExclusiveAMQP returns the RabbitMQ URL for a test that stops or restarts
// the node. It waits until no other test, in any package, uses RabbitMQ,
// and holds them off until t ends.
func ExclusiveAMQP(t testing.TB) string {
	t.Helper()
	lock(t, amqpLock, syscall.LOCK_EX)
	return reachableAMQP(t)
}

func reachableAMQP(t testing.TB) string {
	t.Helper()
	u := AMQPURL()
	if err := dialURL(u, "5672"); err != nil {
		unreachable(t, "RabbitMQ at "+redact(u), err)
	}
	return u
}
