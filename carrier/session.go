package carrier

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"

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

// MinSessionKeyLen is the shortest key NewSessionSigner accepts: 16 bytes,
// 128 bits. Use 32 random bytes.
const MinSessionKeyLen = 16

// sessionMACLen is how many bytes of the HMAC-SHA256 a signed session ID
// carries, and sessionMACChars their unpadded base64url length.
const (
	sessionMACLen   = 16
	sessionMACChars = 22
)

// sessionMACContext separates session MACs from anything else computed
// with the same key, so a MAC made for another purpose never verifies as a
// session.
const sessionMACContext = "tracebridge session v1\x00"

// SessionSigner issues session IDs that carry a MAC, and verifies them, so
// that an HTTP edge accepts a client's session only if this system issued
// it (see WithSessionSigner). A made-up or guessed ID, another user's UUID,
// a truncated or altered ID: none verifies. What it cannot tell is who
// holds a session that this system did issue; bind a session to a user
// with WithSessionVerifier. Give every instance of the edge, and any
// service that issues sessions (a login service), the same key. A
// SessionSigner is safe for concurrent use.
type SessionSigner struct {
	keys [][]byte // keys[0] signs; every key verifies
}

// NewSessionSigner returns a signer that signs with key and also accepts
// sessions signed with the previous keys, so the key can be rotated without
// ending every session: sign with the new key, keep the old one in previous
// for as long as its sessions should live. Every key must be at least
// MinSessionKeyLen bytes; the keys are copied.
func NewSessionSigner(key []byte, previous ...[]byte) (*SessionSigner, error) {
	s := &SessionSigner{}
	for i, k := range append([][]byte{key}, previous...) {
		if len(k) < MinSessionKeyLen {
			return nil, fmt.Errorf("carrier: session key %d is %d bytes, want at least %d", i, len(k), MinSessionKeyLen)
		}
		s.keys = append(s.keys, slices.Clone(k))
	}
	return s, nil
}

// newProcessSigner returns a signer with a random key that only this
// process knows: the untrusted edge's default (see Middleware).
func newProcessSigner() *SessionSigner {
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand.Read never fails; it crashes the program if the system's source does
	return &SessionSigner{keys: [][]byte{key}}
}

// NewID returns a new session ID: a UUIDv7 (NewSessionID), a dot, and the
// first 16 bytes of its HMAC-SHA256 under the signing key in unpadded
// base64url, 59 bytes in all. Every character of it is a token character,
// as a session ID requires (base64url, unlike base64, has no '/' or '='),
// and also valid in an Authorization: Bearer token (RFC 6750).
func (s *SessionSigner) NewID() string {
	random := NewSessionID()
	var mac [sessionMACChars]byte
	sessionMAC(s.keys[0], random, &mac)
	return random + "." + string(mac[:])
}

// Verify reports whether id is a session ID that s issued, with its signing
// key or a previous one. The comparison takes the same time wherever a
// forged MAC differs.
func (s *SessionSigner) Verify(id string) bool {
	if !validSession(id) {
		return false
	}
	dot := strings.LastIndexByte(id, '.')
	if dot <= 0 || len(id)-dot-1 != sessionMACChars {
		return false
	}
	var got, want [sessionMACChars]byte
	copy(got[:], id[dot+1:])
	ok := 0
	for _, k := range s.keys {
		sessionMAC(k, id[:dot], &want)
		ok |= subtle.ConstantTimeCompare(got[:], want[:])
	}
	return ok == 1
}

// sessionMAC writes the encoded MAC of random under key into out.
func sessionMAC(key []byte, random string, out *[sessionMACChars]byte) {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sessionMACContext))
	m.Write([]byte(random))
	var sum [sha256.Size]byte
	base64.RawURLEncoding.Encode(out[:], m.Sum(sum[:0])[:sessionMACLen])
}
