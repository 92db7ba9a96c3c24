package testenv

import (
	"context"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// Topics returns configs for topics of the given number of partitions.
func Topics(partitions int, names ...string) []kafkago.TopicConfig {
	out := make([]kafkago.TopicConfig, len(names))
	for i, n := range names {
		out[i] = kafkago.TopicConfig{Topic: n, NumPartitions: partitions, ReplicationFactor: 1}
	}
	return out
}

// CreateTopics creates topics on the cluster at addrs and fails t when any
// is refused. Tests create topics up front because a group reader looks a
// topic up before anything is written to it, and a throwaway message to
// make the broker create one would show up in the test.
func CreateTopics(t testing.TB, addrs []string, topics ...kafkago.TopicConfig) {
	t.Helper()
	cl := &kafkago.Client{Addr: kafkago.TCP(addrs...), Timeout: 10 * time.Second, Transport: &kafkago.Transport{}}
	defer cl.Transport.(*kafkago.Transport).CloseIdleConnections()
	res, err := cl.CreateTopics(context.Background(), &kafkago.CreateTopicsRequest{Topics: topics})
	if err != nil {
		t.Fatalf("create topics %v: %v", topicNames(topics), err)
	}
	for tp, err := range res.Errors {
		if err != nil {
			t.Fatalf("create topic %q: %v", tp, err)
		}
	}
}

// DeleteTopicsAfter deletes topics from the cluster at addrs when t ends.
func DeleteTopicsAfter(t testing.TB, addrs []string, topics ...string) {
	t.Cleanup(func() {
		tr := &kafkago.Transport{}
		defer tr.CloseIdleConnections()
		cl := &kafkago.Client{Addr: kafkago.TCP(addrs...), Timeout: 10 * time.Second, Transport: tr}
		_, _ = cl.DeleteTopics(context.Background(), &kafkago.DeleteTopicsRequest{Topics: topics})
	})
}

func topicNames(topics []kafkago.TopicConfig) []string {
	out := make([]string, len(topics))
	for i, tc := range topics {
		out[i] = tc.Topic
	}
	return out
}
