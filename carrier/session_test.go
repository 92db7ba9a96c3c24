package carrier_test

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"

	"github.com/tracebridge/tracebridge/carrier"
)

// TestValidateSessionID: printable ASCII, 1 to 128 bytes, no separators or
// control characters.
func TestValidateSessionID(t *testing.T) {
	tests := []struct {
		rule string
		id   string
		ok   bool
	}{
		{"UUID", "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6071", true},
		{"token characters", "abc!#$%&'*+-.^_`|~XYZ09", true},
		{"one byte", "a", true},
		{"128 bytes", strings.Repeat("a", 128), true},
		{"129 bytes", strings.Repeat("a", 129), false},
		{"empty", "", false},
		{"space", "a b", false},
		{"tab", "a\tb", false},
		{"newline", "a\nb", false},
		{"NUL", "a\x00", false},
		{"DEL", "a\x7f", false},
		{"non-ASCII", "sessión", false},
	}
	for _, sep := range "()<>@,;:\\\"/[]?={}" {
		tests = append(tests, struct {
			rule string
			id   string
			ok   bool
		}{"separator " + string(sep), "a" + string(sep) + "b", false})
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			err := carrier.ValidateSessionID(tt.id)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateSessionID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
			}
		})
	}
}

func TestNewSessionIDIsUUIDv7(t *testing.T) {
	a, b := carrier.NewSessionID(), carrier.NewSessionID()
	if !carrier.IsUUID(a) || a[14] != '7' || a == b {
		t.Fatalf("NewSessionID gave %q and %q", a, b)
	}
	if carrier.ValidateSessionID(a) != nil {
		t.Fatalf("NewSessionID %q is not a valid session ID", a)
	}
}

// TestSessionPrecedence: the session-id header comes first, the baggage
// member session.id is the fallback, and they never disagree afterwards.
func TestSessionPrecedence(t *testing.T) {
	long := strings.Repeat("s", 129)
	tests := []struct {
		rule       string
		header     string
		bag        string
		trust      carrier.Trust
		want       string // session after extract
		wantMember string // baggage member session.id after extract
		drops      map[string]int64
	}{
		{"header only", "h1", "", carrier.Trusted, "h1", "h1", nil},
		{"baggage only", "", "session.id=b1", carrier.Trusted, "b1", "b1", nil},
		{"header and baggage agree", "s1", "session.id=s1,k=v", carrier.Trusted, "s1", "s1", nil},
		{"header wins over baggage", "h1", "session.id=b1", carrier.Trusted, "h1", "h1", nil},
		{"invalid header dropped, member is the fallback", long, "session.id=b1", carrier.Trusted, "b1", "b1", map[string]int64{"session-id/invalid": 1}},
		{"invalid header, no baggage", "a b", "", carrier.Trusted, "", "", map[string]int64{"session-id/invalid": 1}},
		{"invalid baggage member dropped", "", "session.id=" + long, carrier.Trusted, "", "", map[string]int64{"session-id/invalid": 1}},
		{"untrusted UUID kept", "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6071", "", carrier.Untrusted, "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6071", "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6071", nil},
		{"untrusted non-UUID header dropped", "h1", "", carrier.Untrusted, "", "", map[string]int64{"session-id/untrusted": 1}},
		{"untrusted non-UUID member dropped", "", "session.id=b1", carrier.Untrusted, "", "", map[string]int64{"session-id/invalid": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			p, d := newProp(t, carrier.WithTrust(tt.trust))
			c := propagation.MapCarrier{}
			if tt.header != "" {
				c["session-id"] = tt.header
			}
			if tt.bag != "" {
				c["baggage"] = tt.bag
			}
			ctx := p.Extract(context.Background(), c)
			if got := carrier.SessionFromContext(ctx); got != tt.want {
				t.Fatalf("session %q, want %q", got, tt.want)
			}
			if got := baggage.FromContext(ctx).Member("session.id").Value(); got != tt.wantMember {
				t.Fatalf("baggage session.id %q, want %q", got, tt.wantMember)
			}
			want := tt.drops
			if want == nil {
				want = map[string]int64{}
			}
			if got := d.counts(t); !equalCounts(got, want) {
				t.Fatalf("drops %v, want %v", got, want)
			}
		})
	}
}

