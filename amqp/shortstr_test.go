package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// received describes what the broker delivered: every short string's
// length, so a truncated one shows.
func received(d amqp091.Delivery) string {
	var keys []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case amqp091.Table:
			for k, e := range v {
				keys = append(keys, fmt.Sprintf("%d-byte key", len(k)))
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(d.Headers)
	slices.Sort(keys)
	return fmt.Sprintf("MessageId %d bytes, CorrelationId %d, ReplyTo %d, Type %d, AppId %d, UserId %d, ContentType %d, ContentEncoding %d, Expiration %d, headers %v",
		len(d.MessageId), len(d.CorrelationId), len(d.ReplyTo), len(d.Type), len(d.AppId), len(d.UserId),
		len(d.ContentType), len(d.ContentEncoding), len(d.Expiration), keys)
}

// TestOverlongShortStringIsRefusedNotTruncated publishes, through a
// confirming Publisher, messages with one AMQP short string of 300 bytes:
// each property, a header key at the top level, in a nested table and in
// a table inside an array, the routing key and the exchange. amqp091 used
// to send each with only its first 44 bytes (300 mod 256), and return nil.
// Each must fail with ErrShortStringTooLong naming the field and its
// length, send nothing, and leave the connection usable: a message whose
// short strings are exactly 255 bytes then arrives byte for byte, and is
// the only one in the queue.
func TestOverlongShortStringIsRefusedNotTruncated(t *testing.T) {
	url := testenv.AMQP(t)
	_, ch := dial(t, url)
	q := uniqueQueue(t, url, "shortstr")
	declare(t, ch, q, nil)
	pconn, pch := dial(t, url)
	p, err := amqp.NewPublisher(pch, tracebridge.WithConfirms())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	long := strings.Repeat("L", 300)

	cases := []struct {
		name, exchange, key, names string
		msg                        amqp091.Publishing
	}{
		{"MessageId", "", q, "MessageId", amqp091.Publishing{MessageId: long}},
		{"CorrelationId", "", q, "CorrelationId", amqp091.Publishing{CorrelationId: long}},
		{"ReplyTo", "", q, "ReplyTo", amqp091.Publishing{ReplyTo: long}},
		{"Type", "", q, "Type", amqp091.Publishing{Type: long}},
		{"AppId", "", q, "AppId", amqp091.Publishing{AppId: long}},
		{"ContentType", "", q, "ContentType", amqp091.Publishing{ContentType: long}},
		{"ContentEncoding", "", q, "ContentEncoding", amqp091.Publishing{ContentEncoding: long}},
		{"top-level header key", "", q, "header key", amqp091.Publishing{Headers: amqp091.Table{long: "v"}}},
		{"nested header key", "", q, `nested in header "outer"`,
			amqp091.Publishing{Headers: amqp091.Table{"outer": amqp091.Table{"mid": amqp091.Table{long: "v"}}}}},
		{"header key in an array", "", q, `nested in header "list"`,
			amqp091.Publishing{Headers: amqp091.Table{"list": []any{"a", amqp091.Table{long: int32(1)}}}}},
		{"routing key", "", q + strings.Repeat("r", 300-len(q)), "routing key", amqp091.Publishing{}},
		{"exchange", long, q, "exchange", amqp091.Publishing{}},
		// The broker closes the channel over these two as they used to
		// arrive (a user ID that is not the connection's, an expiration
		// that is not a number), so they come last.
		{"Expiration", "", q, "Expiration", amqp091.Publishing{Expiration: strings.Repeat("1", 300)}},
		{"UserId", "", q, "UserId", amqp091.Publishing{UserId: long}},
	}
	for _, tc := range cases {
		tc.msg.Body = []byte(tc.name)
		err := p.PublishWithContext(ctx, tc.exchange, tc.key, false, false, tc.msg)
		if err == nil {
			if d, ok, gerr := ch.Get(q, true); ok {
				t.Errorf("%s of 300 bytes: published without error, and the consumer got %s", tc.name, received(d))
			} else {
				t.Errorf("%s of 300 bytes: published without error (nothing in the queue: %v)", tc.name, gerr)
			}
			continue
		}
		if !errors.Is(err, amqp.ErrShortStringTooLong) {
			t.Errorf("%s of 300 bytes: %v, want ErrShortStringTooLong", tc.name, err)
			continue
		}
		for _, want := range []string{tc.names, "300 bytes"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not name %s", tc.name, err, want)
			}
		}
		alive(t, pconn, pch, q)
	}

	// Exactly 255 bytes everywhere AMQP allows it (the broker checks
	// UserId and Expiration against other rules).
	s255 := func(c string) string { return strings.Repeat(c, 255) }
	want := amqp091.Publishing{MessageId: s255("m"), CorrelationId: s255("c"), ReplyTo: s255("r"), Type: s255("t"),
		AppId: s255("a"), ContentType: s255("y"), ContentEncoding: s255("e"), Body: []byte("255"),
		Headers: amqp091.Table{s255("k"): "top", "outer": amqp091.Table{s255("n"): "nested"},
			"list": []any{amqp091.Table{s255("i"): int32(7)}}}}
	if err := p.PublishWithContext(ctx, "", q, false, false, want); err != nil {
		t.Fatalf("publish with 255-byte short strings: %v", err)
	}
	d, ok, err := ch.Get(q, true)
	if err != nil || !ok {
		t.Fatalf("get: ok=%v err=%v", ok, err)
	}
	if string(d.Body) != "255" {
		t.Fatalf("first message in the queue is %q (%s), want the 255-byte one: a refused message was sent", d.Body, received(d))
	}
	for _, f := range []struct{ name, got, want string }{{"MessageId", d.MessageId, want.MessageId},
		{"CorrelationId", d.CorrelationId, want.CorrelationId}, {"ReplyTo", d.ReplyTo, want.ReplyTo},
		{"Type", d.Type, want.Type}, {"AppId", d.AppId, want.AppId}, {"ContentType", d.ContentType, want.ContentType},
		{"ContentEncoding", d.ContentEncoding, want.ContentEncoding}} {
		if f.got != f.want {
			t.Errorf("%s arrived as %d bytes %.20q…, want the 255 sent", f.name, len(f.got), f.got)
		}
	}
	if d.Headers[s255("k")] != "top" {
		t.Errorf("255-byte top-level key lost: %s", received(d))
	}
	if outer, _ := d.Headers["outer"].(amqp091.Table); outer[s255("n")] != "nested" {
		t.Errorf("255-byte nested key lost: %s", received(d))
	}
	if list, _ := d.Headers["list"].([]any); len(list) != 1 || list[0].(amqp091.Table)[s255("i")] != int32(7) {
		t.Errorf("255-byte key in an array lost: %s", received(d))
	}
	if _, ok, _ := ch.Get(q, true); ok {
		t.Error("more than one message in the queue: a refused one was sent")
	}
	alive(t, pconn, pch, q)
}

