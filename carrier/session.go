package carrier

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/baggage"
)

// MaxSessionIDLen is the longest session ID tracebridge propagates.
const MaxSessionIDLen = 128

// sessionKey is the context key of the session.
type sessionKey struct{}

// session is what the context holds: the current ID and, after a rotation,
// the one it replaced.
type session struct {
	id, previous string
}

// ContextWithSession returns a copy of ctx that carries the session id. Every
// tracebridge producer writes it into the session-id header and the
// session.id baggage member, and the session span processor and log handler
// stamp it on spans and log lines. An id that ValidateSessionID rejects is
// kept in the context but never sent.
func ContextWithSession(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, sessionKey{}, &session{id: id})
}

// RotateSession returns a copy of ctx whose session is newID, remembering the
// session it replaces. Spans started under it carry session.previous_id, so a
// journey can be followed across a login or a session renewal.
func RotateSession(ctx context.Context, newID string) context.Context {
	prev := SessionFromContext(ctx)
	if prev == newID {
		prev = ""
	}
	return context.WithValue(ctx, sessionKey{}, &session{id: newID, previous: prev})
}

// SessionFromContext returns the session ID that ctx carries, or "". A session
// set with ContextWithSession wins; otherwise the baggage member session.id
// counts, which is how a session reaches code that only sees baggage.
func SessionFromContext(ctx context.Context) string {
	if s, ok := ctx.Value(sessionKey{}).(*session); ok {
		return s.id
	}
	if m := baggage.FromContext(ctx).Member(BaggageSessionKey); m.Key() != "" {
		if ValidateSessionID(m.Value()) == nil {
			return m.Value()
		}
	}
	return ""
}

// PreviousSessionFromContext returns the session that RotateSession replaced,
// or "".
func PreviousSessionFromContext(ctx context.Context) string {
	if s, ok := ctx.Value(sessionKey{}).(*session); ok {
		return s.previous
	}
	return ""
}

// NewSessionID returns a new session ID: a UUIDv7, so IDs sort by creation
// time.
func NewSessionID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// NewV7 fails only when the system's random source does; a v4 from
		// the same source would fail too, so there is nothing better to do.
		panic(fmt.Errorf("carrier: generate session ID: %w", err))
	}
	return id.String()
}

// ValidateSessionID reports why id cannot be propagated, or nil. A session ID
// is 1 to 128 bytes of printable ASCII without separators: no control
// characters, space, or any of ( ) < > @ , ; : \ " / [ ] ? = { }.
func ValidateSessionID(id string) error {
	if id == "" {
		return fmt.Errorf("carrier: empty session ID")
	}
	if len(id) > MaxSessionIDLen {
		return fmt.Errorf("carrier: session ID is %d bytes, more than %d", len(id), MaxSessionIDLen)
	}
	for i := 0; i < len(id); i++ {
		if !isTchar(id[i]) {
			return fmt.Errorf("carrier: session ID %q has invalid byte %#x at %d", id, id[i], i)
		}
	}
	return nil
}

// validSession is ValidateSessionID without building an error.
func validSession(id string) bool {
	if id == "" || len(id) > MaxSessionIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if !isTchar(id[i]) {
			return false
		}
	}
	return true
}

// IsUUID reports whether id is a UUID in its canonical textual form. It is
// the default session format that an untrusted edge accepts.
func IsUUID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch i {
		case 8, 13, 18, 23:
			if id[i] != '-' {
				return false
			}
		default:
			if _, ok := unhexAny(id[i]); !ok {
				return false
			}
		}
	}
	return true
}
