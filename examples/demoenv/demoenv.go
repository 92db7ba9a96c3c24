// Package demoenv is demo scaffolding for tracebridge's examples, not part of
// the tracebridge API: it finds the brokers an example talks to, and starts
// embedded ones when none is named, so `go run ./examples/...` works on a
// machine with no Kafka or NATS installed.
//
//   - Kafka: KAFKA_BROKERS (comma-separated host:port), or an in-process
//     kfake cluster that speaks the real Kafka wire protocol.
//   - NATS: NATS_URL, or an embedded nats-server with JetStream.
//   - RabbitMQ: AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/. There
//     is no embedded RabbitMQ; an example says how to start one.
//
// When you copy an example into your own program, replace the call into this
// package with your brokers' addresses; nothing else in the example depends
// on it.
package demoenv

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/twmb/franz-go/pkg/kfake"
)

// DefaultAMQPURL is the RabbitMQ the examples use when AMQP_URL is not set:
// a local broker with the default guest account.
const DefaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// Kafka returns the broker addresses in KAFKA_BROKERS. When it is not set it
// starts an in-process kfake cluster (one broker, topics created on first
// use) and returns its address; embedded reports which. stop closes what
// was started and does nothing for KAFKA_BROKERS.
func Kafka() (addrs []string, embedded bool, stop func(), err error) {
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		return strings.Split(env, ","), false, func() {}, nil
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		return nil, false, nil, fmt.Errorf("demoenv: start embedded Kafka (kfake): %w", err)
	}
	return c.ListenAddrs(), true, c.Close, nil
}

// NATS returns NATS_URL. When it is not set it starts an embedded nats-server
// with JetStream on a free loopback port, its store in a temporary directory,
// and returns its URL; embedded reports which. stop shuts the server down and
// removes the store, and does nothing for NATS_URL.
func NATS() (url string, embedded bool, stop func(), err error) {
	if env := os.Getenv("NATS_URL"); env != "" {
		return env, false, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "tracebridge-example-nats-")
	if err != nil {
		return "", false, nil, fmt.Errorf("demoenv: NATS store directory: %w", err)
	}
	// Port -1 picks a free port; the server reports the one it took.
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", false, nil, fmt.Errorf("demoenv: embedded NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		_ = os.RemoveAll(dir)
		return "", false, nil, fmt.Errorf("demoenv: embedded NATS not ready after 10s")
	}
	stop = func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}
	return srv.ClientURL(), true, stop, nil
}

// AMQPURL returns AMQP_URL, or DefaultAMQPURL when it is not set.
func AMQPURL() string {
	if env := os.Getenv("AMQP_URL"); env != "" {
		return env
	}
	return DefaultAMQPURL
}