// TestOverlongNamesRefusedAtStart configures a header name, and a consumer
// a dead-letter queue, longer than 255 bytes. amqp091 would write such a
// key or routing key truncated on every message, so the Publisher and the
// Consumer refuse to start, naming it, rather than fail (or corrupt) each
// message later.
func TestOverlongNamesRefusedAtStart(t *testing.T) {
	url := testenv.AMQP(t)
	long := strings.Repeat("h", 300)
	names := tracebridge.WithPropagators(carrier.NewPropagator(carrier.WithNames(carrier.Names{Traceparent: long})))
	check := func(t *testing.T, err error, want string) {
		t.Helper()
		if !errors.Is(err, amqp.ErrShortStringTooLong) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "300 bytes") {
			t.Errorf("%v, want ErrShortStringTooLong naming %s and 300 bytes", err, want)
		}
	}

	t.Run("NewPublisher", func(t *testing.T) {
		_, pch := dial(t, url)
		_, err := amqp.NewPublisher(pch, names)
		check(t, err, "carrier.Names.Traceparent")
	})
	t.Run("DialPublisher", func(t *testing.T) {
		p, err := amqp.DialPublisher(url, names)
		if err == nil {
			p.Close()
		}
		check(t, err, "carrier.Names.Traceparent")
	})
	t.Run("Consumer header name", func(t *testing.T) {
		q := uniqueQueue(t, url, "shortstr")
		c := amqp.NewConsumer(url, q, nil, func(context.Context, amqp091.Delivery) error { return nil }, names)
		check(t, runConsumer(t, c.Run)(), "carrier.Names.Traceparent")
	})
	t.Run("Consumer dead-letter queue", func(t *testing.T) {
		q := uniqueQueue(t, url, "shortstr")
		c := amqp.NewConsumer(url, q, nil, func(context.Context, amqp091.Delivery) error { return nil },
			tracebridge.WithDeadLetter(long))
		check(t, runConsumer(t, c.Run)(), "dead-letter queue")
	})
}
