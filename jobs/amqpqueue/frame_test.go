package amqpqueue_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	tbamqp "github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/internal/amqpframe"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/jobs"
	"github.com/tracebridge/tracebridge/jobs/amqpqueue"
)

func frameQueue(t *testing.T, deadLetter bool) (*amqpqueue.Queue, string, int) {
	t.Helper()
	url := testenv.AMQP(t)
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	frameMax := conn.Config.FrameSize
	_ = conn.Close()
	name := fmt.Sprintf("tbjobs-frame-%d", time.Now().UnixNano())
	cfg := amqpqueue.Config{Queue: name}
	if deadLetter {
		cfg.DeadLetter = name + ".dlq"
	}
	q, err := amqpqueue.New(url, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = q.Close()
		removeQueues(t, url, name)
		if deadLetter {
			_, _ = channel(t).QueueDelete(cfg.DeadLetter, false, false, false)
		}
	})
	return q, name, frameMax
}

func job(id, kind string) *jobs.Envelope {
	return &jobs.Envelope{ID: id, Kind: kind, Payload: []byte("p-" + id), Attempt: 1, EnqueuedAt: time.Now(),
		Headers: map[string]string{}}
}

// frameSize is amqpframe.Size of a message that has no over-long short
// string.
func frameSize(t testing.TB, msg *amqp091.Publishing) int {
	t.Helper()
	n, err := amqpframe.Size(msg)
	if err != nil {
		t.Fatalf("Size: %v", err)
	}
	return n
}

