package carrier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/baggage"
)

// BaggageDebugKey is the baggage member that marks a journey's session as a
// debug session: every service records it, whatever its sampling ratio. Its
// value is the session ID it marks, so a mark never applies to a session
// other than the one it was set for. It travels with the rest of the
// baggage, so services that were not told about the session, and
// OpenTelemetry services that do not use tracebridge, pass it on. Only
// trusted input carries it: an Untrusted propagator drops it whatever its
// allow-list says.
const BaggageDebugKey = "session.debug"

// DebugSessionsEnv names the environment variable that lists debug
// sessions, comma-separated: NewPropagator marks the journeys of these
// sessions on their way out, and the session sampler
// (github.com/tracebridge/tracebridge/sampling) records them.
const DebugSessionsEnv = "TRACEBRIDGE_DEBUG_SESSIONS"

// ContextWithDebug returns a copy of ctx whose session is marked as a debug
// session: every tracebridge producer sends the mark on (the baggage member
// session.debug), and every service that samples with the session sampler
// records the journey from here on. Use it where a session starts or is
// recognised, for example when a support engineer flags a user. ctx
// without a session is returned unchanged: a mark belongs to a session.
func ContextWithDebug(ctx context.Context) context.Context {
	id := SessionFromContext(ctx)
	if !validSession(id) {
		return ctx
	}
	m, err := baggage.NewMemberRaw(BaggageDebugKey, id)
	if err != nil {
		return ctx
	}
	b, err := baggage.FromContext(ctx).SetMember(m)
	if err != nil {
		return ctx
	}
	return baggage.ContextWithBaggage(ctx, b)
}

// DebugFromContext reports whether ctx's session carries the debug mark:
// its baggage has the member session.debug with the session's ID as value.
// It does not know the sessions a service was configured with; the session
// sampler asks both.
func DebugFromContext(ctx context.Context) bool {
	m := baggage.FromContext(ctx).Member(BaggageDebugKey)
	if m.Key() == "" {
		return false
	}
	id := SessionFromContext(ctx)
	return id != "" && m.Value() == id
}

// ParseDebugSessions splits a comma-separated list of session IDs, as
// TRACEBRIDGE_DEBUG_SESSIONS holds it. Blanks around an ID and empty
// entries are ignored. It returns the valid IDs, and an error naming every
// entry that is not a valid session ID (see ValidateSessionID); the caller
// can use the valid ones and report the rest.
func ParseDebugSessions(list string) ([]string, error) {
	var ids []string
	var errs []error
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if err := ValidateSessionID(f); err != nil {
			errs = append(errs, err)
			continue
		}
		ids = append(ids, f)
	}
	if len(errs) > 0 {
		return ids, fmt.Errorf("carrier: debug sessions %q: %w", list, errors.Join(errs...))
	}
	return ids, nil
}

// DebugSessionsFromEnv returns the sessions TRACEBRIDGE_DEBUG_SESSIONS
// names, with ParseDebugSessions' error for the entries it could not use.
func DebugSessionsFromEnv() ([]string, error) {
	v, ok := os.LookupEnv(DebugSessionsEnv)
	if !ok {
		return nil, nil
	}
	ids, err := ParseDebugSessions(v)
	if err != nil {
		return ids, fmt.Errorf("%s: %w", DebugSessionsEnv, err)
	}
	return ids, nil
}

// WithDebugSessions names debug sessions: the propagator marks every
// journey of these sessions that it injects (the baggage member
// session.debug), so that every service downstream records it, including
// those that were not told about it. The sessions that
// TRACEBRIDGE_DEBUG_SESSIONS names are debug sessions too. Give the
// session sampler the same sessions (sampling.WithDebugSessions), so that
// this service records them as well. Invalid IDs are ignored and logged.
func WithDebugSessions(ids ...string) Option {
	return func(c *config) { c.debugIDs = append(c.debugIDs, ids...) }
}

// debugSet is the immutable set of a propagator's debug sessions. It never
// changes after construction, which is what lets the inject caches hold an
// encoding that includes the mark.
type debugSet map[string]struct{}

// newDebugSet builds the set from ids and the environment, logging what it
// cannot use.
func newDebugSet(c *config) debugSet {
	env, err := DebugSessionsFromEnv()
	if err != nil {
		c.logger.Warn("carrier: ignoring invalid debug sessions", "error", err)
	}
	ids := append(env, c.debugIDs...)
	if len(ids) == 0 {
		return nil
	}
	s := make(debugSet, len(ids))
	for _, id := range ids {
		if err := ValidateSessionID(id); err != nil {
			c.logger.Warn("carrier: ignoring invalid debug session", "error", err)
			continue
		}
		s[id] = struct{}{}
	}
	return s
}

func (s debugSet) has(id string) bool {
	if len(s) == 0 {
		return false
	}
	_, ok := s[id]
	return ok
}

// markDebug reports whether Inject marks sess as a debug session: it is
// one of the propagator's, or the baggage being sent carries the mark for
// it. A mark for another session, or without one, is dropped: it belongs
// to the session it was set for.
func (p *Propagator) markDebug(members []baggage.Member, sess string) bool {
	if sess == "" {
		return false
	}
	if p.cfg.debug.has(sess) {
		return true
	}
	for i := range members {
		if members[i].Key() == BaggageDebugKey {
			return members[i].Value() == sess
		}
	}
	return false
}

// appendDebugMember appends the member session.debug=<sess> after the
// session member that appendBaggage writes first.
func appendDebugMember(dst []byte, sess string) []byte {
	dst = append(dst, ',')
	dst = append(dst, BaggageDebugKey...)
	dst = append(dst, '=')
	return appendBaggageValue(dst, sess)
}
