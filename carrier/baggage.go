package carrier

import (
	"slices"
	"strings"
	"unicode/utf8"
	"unsafe"

	"go.opentelemetry.io/otel/baggage"
)

// W3C Baggage limits. Beyond them whole members are dropped, never part of one.
const (
	maxBaggageMembers = 64
	maxBaggageBytes   = 8192
	// maxBaggageScan is how much of a message's baggage is read: eight
	// times what W3C asks a receiver to propagate. A producer that keeps to
	// the limits never sends more, and what lies beyond is dropped unread,
	// so that a hostile header costs no more to decode than this.
	maxBaggageScan = 8 * maxBaggageBytes
	// minBaggageMember is the shortest member, "k=".
	minBaggageMember = 2
)

// BaggageFilter decides which baggage keys may leave this process. It is
// applied on produce (inject), because baggage is copied into every hop and
// often into logs. It returns true to keep the key.
type BaggageFilter func(key string) bool

// sensitiveWords are the key fragments DenySensitive refuses.
var sensitiveWords = []string{"password", "secret", "token", "authorization", "cookie", "email", "ssn", "card"}

// DenySensitive is the default produce-side filter. It drops keys that look
// like secrets or personal data: any key containing password, secret, token,
// authorization, cookie, email, ssn or card, in any case.
func DenySensitive(key string) bool {
	// It runs for every member of every message, so it is one pass over the
	// key that tries only the words starting with the byte at hand. c|0x20
	// lowers ASCII letters and maps no other byte to one.
	for i := 0; i < len(key); i++ {
		for _, w := range sensitiveByFirst[key[i]|0x20] {
			if hasPrefixFold(key[i:], w) {
				return false
			}
		}
	}
	return true
}

// sensitiveByFirst indexes sensitiveWords by first letter.
var sensitiveByFirst = func() (t [256][]string) {
	for _, w := range sensitiveWords {
		t[w[0]] = append(t[w[0]], w)
	}
	return t
}()

// hasPrefixFold reports whether s starts with the lowercase ASCII letters
// w, ignoring ASCII case.
func hasPrefixFold(s, w string) bool {
	if len(s) < len(w) {
		return false
	}
	for j := 0; j < len(w); j++ {
		if s[j]|0x20 != w[j] {
			return false
		}
	}
	return true
}

// AllowKeys returns a filter that keeps exactly the listed keys.
func AllowKeys(keys ...string) BaggageFilter {
	set := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		set[k] = struct{}{}
	}
	return func(key string) bool {
		_, ok := set[key]
		return ok
	}
}

// DenyKeys returns a filter that drops every key containing one of words,
// ignoring ASCII case. DenyKeys() with no words keeps everything.
func DenyKeys(words ...string) BaggageFilter {
	// containsFold folds only the key, so the words are lowered once here.
	words = slices.Clone(words)
	for i, w := range words {
		words[i] = strings.ToLower(w)
	}
	return func(key string) bool {
		for _, w := range words {
			if containsFold(key, w) {
				return false
			}
		}
		return true
	}
}

// containsFold reports whether s contains the lowercase ASCII word w,
// ignoring ASCII case, without allocating.
func containsFold(s, w string) bool {
	if len(w) == 0 {
		return true
	}
outer:
	for i := 0; i+len(w) <= len(s); i++ {
		for j := 0; j < len(w); j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != w[j] {
				continue outer
			}
		}
		return true
	}
	return false
}

// bagMember is one parsed baggage list-member.
type bagMember struct {
	key, value string // value percent-decoded
	props      []baggage.Property
	size       int // encoded size on the wire
}

// bagList collects parsed members. The caller gives m a stack array to
// start from (a self-referencing buffer inside bagList would force it to the
// heap).
type bagList struct {
	m     []bagMember
	bytes int // encoded size of the members with their commas
}

func (l *bagList) index(key string) int {
	for i, m := range l.m {
		if m.key == key {
			return i
		}
	}
	return -1
}

// full reports whether no further member can be kept, and why: l holds 64
// members, or its bytes leave no room for the shortest one, or scanned
// input bytes have been read.
func (l *bagList) full(scanned int) (dropReason, bool) {
	switch {
	case len(l.m) >= maxBaggageMembers:
		return dropTooMany, true
	case len(l.m) > 0 && l.bytes+1+minBaggageMember > maxBaggageBytes, scanned >= maxBaggageScan:
		return dropTooLarge, true
	}
	return 0, false
}

// parseBaggage decodes the baggage header fields, combined as RFC 7230
// combines repeated fields, into l. keep decides whether a key is admitted
// (the trust policy). Members are taken in order; one that is invalid,
// refused, or would take the list over 64 members or 8192 bytes is dropped
// whole and counted in drop, and a later one that still fits is taken. Of
// duplicate keys the last wins, as in baggage.Parse. Parsing stops once no
// further member could be kept, and after maxBaggageScan bytes; the rest is
// dropped unread and counted once. A member's size is checked before its
// value is decoded, so a member that does not fit costs no allocation. l is
// passed and returned by value to keep the caller's buffer on the stack.
func parseBaggage(l bagList, fields []string, keep func(string) bool, drop *dropSink) bagList {
	scanned := 0
	for i, field := range fields {
		for field != "" {
			if r, full := l.full(scanned); full {
				if hasListMember(field, fields[i+1:]) {
					drop.add(r)
				}
				return l
			}
			var raw string
			raw, field, _ = strings.Cut(field, ",")
			scanned += len(raw) + 1
			if raw = trimOWS(raw); raw != "" {
				l = l.add(raw, keep, drop)
			}
		}
	}
	return l
}

