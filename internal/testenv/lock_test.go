package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// recorder is a testing.TB for a helper under test: it records how the
// helper failed or skipped, and runs its cleanups on demand.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	failure  string
	cleanups []func()
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failure = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Skip(args ...any) {
	r.mu.Lock()
	r.failure = "skipped: " + fmt.Sprint(args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *recorder) cleanup() {
	r.mu.Lock()
	fs := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// downNode is a TCP port that refuses connections (bound, not listening)
// until up is called: a RabbitMQ node a fault test has stopped.
func downNode(t *testing.T) (url string, up func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	url = fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", sa.(*syscall.SockaddrInet4).Port)
	return url, func() {
		if err := syscall.Listen(fd, 16); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAMQPWaitsOutARestart: while a fault test in another process holds
// the RabbitMQ lock exclusively, with the node stopped, a test asking for
// RabbitMQ waits for the lock and gets the node once it is back, instead
// of failing on the stopped node. So does another fault test.
func TestAMQPWaitsOutARestart(t *testing.T) {
	for _, c := range []struct {
		name string
		get  func(testing.TB) string
	}{{"AMQP", AMQP}, {"ExclusiveAMQP", ExclusiveAMQP}} {
		t.Run(c.name, func(t *testing.T) {
			old := lockDir
			lockDir = t.TempDir()
			t.Cleanup(func() { lockDir = old })
			url, up := downNode(t)
			t.Setenv("AMQP_URL", url)
			t.Setenv("TRACEBRIDGE_REQUIRE_BROKERS", "1")

			// The fault test: the lock held exclusively on a file
			// description of its own, as another process holds it.
			f, err := os.OpenFile(filepath.Join(lockDir, "tracebridge-rabbitmq.lock"), os.O_CREATE|os.O_RDWR, 0o666)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
				t.Fatal(err)
			}

			rec := &recorder{TB: t}
			defer rec.cleanup()
			got := make(chan string, 1)
			go func() {
				defer close(got)
				got <- c.get(rec)
			}()
			select {
			case u, ok := <-got:
				t.Fatalf("%s returned (%q, %v; failure %q) while a restart held the lock", c.name, u, ok, rec.failure)
			case <-time.After(200 * time.Millisecond):
			}
			up()
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_UN); err != nil {
				t.Fatal(err)
			}
			select {
			case u, ok := <-got:
				if !ok || u != url {
					t.Fatalf("%s after the restart: %q, failure %q; want %q", c.name, u, rec.failure, url)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("%s did not return within 30s of the lock's release", c.name)
			}
		})
	}
}
