package nats_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// connect opens a connection to url that is closed after t.
func connect(t testing.TB, url string, opts ...natsgo.Option) *natsgo.Conn {
	t.Helper()
	nc, err := natsgo.Connect(url, append([]natsgo.Option{natsgo.Name(t.Name())}, opts...)...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// unique returns a subject-safe name no other test (or run) uses.
func unique(t testing.TB, prefix string) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, t.Name())
	return fmt.Sprintf("%s_%s_%08x", prefix, name, rand.Uint32())
}

// stream creates a memory stream that is deleted after t.
func stream(t testing.TB, js jetstream.JetStream, cfg jetstream.StreamConfig) jetstream.Stream {
	t.Helper()
	cfg.Storage = jetstream.MemoryStorage
	return fileStream(t, js, cfg)
}

// fileStream creates a stream with cfg's storage (file by default), deleted
// after t.
func fileStream(t testing.TB, js jetstream.JetStream, cfg jetstream.StreamConfig) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.CreateStream(ctx, cfg)
	if err != nil {
		t.Fatalf("create stream %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), cfg.Name) })
	return s
}

func consumer(t testing.TB, s jetstream.Stream, cfg jetstream.ConsumerConfig) jetstream.Consumer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if cfg.AckPolicy == 0 {
		cfg.AckPolicy = jetstream.AckExplicitPolicy
	}
	c, err := s.CreateOrUpdateConsumer(ctx, cfg)
	if err != nil {
		t.Fatalf("create consumer %s: %v", cfg.Durable, err)
	}
	return c
}

func bySpanID(spans []sdktrace.ReadOnlySpan) map[trace.SpanID]sdktrace.ReadOnlySpan {
	m := make(map[trace.SpanID]sdktrace.ReadOnlySpan, len(spans))
	for _, s := range spans {
		m[s.SpanContext().SpanID()] = s
	}
	return m
}

func hasLink(s sdktrace.ReadOnlySpan, to trace.SpanID, kind string) bool {
	for _, l := range s.Links() {
		if l.SpanContext.SpanID() != to {
			continue
		}
		for _, a := range l.Attributes {
			if a.Key == "tracebridge.link.type" && a.Value.AsString() == kind {
				return true
			}
		}
	}
	return false
}

// seen collects what handlers observed, keyed by message number.
type seen struct {
	mu       sync.Mutex
	sessions map[int]string
	bags     map[int]string
	spans    map[int]trace.SpanContext
	dups     int
	inFlight int
	maxIn    int
}

func newSeen() *seen {
	return &seen{sessions: map[int]string{}, bags: map[int]string{}, spans: map[int]trace.SpanContext{}}
}

func (s *seen) enter() {
	s.mu.Lock()
	s.inFlight++
	s.maxIn = max(s.maxIn, s.inFlight)
	s.mu.Unlock()
}

func (s *seen) leave() {
	s.mu.Lock()
	s.inFlight--
	s.mu.Unlock()
}

func (s *seen) record(i int, sess, bag string, sc trace.SpanContext) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.spans[i]; ok {
		s.dups++
	}
	s.sessions[i], s.bags[i], s.spans[i] = sess, bag, sc
}

func (s *seen) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.spans)
}

func attributeKey(k string) attribute.Key { return attribute.Key(k) }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