// TestSessionCustomFormat: WithSessionFormat decides what an untrusted edge
// accepts.
func TestSessionCustomFormat(t *testing.T) {
	p, _ := newProp(t, carrier.WithTrust(carrier.Untrusted),
		carrier.WithSessionFormat(func(id string) bool { return strings.HasPrefix(id, "sess_") }))
	for id, want := range map[string]string{"sess_42": "sess_42", "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6071": "", "sess_a b": ""} {
		ctx := p.Extract(context.Background(), propagation.MapCarrier{"session-id": id})
		if got := carrier.SessionFromContext(ctx); got != want {
			t.Errorf("session %q extracted as %q, want %q", id, got, want)
		}
	}
}

// TestSessionFromMessageReplacesContextSession: a consumer that extracts
// into a context that already has a session continues the message's
// journey, not its own; a message without a session leaves it alone.
func TestSessionFromMessageReplacesContextSession(t *testing.T) {
	p, _ := newProp(t)
	base := carrier.ContextWithSession(context.Background(), "mine")
	if got := carrier.SessionFromContext(p.Extract(base, propagation.MapCarrier{"session-id": "theirs"})); got != "theirs" {
		t.Fatalf("session %q, want theirs", got)
	}
	for name, c := range map[string]propagation.MapCarrier{
		"no headers":             {},
		"baggage and no session": {"baggage": "k=v"},
	} {
		if got := carrier.SessionFromContext(p.Extract(base, c)); got != "mine" {
			t.Fatalf("%s: session %q, want mine", name, got)
		}
	}
}

// TestSessionInject: the session goes out as its header and as the first
// baggage member; an invalid one is not sent and is counted.
func TestSessionInject(t *testing.T) {
	p, d := newProp(t)
	out := propagation.MapCarrier{}
	p.Inject(carrier.ContextWithSession(ctxWithBaggage(t, "a", "1"), "s-1"), out)
	if out["session-id"] != "s-1" || out["baggage"] != "session.id=s-1,a=1" {
		t.Fatalf("headers %v", out)
	}
	out = propagation.MapCarrier{}
	p.Inject(carrier.ContextWithSession(context.Background(), "bad id"), out)
	if len(out) != 0 {
		t.Fatalf("invalid session sent: %v", out)
	}
	if got := d.counts(t); got["session-id/invalid"] != 1 {
		t.Fatalf("drops %v", got)
	}
	// The session rides in baggage too, so a hop that uses only stock
	// OpenTelemetry passes it on and a tracebridge hop after it reads it.
	stockCtx := stockPropagator().Extract(context.Background(), propagation.MapCarrier{"baggage": "session.id=s-2"})
	via := propagation.MapCarrier{}
	stockPropagator().Inject(stockCtx, via)
	if got := carrier.SessionFromContext(p.Extract(context.Background(), via)); got != "s-2" {
		t.Fatalf("session through a stock hop: %q", got)
	}
}

func TestRotateSession(t *testing.T) {
	ctx := carrier.RotateSession(carrier.ContextWithSession(context.Background(), "old"), "new")
	if carrier.SessionFromContext(ctx) != "new" || carrier.PreviousSessionFromContext(ctx) != "old" {
		t.Fatalf("rotation gave %q, previous %q", carrier.SessionFromContext(ctx), carrier.PreviousSessionFromContext(ctx))
	}
	if carrier.PreviousSessionFromContext(carrier.RotateSession(ctx, "new")) != "" {
		t.Fatal("rotating to the same ID must not record a previous session")
	}
}
