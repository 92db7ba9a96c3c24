// Package testenv finds the brokers that tests, examples and the integration
// suite talk to. Addresses come from KAFKA_BROKERS, AMQP_URL and NATS_URL;
// without KAFKA_BROKERS an in-process kfake broker (the real Kafka wire
// protocol over TCP) is started, and RabbitMQ and NATS default to the local
// servers. With TRACEBRIDGE_REQUIRE_BROKERS=1 an unreachable broker fails
// the test instead of skipping it, so CI cannot pass by skipping.
//
// This package imports the test brokers; library packages never import it.
package testenv

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Defaults used when the environment names no broker.
const (
	DefaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultNATSURL = "nats://127.0.0.1:4222"
)

// RequireBrokers reports whether TRACEBRIDGE_REQUIRE_BROKERS=1.
func RequireBrokers() bool { return os.Getenv("TRACEBRIDGE_REQUIRE_BROKERS") == "1" }

// FaultTests reports whether TRACEBRIDGE_FAULT_TESTS=1, which enables tests
// that restart brokers.
func FaultTests() bool { return os.Getenv("TRACEBRIDGE_FAULT_TESTS") == "1" }

// SkipUnlessFaultTests skips t unless fault tests are enabled.
func SkipUnlessFaultTests(t testing.TB) {
	t.Helper()
	if !FaultTests() {
		t.Skip("fault test: set TRACEBRIDGE_FAULT_TESTS=1 to restart brokers")
	}
}

// unreachable skips t, or fails it when brokers are required.
func unreachable(t testing.TB, what string, err error) {
	t.Helper()
	msg := fmt.Sprintf("%s unreachable: %v", what, err)
	if RequireBrokers() {
		t.Fatalf("%s (TRACEBRIDGE_REQUIRE_BROKERS=1)", msg)
	}
	t.Skip(msg)
}

// Kafka returns broker addresses for t: KAFKA_BROKERS when set, otherwise a
// fresh kfake cluster that auto-creates topics and is closed after t.
func Kafka(t testing.TB, opts ...kfake.Opt) []string {
	t.Helper()
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		addrs := strings.Split(env, ",")
		if err := dial(addrs[0]); err != nil {
			unreachable(t, "Kafka at "+env, err)
		}
		return addrs
	}
	addrs, stop, err := StartKafka(opts...)
	if err != nil {
		t.Fatalf("start embedded Kafka: %v", err)
	}
	t.Cleanup(stop)
	return addrs
}

// StartKafka starts an embedded kfake cluster with auto-created topics of
// three partitions, for examples and benchmarks that have no testing.TB.
func StartKafka(opts ...kfake.Opt) (addrs []string, stop func(), err error) {
	base := []kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3)}
	c, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: kfake cluster: %w", err)
	}
	return c.ListenAddrs(), c.Close, nil
}

// KafkaFromEnv returns KAFKA_BROKERS, or starts an embedded cluster.
func KafkaFromEnv() (addrs []string, stop func(), err error) {
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		return strings.Split(env, ","), func() {}, nil
	}
	return StartKafka()
}

// AMQPURL returns AMQP_URL or the local default.
func AMQPURL() string { return envOr("AMQP_URL", DefaultAMQPURL) }

// NATSURL returns NATS_URL or the local default.
func NATSURL() string { return envOr("NATS_URL", DefaultNATSURL) }

// NATS returns the NATS URL for t, skipping (or failing) t when nothing
// listens there.
func NATS(t testing.TB) string {
	t.Helper()
	u := NATSURL()
	if err := dialURL(u, "4222"); err != nil {
		unreachable(t, "NATS at "+u, err)
	}
	return u
}

// Reachable reports whether a broker URL accepts TCP connections.
func Reachable(rawURL, defaultPort string) error { return dialURL(rawURL, defaultPort) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func dialURL(rawURL, defaultPort string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("parse %q: %w", redact(rawURL), err)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), defaultPort)
	}
	return dial(host)
}

func dial(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

func redact(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}
