package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATSServer is an embedded nats-server with JetStream. It keeps its port
// and store directory across Restart, so clients reconnect to the same URL
// and find the streams and consumers they had.
type NATSServer struct {
	// URL is the client URL, stable across restarts.
	URL string

	mu      sync.Mutex
	opts    server.Options
	srv     *server.Server
	ownsDir bool // the store is a temporary directory of our own
}

// NATSConfig configures StartNATSServer.
type NATSConfig struct {
	// StoreDir is JetStream's file store; "" means a new temporary
	// directory (removed by Shutdown).
	StoreDir string
	// NoHeaderSupport makes the server refuse message headers, like a
	// pre-2.2 server, so clients see HeadersSupported() == false.
	NoHeaderSupport bool
	// NoJetStream turns JetStream off.
	NoJetStream bool
}

// StartNATSServer starts an embedded server on a free loopback port. It
// needs no testing.TB, so examples and the journey demo can use it.
func StartNATSServer(cfg NATSConfig) (*NATSServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("testenv: free port for NATS: %w", err)
	}
	dir, owns := cfg.StoreDir, false
	if dir == "" && !cfg.NoJetStream {
		owns = true
		if dir, err = os.MkdirTemp("", "tracebridge-nats-"); err != nil {
			return nil, fmt.Errorf("testenv: NATS store dir: %w", err)
		}
	}
	s := &NATSServer{
		URL:     fmt.Sprintf("nats://127.0.0.1:%d", port),
		ownsDir: owns,
		opts: server.Options{
			Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true,
			JetStream: !cfg.NoJetStream, StoreDir: dir, NoHeaderSupport: cfg.NoHeaderSupport,
		},
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// StartNATS starts an embedded JetStream server with its file store in
// storeDir ("" for a temporary one) and returns its URL and a stop func.
func StartNATS(storeDir string) (url string, stop func(), err error) {
	s, err := StartNATSServer(NATSConfig{StoreDir: storeDir})
	if err != nil {
		return "", nil, err
	}
	return s.URL, s.Shutdown, nil
}

func (s *NATSServer) start() error {
	o := s.opts // the server keeps and mutates its copy
	srv, err := server.NewServer(&o)
	if err != nil {
		return fmt.Errorf("testenv: NATS server on port %d: %w", s.opts.Port, err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("testenv: NATS server on port %d not ready after 10s", s.opts.Port)
	}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	return nil
}

// Stop shuts the server down and waits for it, keeping the store.
func (s *NATSServer) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart stops the server and starts it again on the same port and store.
// The port can stay busy for a moment after shutdown, so it retries.
func (s *NATSServer) Restart() error {
	s.Stop()
	var err error
	for range 50 {
		if err = s.start(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Shutdown stops the server and removes a store directory it created.
func (s *NATSServer) Shutdown() {
	s.Stop()
	if s.ownsDir {
		_ = os.RemoveAll(s.opts.StoreDir)
	}
}

// EmbeddedNATS starts an embedded server for t and shuts it down after t.
func EmbeddedNATS(t testing.TB, cfg NATSConfig) *NATSServer {
	t.Helper()
	if cfg.StoreDir == "" && !cfg.NoJetStream {
		cfg.StoreDir = t.TempDir()
	}
	s, err := StartNATSServer(cfg)
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("not a TCP address")
	}
	return addr.Port, nil
}