// TestPushOverFrameMaxRefused pushes a job whose headers cannot fit in one
// frame while another job is taken and not yet acked. The push must fail
// with ErrFrameTooLarge naming the limit, and the connection must survive:
// the taken job is acked, not handed back to the queue.
func TestPushOverFrameMaxRefused(t *testing.T) {
	q, _, frameMax := frameQueue(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := q.Push(ctx, job("held", "k"), false); err != nil {
		t.Fatal(err)
	}
	held, err := q.Pop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = q.Push(ctx, job("huge", strings.Repeat("k", 140000)), false)
	if !errors.Is(err, tbamqp.ErrFrameTooLarge) || !strings.Contains(err.Error(), strconv.Itoa(frameMax)) {
		t.Fatalf("push of a 140,000-byte job kind: %v, want ErrFrameTooLarge naming %d", err, frameMax)
	}
	if err := q.Ack(ctx, held); err != nil {
		t.Fatalf("ack of the job taken before: %v (its connection was lost)", err)
	}
	if err := q.Push(ctx, job("after", "k"), false); err != nil {
		t.Fatal(err)
	}
	e, err := q.Pop(ctx)
	if err != nil || e.ID != "after" {
		t.Fatalf("pop: %v, %v; want the job pushed after (the held one came back, or the huge one was sent)", e, err)
	}
	_ = q.Ack(ctx, e)
}

// TestUndecodableDeadLetterTrimmedToFit feeds the queue a message that is
// not a job, with headers that fit as delivered but not with the
// dead-letter-* headers added. It must still reach the dead-letter queue,
// trimmed of its largest header (listed in dead-letter-dropped-headers),
// never requeued in a loop.
func TestUndecodableDeadLetterTrimmedToFit(t *testing.T) {
	q, name, frameMax := frameQueue(t, true)
	msg := amqp091.Publishing{Headers: amqp091.Table{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"small": "keep", "big": ""}, Body: []byte("not a job")}
	msg.Headers["big"] = strings.Repeat("x", frameMax-30-frameSize(t, &msg))
	ch := channel(t)
	if err := ch.Publish("", name, false, false, msg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := q.Pop(ctx)
	if err == nil || !strings.Contains(err.Error(), "moved to") || !strings.Contains(err.Error(), `"big"`) {
		t.Fatalf("pop of a message that is not a job: %v; want it moved to the dead-letter queue without \"big\"", err)
	}
	d, ok, err := ch.Get(name+".dlq", true)
	if err != nil || !ok {
		t.Fatalf("no dead letter: ok=%v err=%v", ok, err)
	}
	h := tbamqp.Carrier(d.Headers)
	if string(d.Body) != "not a job" || h.Get("small") != "keep" || h.Get("dead-letter-source") != name {
		t.Errorf("dead letter: body %q small %q source %q", d.Body, h.Get("small"), h.Get("dead-letter-source"))
	}
	if list := h.Get(amqpframe.DroppedHeader); !strings.HasSuffix(list, ",big") {
		t.Errorf("%s = %q, want it to end with big", amqpframe.DroppedHeader, list)
	}
}

// TestRetryThatCannotFitIsAnError retries a job whose next attempt (with
// retry-attempt, retry-previous and not-before added) no longer fits in
// one frame. Handing the attempt back to RabbitMQ would run it again for
// ever; Retry must report ErrFrameTooLarge so the runner gives the job up
// as dead.
func TestRetryThatCannotFitIsAnError(t *testing.T) {
	q, _, frameMax := frameQueue(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prev := job("tight", "")
	probe := amqp091.Publishing{Headers: amqp091.Table{}, Body: prev.Payload, MessageId: prev.ID,
		DeliveryMode: amqp091.Persistent, ContentType: "application/octet-stream"}
	jobs.EncodeEnvelope(tbamqp.Carrier(probe.Headers), prev)
	prev.Kind = strings.Repeat("k", frameMax-20-frameSize(t, &probe))
	if err := q.Push(ctx, prev, false); err != nil {
		t.Fatal(err)
	}
	popped, err := q.Pop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next := *popped
	next.Attempt, next.NotBefore = 2, time.Now().Add(time.Second)
	next.Headers = map[string]string{"retry-attempt": "2",
		"retry-previous": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	err = q.Retry(ctx, popped, &next)
	if !errors.Is(err, tbamqp.ErrFrameTooLarge) {
		t.Fatalf("retry that cannot fit: %v, want ErrFrameTooLarge", err)
	}
	_ = q.Ack(ctx, popped)
}

// TestPushOverlongShortStringRefused pushes a job whose ID (sent as the
// AMQP MessageId) and one whose header key is 300 bytes: amqp091 would send
// only their first 44 bytes without an error. Each push must fail with
// ErrShortStringTooLong naming the field, and send nothing; a job with a
// 255-byte ID and header key then arrives intact, first in the queue.
func TestPushOverlongShortStringRefused(t *testing.T) {
	q, _, _ := frameQueue(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	long := strings.Repeat("L", 300)
	keyed := job("keyed", "k")
	keyed.Headers[long] = "v"
	for _, tc := range []struct {
		name, field string
		e           *jobs.Envelope
	}{{"ID", "MessageId", job(long, "k")}, {"header key", "header key", keyed}} {
		err := q.Push(ctx, tc.e, false)
		if err == nil {
			popped, perr := q.Pop(ctx)
			if perr != nil {
				t.Errorf("job with a 300-byte %s pushed without error; pop: %v", tc.name, perr)
				continue
			}
			d := popped.Receipt.(amqp091.Delivery)
			var keys []int
			for k := range popped.Headers {
				keys = append(keys, len(k))
			}
			t.Errorf("job with a 300-byte %s pushed without error; it arrived with a %d-byte MessageId and header keys of %v bytes",
				tc.name, len(d.MessageId), keys)
			_ = q.Ack(ctx, popped)
			continue
		}
		if !errors.Is(err, tbamqp.ErrShortStringTooLong) || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), "300 bytes") {
			t.Errorf("push of a job with a 300-byte %s: %v, want ErrShortStringTooLong naming %s and 300 bytes", tc.name, err, tc.field)
		}
	}

	id, key := strings.Repeat("i", 255), strings.Repeat("k", 255)
	ok := job(id, "k")
	ok.Headers[key] = "v"
	if err := q.Push(ctx, ok, false); err != nil {
		t.Fatalf("push with a 255-byte ID and header key: %v", err)
	}
	popped, err := q.Pop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q.Ack(ctx, popped) }()
	if d := popped.Receipt.(amqp091.Delivery); popped.ID != id || d.MessageId != id || popped.Headers[key] != "v" {
		t.Errorf("job with 255-byte short strings arrived as ID %d bytes, MessageId %d bytes, header %q: %q",
			len(popped.ID), len(d.MessageId), key[:8]+"…", popped.Headers[key])
	}
}

// TestNewRefusesOverlongQueueNames configures queue names AMQP cannot
// carry. amqp091 would declare (and publish to) their first bytes modulo
// 256, other queues, without an error; New must refuse them, naming which.
func TestNewRefusesOverlongQueueNames(t *testing.T) {
	url := testenv.AMQP(t)
	base := fmt.Sprintf("tbjobs-shortstr-%d-", time.Now().UnixNano())
	for _, tc := range []struct {
		name string
		cfg  amqpqueue.Config
		want string
	}{
		{"queue", amqpqueue.Config{Queue: base + strings.Repeat("q", 300-len(base))}, "queue is 300 bytes"},
		{"delay queue", amqpqueue.Config{Queue: base + strings.Repeat("q", 250-len(base))}, "delay queue is 256 bytes"},
		{"dead-letter queue", amqpqueue.Config{Queue: base + "ok", DeadLetter: base + strings.Repeat("d", 300-len(base))},
			"dead-letter queue is 300 bytes"},
	} {
		q, err := amqpqueue.New(url, tc.cfg)
		if err == nil {
			_ = q.Close()
			// What amqp091 declared: the names cut to their length mod 256.
			ch := channel(t)
			for _, n := range []string{tc.cfg.Queue, tc.cfg.Queue + tbamqp.DelayQueueSuffix, tc.cfg.DeadLetter} {
				if n := n[:uint8(len(n))]; n != "" {
					_, _ = ch.QueueDelete(n, false, false, false)
				}
			}
		}
		if !errors.Is(err, tbamqp.ErrShortStringTooLong) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New with a long %s name: %v, want ErrShortStringTooLong saying %s", tc.name, err, tc.want)
		}
	}
}
