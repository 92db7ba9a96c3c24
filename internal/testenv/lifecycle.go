package testenv

import (
	"sync/atomic"
	"testing"
	"time"
)

// Within runs f and fails t when it does not return within bound. It
// returns how long f took; lifecycle tests use it on Close, Stop and Run
// with work in flight, where hanging is the failure to catch.
func Within(t testing.TB, what string, bound time.Duration, f func()) time.Duration {
	t.Helper()
	start := time.Now()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(bound):
		t.Fatalf("%s did not return within %v", what, bound)
	}
	return time.Since(start)
}

// Gate holds handlers mid-message until it is opened, counting how many
// it holds, so a test can close a component with work in flight.
type Gate struct {
	open chan struct{}
	in   atomic.Int32
}

// NewGate returns a closed gate.
func NewGate() *Gate { return &Gate{open: make(chan struct{})} }

// Hold blocks the calling handler until Open.
func (g *Gate) Hold() {
	g.in.Add(1)
	<-g.open
}

// Held reports how many handlers have reached Hold.
func (g *Gate) Held() int32 { return g.in.Load() }

// Open releases every held handler and every later one. Call it once.
func (g *Gate) Open() { close(g.open) }
