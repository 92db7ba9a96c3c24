package nats

import "time"

// SetAckTimeout shortens the ack timeout of j's async publish relays, so a
// test of it need not wait DefaultAsyncAckTimeout.
func SetAckTimeout(j *JetStream, d time.Duration) { j.ackTimeout = d }