// hasListMember reports whether field or any of more holds anything but
// commas and whitespace, looking no further than the first such byte.
func hasListMember(field string, more []string) bool {
	if strings.TrimLeft(field, ", \t") != "" {
		return true
	}
	for _, f := range more {
		if strings.TrimLeft(f, ", \t") != "" {
			return true
		}
	}
	return false
}

// add takes the list-member raw (trimmed, not empty) into l if it is valid,
// admitted and fits, and counts it in drop otherwise. l holds fewer than 64
// members: parseBaggage stops at 64.
func (l bagList) add(raw string, keep func(string) bool, drop *dropSink) bagList {
	key, ok := baggageKey(raw)
	if !ok {
		drop.add(dropInvalidMember)
		return l
	}
	if keep != nil && !keep(key) {
		drop.add(dropUntrusted)
		return l
	}
	i := l.index(key)
	grow := len(raw)
	switch {
	case i >= 0:
		// W3C allows duplicates but OpenTelemetry keeps one per key;
		// the last one wins, as in baggage.Parse.
		grow -= l.m[i].size
	case len(l.m) > 0:
		grow++ // comma
	}
	if l.bytes+grow > maxBaggageBytes {
		drop.add(dropTooLarge)
		return l
	}
	m, ok := parseBaggageMember(raw)
	if !ok {
		drop.add(dropInvalidMember)
		return l
	}
	if i >= 0 {
		l.m[i] = m
	} else {
		l.m = append(l.m, m)
	}
	l.bytes += grow
	return l
}

// baggageKey returns the key of the list-member raw, reading no further
// than the "=" after it.
func baggageKey(raw string) (string, bool) {
	for i := 0; i < len(raw); i++ {
		switch raw[i] {
		case '=':
			key := trimOWS(raw[:i])
			return key, validToken(key)
		case ';', ',':
			return "", false
		}
	}
	return "", false
}

// compactMembers copies the strings of ms into one allocation of their own.
// Members parsed from a large header are substrings of it (or of its copy),
// so without this a small kept member would keep the whole header alive in
// every context, span and cache that holds the Baggage.
func compactMembers(ms []bagMember) {
	n := 0
	for i := range ms {
		n += len(ms[i].key) + len(ms[i].value)
		for _, p := range ms[i].props {
			v, _ := p.Value()
			n += len(p.Key()) + len(v)
		}
	}
	if n == 0 {
		return
	}
	c := copier{buf: make([]byte, 0, n)}
	for i := range ms {
		m := &ms[i]
		m.key, m.value = c.copy(m.key), c.copy(m.value)
		for j, p := range m.props {
			// The parts were valid before the copy, so they still are.
			if v, ok := p.Value(); ok {
				m.props[j], _ = baggage.NewKeyValuePropertyRaw(c.copy(p.Key()), c.copy(v))
			} else {
				m.props[j], _ = baggage.NewKeyProperty(c.copy(p.Key()))
			}
		}
	}
}

// copier hands out strings that share buf, which has room for all of them,
// so it never moves and is never written at a place handed out.
type copier struct{ buf []byte }

func (c *copier) copy(s string) string {
	if s == "" {
		return ""
	}
	start := len(c.buf)
	c.buf = append(c.buf, s...)
	return unsafe.String(&c.buf[start], len(s))
}

// parseBaggageMember parses key OWS "=" OWS value *( OWS ";" OWS property ).
func parseBaggageMember(raw string) (bagMember, bool) {
	kv, rawProps, hasProps := strings.Cut(raw, ";")
	k, v, ok := strings.Cut(kv, "=")
	if !ok {
		return bagMember{}, false
	}
	key := trimOWS(k)
	if !validToken(key) {
		return bagMember{}, false
	}
	value, ok := decodeBaggageValue(trimOWS(v))
	if !ok {
		return bagMember{}, false
	}
	m := bagMember{key: key, value: value, size: len(raw)}
	if hasProps {
		for rawProps != "" {
			var p string
			p, rawProps, _ = strings.Cut(rawProps, ";")
			p = trimOWS(p)
			if p == "" {
				continue
			}
			pk, pv, hasValue := strings.Cut(p, "=")
			pk = trimOWS(pk)
			var prop baggage.Property
			var err error
			if hasValue {
				dv, ok := decodeBaggageValue(trimOWS(pv))
				if !ok {
					return bagMember{}, false
				}
				prop, err = baggage.NewKeyValuePropertyRaw(pk, dv)
			} else {
				prop, err = baggage.NewKeyProperty(pk)
			}
			if err != nil || !validToken(pk) {
				return bagMember{}, false
			}
			m.props = append(m.props, prop)
		}
	}
	return m, true
}

