package carrier

import (
	"context"
	"slices"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"
)

// WithTrust returns a Propagator that extracts under trust policy t and is
// otherwise p: the same header names, baggage filter, session format, meter
// provider and logger. For Untrusted, allowBaggage lists the baggage keys it
// still accepts, replacing p's list. p itself is unchanged.
//
// A consumer uses it to apply its own trust policy to whatever propagator
// it was given, so that the policy does not depend on how that propagator
// was built.
func (p *Propagator) WithTrust(t Trust, allowBaggage ...string) *Propagator {
	c := p.cfg
	c.trust = t
	c.allowBaggage = slices.Clone(allowBaggage)
	// A fresh Propagator, not a copy sharing p's caches: a cached baggage
	// entry was filtered by the policy it was parsed under.
	return newPropagator(c)
}

// Admit applies p's trust policy to the journey that another propagator (one
// that is not a *Propagator, such as OpenTelemetry's composite of
// TraceContext and Baggage) extracted into extracted, and returns parent
// with what the policy admits of it. extracted must be the result of
// extracting into context.Background(), so that nothing else rides along.
//
// Trusted, the remote span context becomes the parent and the baggage and
// session are kept. Untrusted, the span context becomes a RemoteLink, the
// baggage keeps only the allow-listed keys, and the session (the session.id
// member) is kept only if it passes the session format. Whatever is refused
// is counted as dropped, as Extract counts it.
func (p *Propagator) Admit(parent, extracted context.Context) context.Context {
	untrusted := p.cfg.trust == Untrusted
	if sc := trace.SpanContextFromContext(extracted); sc.IsValid() {
		if untrusted {
			parent = context.WithValue(parent, remoteLinkKey{}, sc)
		} else {
			parent = trace.ContextWithRemoteSpanContext(parent, sc)
		}
	} else if sc, ok := RemoteLink(extracted); ok {
		parent = context.WithValue(parent, remoteLinkKey{}, sc)
	}

	sess := SessionFromContext(extracted)
	if sess != "" && !p.sessionOK(sess) {
		if validSession(sess) {
			p.drops.add(fieldSession, dropUntrusted)
		} else {
			p.drops.add(fieldSession, dropInvalid)
		}
		sess = ""
	}
	bag := baggage.FromContext(extracted)
	members := make([]baggage.Member, 0, bag.Len()+1)
	for _, m := range bag.Members() {
		switch {
		case m.Key() == BaggageSessionKey:
			// Judged above as the session; re-added below if kept.
		case untrusted && !p.allowed(m.Key()):
			p.drops.add(fieldBaggage, dropUntrusted)
		default:
			members = append(members, m)
		}
	}
	if sess != "" {
		if m, err := baggage.NewMemberRaw(BaggageSessionKey, sess); err == nil {
			members = append(members, m)
		}
	}
	if len(members) > 0 {
		if b, err := baggage.New(members...); err == nil {
			parent = baggage.ContextWithBaggage(parent, b)
		}
	}
	// As in Extract: a session set explicitly further up would shadow the
	// message's own.
	if sess != "" && parent.Value(sessionKey{}) != nil {
		parent = context.WithValue(parent, sessionKey{}, &session{id: sess})
	}
	return parent
}
