package amqp_test

import (
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/tracebridge/tracebridge/amqp"
)

func TestCarrierReadsStringsAndBytesIgnoresOtherTypes(t *testing.T) {
	c := amqp.Carrier(amqp091.Table{
		"s":     "text",
		"b":     []byte("bytes"),
		"int":   int64(7),
		"table": amqp091.Table{"x": "y"},
		"nil":   nil,
		"list":  []any{"a"},
	})
	for key, want := range map[string]string{"s": "text", "b": "bytes", "int": "", "table": "", "nil": "", "list": "", "absent": ""} {
		if got := c.Get(key); got != want {
			t.Errorf("Get(%q) = %q, want %q", key, got, want)
		}
	}
	if got := c.Values("b"); len(got) != 1 || got[0] != "bytes" {
		t.Errorf("Values(b) = %q", got)
	}
	if got := c.Values("int"); got != nil {
		t.Errorf("Values(int) = %q, want nil", got)
	}
	c.Set("int", "now a string")
	if v, ok := c["int"].(string); !ok || v != "now a string" {
		t.Errorf("Set wrote %T %v, want the string", c["int"], c["int"])
	}
	if got := c.Get("S"); got != "" {
		t.Errorf("keys must be case-sensitive, Get(S) = %q", got)
	}
	if n := len(c.Keys()); n != 6 {
		t.Errorf("Keys() has %d entries, want 6", n)
	}
}
