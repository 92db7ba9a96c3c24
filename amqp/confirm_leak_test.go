package amqp

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// TestAttackAbandonedMandatoryConfirmsLeaveNothing publishes mandatory
// messages the broker returns, with confirms, and stops waiting for the
// answer: PublishWithContext under a context that ends first, and Wait
// under one on a deferred Confirmation that is then dropped. The
// channel's bookkeeping of expected returns must not keep them (and the
// returned bodies) for as long as the channel lives.
func TestAttackAbandonedMandatoryConfirmsLeaveNothing(t *testing.T) {
	url := testenv.AMQP(t)
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(ch, tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	nowhere := fmt.Sprintf("tb.atk.nowhere.%d", time.Now().UnixNano())
	body := make([]byte, 64<<10)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 20 {
		msg := amqp091.Publishing{MessageId: fmt.Sprint(i), Body: body}
		if i%2 == 0 {
			_ = p.PublishWithContext(cancelled, "", nowhere, true, false, msg) // the context's error
			continue
		}
		c, err := p.PublishWithDeferredConfirm(context.Background(), "", nowhere, true, false, msg)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Wait(cancelled)
	}
	// A routable publish waited for: every earlier answer has arrived.
	if err := p.PublishWithContext(context.Background(), "", "", false, false, amqp091.Publishing{}); err != nil &&
		!errors.Is(err, ErrNacked) {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pc := p.fixed
		pc.mu.Lock()
		pending, returns := len(pc.pending), len(pc.returns)
		pc.mu.Unlock()
		if pending == 0 && returns == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after every answer arrived the channel still expects %d returns and holds %d returned messages", pending, returns)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
