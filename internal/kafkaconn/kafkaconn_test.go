package kafkaconn_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/plain"

	"github.com/tracebridge/tracebridge/internal/kafkaconn"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

type resolverFunc func(ctx context.Context, host string) ([]string, error)

func (f resolverFunc) LookupHost(ctx context.Context, host string) ([]string, error) {
	return f(ctx, host)
}

func write(t *testing.T, tr *kafkago.Transport, addr string) error {
	t.Helper()
	w := &kafkago.Writer{Addr: kafkago.TCP(addr), Topic: fmt.Sprintf("kafkaconn-%d", time.Now().UnixNano()),
		Transport: tr, AllowAutoTopicCreation: true, MaxAttempts: 1, BatchTimeout: time.Millisecond}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return w.WriteMessages(ctx, kafkago.Message{Value: []byte("v")})
}

// TestTransportDialsAsTheDialer writes through a Transport built from a
// Dialer whose Resolver is the only way to the broker (its name does not
// exist) and whose DialFunc counts its dials: the writer must go through
// both, and carry the Dialer's client ID, TLS and SASL settings.
func TestTransportDialsAsTheDialer(t *testing.T) {
	addrs := testenv.Kafka(t)
	host, port, err := net.SplitHostPort(addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	var dials, lookups atomic.Int32
	d := &kafkago.Dialer{
		ClientID: "tb-client", Timeout: 7 * time.Second,
		TLS:           &tls.Config{ServerName: "x"},
		SASLMechanism: plain.Mechanism{Username: "u", Password: "p"},
		Resolver: resolverFunc(func(_ context.Context, h string) ([]string, error) {
			lookups.Add(1)
			if h == "tb-broker.invalid" {
				return []string{host}, nil
			}
			return nil, nil
		}),
		DialFunc: func(ctx context.Context, network, address string) (net.Conn, error) {
			dials.Add(1)
			var nd net.Dialer
			return nd.DialContext(ctx, network, address)
		},
	}
	tr := kafkaconn.Transport(d)
	if tr.ClientID != d.ClientID || tr.TLS != d.TLS || tr.SASL != d.SASLMechanism || tr.DialTimeout != d.Timeout {
		t.Errorf("Transport{ClientID %q, TLS %p, SASL %v, DialTimeout %v} does not carry the Dialer's", tr.ClientID, tr.TLS, tr.SASL, tr.DialTimeout)
	}
	// A plain broker: the writer needs neither TLS nor SASL here, only the
	// resolver and the dial function.
	tr.TLS, tr.SASL = nil, nil
	defer tr.CloseIdleConnections()
	if err := write(t, tr, net.JoinHostPort("tb-broker.invalid", port)); err != nil {
		t.Fatalf("write through the resolver: %v", err)
	}
	if dials.Load() == 0 || lookups.Load() == 0 {
		t.Errorf("the Dialer's DialFunc ran %d times, its Resolver %d: the Transport bypassed them", dials.Load(), lookups.Load())
	}
}

// TestTransportKeepsTheDialersDeadline: a Dialer past its Deadline cannot
// connect, and neither can a Transport built from it.
func TestTransportKeepsTheDialersDeadline(t *testing.T) {
	addrs := testenv.Kafka(t)
	tr := kafkaconn.Transport(&kafkago.Dialer{Deadline: time.Now().Add(-time.Second)})
	defer tr.CloseIdleConnections()
	if err := write(t, tr, addrs[0]); err == nil {
		t.Fatal("wrote through a Transport whose Dialer's deadline has passed")
	}
	tr = kafkaconn.Transport(nil)
	defer tr.CloseIdleConnections()
	if err := write(t, tr, addrs[0]); err != nil {
		t.Fatalf("nil Dialer (kafka-go's default): %v", err)
	}
}