// validToken reports whether s is an RFC 7230 token, the W3C baggage key.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool { return tchar[c] }

// tchar is the RFC 7230 tchar set as a table: keys and session IDs are
// checked byte by byte on every message.
var tchar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range []byte("!#$%&'*+-.^_`|~") {
		t[c] = true
	}
	return t
}()

// isBaggageOctet reports whether c may stand unencoded in a baggage value:
// %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E.
func isBaggageOctet(c byte) bool {
	return c == 0x21 || (0x23 <= c && c <= 0x2B) || (0x2D <= c && c <= 0x3A) ||
		(0x3C <= c && c <= 0x5B) || (0x5D <= c && c <= 0x7E)
}

// octet is isBaggageOctet as a table, for decoding.
var octet = func() (t [256]bool) {
	for c := range 256 {
		t[c] = isBaggageOctet(byte(c))
	}
	return t
}()

// plainOctet marks the bytes Inject writes unencoded: baggage-octets but "%".
// Every value byte is looked up, so it is a table.
var plainOctet = func() (t [256]bool) {
	for c := range 256 {
		t[c] = isBaggageOctet(byte(c)) && c != '%'
	}
	return t
}()

// decodeBaggageValue checks the value grammar and percent-decodes it. Invalid
// UTF-8 after decoding is replaced by U+FFFD, as OpenTelemetry does, so the
// value is always a valid string. It allocates only when the value has a
// percent escape.
func decodeBaggageValue(v string) (string, bool) {
	escapes := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '%' {
			if i+2 >= len(v) {
				return "", false
			}
			if _, ok := unhexAny(v[i+1]); !ok {
				return "", false
			}
			if _, ok := unhexAny(v[i+2]); !ok {
				return "", false
			}
			escapes++
			i += 2
			continue
		}
		if !octet[c] {
			return "", false
		}
	}
	if escapes == 0 {
		return v, true
	}
	out := make([]byte, 0, len(v)-2*escapes)
	for i := 0; i < len(v); i++ {
		if v[i] == '%' {
			h, _ := unhexAny(v[i+1])
			l, _ := unhexAny(v[i+2])
			out = append(out, h<<4|l)
			i += 2
			continue
		}
		out = append(out, v[i])
	}
	if !utf8.Valid(out) {
		return strings.ToValidUTF8(string(out), "\uFFFD"), true
	}
	return string(out), true
}

func unhexAny(c byte) (byte, bool) {
	if 'A' <= c && c <= 'F' {
		return c - 'A' + 10, true
	}
	return unhex(c)
}

// appendBaggageValue percent-encodes v into dst. Every byte that is not a
// baggage-octet is encoded, "%" included, so decoding is exact.
func appendBaggageValue(dst []byte, v string) []byte {
	const upperHex = "0123456789ABCDEF"
	for i := 0; i < len(v); i++ {
		c := v[i]
		if plainOctet[c] {
			dst = append(dst, c)
			continue
		}
		dst = append(dst, '%', upperHex[c>>4], upperHex[c&0x0f])
	}
	return dst
}

func baggageValueLen(v string) int {
	n := len(v)
	for i := 0; i < len(v); i++ {
		if !plainOctet[v[i]] {
			n += 2
		}
	}
	return n
}

// toBaggage builds OpenTelemetry baggage from the parsed members.
func toBaggage(ms []bagMember) baggage.Baggage { return buildBaggage(ms, -1, "") }

// buildBaggage builds OpenTelemetry baggage from ms without ms[skip], plus
// the member session.id=sess when sess is not empty. The limits were applied
// while parsing.
func buildBaggage(ms []bagMember, skip int, sess string) baggage.Baggage {
	var buf [8]baggage.Member
	members := buf[:0]
	for i := range ms {
		if i == skip {
			continue
		}
		bm, err := baggage.NewMemberRaw(ms[i].key, ms[i].value, ms[i].props...)
		if err != nil {
			continue
		}
		members = append(members, bm)
	}
	if sess != "" {
		if bm, err := baggage.NewMemberRaw(BaggageSessionKey, sess); err == nil {
			members = append(members, bm)
		}
	}
	if len(members) == 0 {
		return baggage.Baggage{}
	}
	// The members were each within the limits, but the session member
	// added to them can take the whole past 8192 bytes, and baggage.New
	// then returns nothing at all: drop whole members, largest first,
	// never the session's, until the rest fits.
	b, err := baggage.New(members...)
	for err != nil && len(members) > 1 {
		largest := -1
		for i, m := range members {
			if m.Key() == BaggageSessionKey && sess != "" {
				continue
			}
			if largest < 0 || len(m.String()) > len(members[largest].String()) {
				largest = i
			}
		}
		if largest < 0 {
			break
		}
		members = slices.Delete(members, largest, largest+1)
		b, err = baggage.New(members...)
	}
	return b
}
