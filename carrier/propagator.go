package carrier

import (
	"context"
	"hash/maphash"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/internal/logsafe"
)

// ByteCarrier is implemented by carriers that keep header values as bytes in
// an ordered list, such as Kafka record headers. The Propagator reads and
// writes them directly, without converting every value to a string, and
// writes all of a message's values into one shared buffer.
type ByteCarrier interface {
	propagation.TextMapCarrier
	// Len returns the number of headers.
	Len() int
	// At returns the i-th header. Keys compare case-sensitively.
	At(i int) (key string, value []byte)
	// SetBytes replaces every header named key by one with value. The
	// carrier may keep value; the Propagator never reuses it.
	SetBytes(key string, value []byte)
}

// Propagator carries a journey across a process boundary: W3C traceparent and
// tracestate (Trace Context Level 2), W3C baggage and the session ID. It also
// reads and writes the retry and dead-letter headers for the broker
// packages. It is a propagation.TextMapPropagator, so it can be installed
// globally with otel.SetTextMapPropagator, and then otelhttp and otelgrpc
// carry the session too. A Propagator is safe for concurrent use.
type Propagator struct {
	cfg      config
	drops    *drops
	fields   []string
	allow    map[string]struct{}
	tsCache  *parseCache[*tsEntry]
	bagCache *parseCache[*bagEntry]
	encCache *encCache
	outCache *outCache
}

var _ propagation.TextMapPropagator = (*Propagator)(nil)

// NewPropagator returns a Propagator configured by opts.
func NewPropagator(opts ...Option) *Propagator { return newPropagator(newConfig(opts)) }

func newPropagator(c config) *Propagator {
	p := &Propagator{
		cfg:    c,
		drops:  newDrops(c.mp, c.logger),
		fields: []string{c.names.Traceparent, c.names.Tracestate, c.names.Baggage, c.names.SessionID},
	}
	p.tsCache = newParseCache[*tsEntry]()
	p.bagCache = newParseCache[*bagEntry]()
	p.encCache = &encCache{seed: maphash.MakeSeed()}
	p.outCache = &outCache{seed: maphash.MakeSeed()}
	if c.trust == Untrusted {
		p.allow = make(map[string]struct{}, len(c.allowBaggage)+1)
		for _, k := range c.allowBaggage {
			p.allow[k] = struct{}{}
		}
		p.allow[BaggageSessionKey] = struct{}{} // judged by the session format instead
	}
	return p
}

// Names returns the header names p uses.
func (p *Propagator) Names() Names { return p.cfg.names }

// Trust returns p's trust policy.
func (p *Propagator) Trust() Trust { return p.cfg.trust }

// Fields returns the headers Inject sets.
func (p *Propagator) Fields() []string { return slices.Clone(p.fields) }

// Inject writes the journey in ctx into c: traceparent and tracestate of the
// span context, the baggage that passes the produce-side filter, and the
// session ID, both as its own header and as the baggage member session.id.
// Inject replaces existing values; it never adds a second traceparent. All
// values are written into one buffer.
func (p *Propagator) Inject(ctx context.Context, c propagation.TextMapCarrier) {
	sc := trace.SpanContextFromContext(ctx)
	// Both caches hold only sessions that passed validation, so a hit
	// with the session as found proves it valid; a miss validates it.
	sess := SessionFromContext(ctx)
	bag := baggage.FromContext(ctx)
	id := bagIdentity(bag)
	var enc *bagEnc
	var h uint64
	if id != 0 {
		h = p.encCache.hash(id, sess)
		enc = p.encCache.get(h, id, sess)
	}
	var l2 *levelTwoState
	if sc.IsValid() {
		if s, ok := ctx.Value(levelTwoKey{}).(*levelTwoState); ok && s.traceID == sc.TraceID() {
			l2 = s
		}
	}

	// The same span context, baggage and session are injected again and
	// again when several messages go out under one parent that starts no
	// span of its own (see tracebridge.WithParentBasedSampling, and batches
	// without create spans): then the whole output is reused.
	cacheable := sc.IsValid() && l2 == nil && sc.TraceState().Len() == 0
	if cacheable && enc != nil {
		key := outKey{tid: sc.TraceID(), sid: sc.SpanID(), flags: sc.TraceFlags(), bag: id, sess: sess}
		if o := p.outCache.get(&key); o != nil {
			p.drops.replay(fieldBaggage, &enc.drops)
			buf := o.buf
			if _, ok := c.(ByteCarrier); ok {
				// Byte values are the carrier's to edit or reuse (see
				// ByteCarrier), so each gets its own copy; strings cannot
				// be edited and share the cached one.
				buf = slices.Clone(buf)
			}
			p.write(c, buf, &o.spans, true)
			return
		}
	}
	if sess != "" && !validSession(sess) {
		p.drops.add(fieldSession, dropInvalid)
		sess = ""
		if id != 0 {
			h = p.encCache.hash(id, sess)
			enc = p.encCache.get(h, id, sess)
		}
	}
	var key outKey
	if cacheable && enc != nil {
		key = outKey{tid: sc.TraceID(), sid: sc.SpanID(), flags: sc.TraceFlags(), bag: id, sess: sess}
	}
	var members []baggage.Member
	if enc == nil {
		members = bag.Members()
	}

	// Size everything first so the values share one allocation.
	n := 0
	if sc.IsValid() {
		n += traceparentLen
		n += traceStateLen(sc.TraceState())
		if l2 != nil {
			n += len(l2.full) + 1
		}
	}
	n += len(sess)
	if enc != nil {
		n += len(enc.enc)
	} else {
		if sess != "" {
			n += len(BaggageSessionKey) + 2 + baggageValueLen(sess)
		}
		for _, m := range members {
			n += len(m.Key()) + 2 + baggageValueLen(m.Value())
		}
	}
	buf := make([]byte, 0, n+16)

	var spans [4][2]int // [start,end) of traceparent, tracestate, baggage, session
	if sc.IsValid() {
		buf = appendTraceparent(buf, sc)
		spans[0][1] = len(buf)
		spans[1][0] = len(buf)
		buf = appendTraceState(buf, sc.TraceState(), l2)
		spans[1][1] = len(buf)
	}
	spans[2][0] = len(buf)
	if enc != nil {
		buf = append(buf, enc.enc...)
		p.drops.replay(fieldBaggage, &enc.drops)
	} else {
		store := id != 0 && p.encCache.admit(h) && cacheableBaggage(members)
		sink := dropSink{d: p.drops, f: fieldBaggage}
		buf = p.appendBaggage(buf, members, sess, &sink)
		sink.flush()
		if store {
			p.encCache.put(h, &bagEnc{id: id, bag: bag, sess: sess, enc: slices.Clone(buf[spans[2][0]:]), drops: sink.n})
		}
	}
	spans[2][1] = len(buf)
	spans[3][0] = len(buf)
	buf = append(buf, sess...)
	spans[3][1] = len(buf)

	if key.sid.IsValid() && p.outCache.admit(key.sid) {
		cached := buf
		if _, ok := c.(ByteCarrier); ok {
			cached = slices.Clone(buf) // buf becomes the carrier's
		}
		p.outCache.put(&outEnc{key: key, bag: bag, buf: cached, spans: spans})
	}
	// A tracestate belongs to the traceparent it came with. When a new
	// traceparent replaces an old one and has no tracestate of its own, the
	// old tracestate must not stay behind: it is overwritten with the empty
	// tracestate, which every receiver accepts.
	p.write(c, buf, &spans, sc.IsValid() && spans[1][1] == spans[1][0])
}

// write sets the values Inject built in buf, each at its [start,end) in
// spans (traceparent, tracestate, baggage, session); buf is never written
// again, so values may share its memory. clearState overwrites a stale
// tracestate with the empty one.
func (p *Propagator) write(c propagation.TextMapCarrier, buf []byte, spans *[4][2]int, clearState bool) {
	names := [4]string{p.cfg.names.Traceparent, p.cfg.names.Tracestate, p.cfg.names.Baggage, p.cfg.names.SessionID}
	if bc, ok := c.(ByteCarrier); ok {
		for i, s := range spans {
			if s[1] > s[0] {
				bc.SetBytes(names[i], buf[s[0]:s[1]:s[1]])
			}
		}
		if clearState && hasNonEmpty(bc, names[1]) {
			bc.SetBytes(names[1], []byte{})
		}
		return
	}
	// buf is never written again, so one string can share its memory.
	str := unsafe.String(unsafe.SliceData(buf), len(buf))
	for i, s := range spans {
		if s[1] > s[0] {
			c.Set(names[i], str[s[0]:s[1]])
		}
	}
	if clearState && c.Get(names[1]) != "" {
		c.Set(names[1], "")
	}
}

// hasNonEmpty reports whether c holds a non-empty value for key.
func hasNonEmpty(c ByteCarrier, key string) bool {
	for i := range c.Len() {
		if k, v := c.At(i); k == key && len(v) > 0 {
			return true
		}
	}
	return false
}

func traceStateLen(ts trace.TraceState) int {
	n := 0
	ts.Walk(func(k, v string) bool {
		n += len(k) + len(v) + 2
		return true
	})
	return n
}

// appendTraceState writes ts, then the Level 2 members OpenTelemetry could
// not hold, capped at 32 members in all.
func appendTraceState(dst []byte, ts trace.TraceState, l2 *levelTwoState) []byte {
	start := len(dst)
	count := 0
	ts.Walk(func(k, v string) bool {
		if count > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, k...)
		dst = append(dst, '=')
		dst = append(dst, v...)
		count++
		return true
	})
	if l2 == nil {
		return dst
	}
	if l2.unchanged(ts) {
		// Forwarded as received: same members, same order.
		return append(dst[:start], l2.full...)
	}
	if count+l2.count <= maxTracestateMembers {
		if len(dst) > start {
			dst = append(dst, ',')
		}
		return append(dst, l2.members...)
	}
	// A vendor added members: keep the Level 2 ones that still fit, in
	// order, as truncation from the end would.
	rest := l2.members
	for count < maxTracestateMembers && rest != "" {
		var m string
		m, rest, _ = strings.Cut(rest, ",")
		if len(dst) > start {
			dst = append(dst, ',')
		}
		dst = append(dst, m...)
		count++
	}
	return dst
}

// appendBaggage writes the session first, so it survives any truncation,
// then the members the filter admits, sorted by key so equal baggage gives
// equal bytes. Over 64 members or 8192 bytes, whole members are dropped.
func (p *Propagator) appendBaggage(dst []byte, members []baggage.Member, sess string, drop *dropSink) []byte {
	start := len(dst)
	count := 0
	if sess != "" {
		dst = append(dst, BaggageSessionKey...)
		dst = append(dst, '=')
		dst = appendBaggageValue(dst, sess)
		count++
	}
	if p.markDebug(members, sess) {
		dst = appendDebugMember(dst, sess)
		count++
	}
	// Sort indices, not the members: a Member is large and there are few.
	var idxBuf [16]int
	order := idxBuf[:0]
	for i := range members {
		order = append(order, i)
	}
	if len(order) <= len(idxBuf) {
		for i := 1; i < len(order); i++ {
			for j := i; j > 0 && members[order[j]].Key() < members[order[j-1]].Key(); j-- {
				order[j], order[j-1] = order[j-1], order[j]
			}
		}
	} else {
		slices.SortFunc(order, func(a, b int) int { return strings.Compare(members[a].Key(), members[b].Key()) })
	}
	for _, i := range order {
		m := &members[i]
		if m.Key() == BaggageSessionKey || m.Key() == BaggageDebugKey { // written above, or not at all
			continue
		}
		if !p.cfg.filter(m.Key()) {
			drop.add(dropFiltered)
			continue
		}
		if count >= maxBaggageMembers {
			drop.add(dropTooMany)
			continue
		}
		mark := len(dst)
		if count > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, m.Key()...)
		dst = append(dst, '=')
		dst = appendBaggageValue(dst, m.Value())
		for _, prop := range m.Properties() {
			dst = append(dst, ';')
			dst = append(dst, prop.Key()...)
			if v, ok := prop.Value(); ok {
				dst = append(dst, '=')
				dst = appendBaggageValue(dst, v)
			}
		}
		if len(dst)-start > maxBaggageBytes {
			dst = dst[:mark]
			drop.add(dropTooLarge)
			continue
		}
		count++
	}
	return dst
}

// incoming is what Extract read from a carrier. For a ByteCarrier the
// strings are views of the carrier's bytes (borrowed): Extract may read them,
// and looks them up in its caches without copying, but must own whatever it
// keeps (see ownFields), because the caller may reuse the message's memory
// afterwards.
type incoming struct {
	traceparent      string
	traceparentBytes []byte
	traceparents     int
	session          string
	borrowed         bool
}

// fieldLists holds the tracestate and baggage fields of a message. They start
// in arrays on Extract's frame. Escape analysis does not tell a struct's
// fields apart, and incoming's strings escape (into caches and contexts), so
// the lists live in a struct of their own, passed by value or by a pointer
// that is never stored, to stay on the stack.
type fieldLists struct {
	tracestate, baggage []string
	tsOwned, bagOwned   bool
}

// own returns s in memory that Extract may keep.
func (in *incoming) own(s string) string {
	if in.borrowed {
		return strings.Clone(s)
	}
	return s
}

// ownFields copies the tracestate (ts) and baggage (bag) fields out of a
// borrowed carrier. A message that misses the cache usually misses it for
// both, so they share one allocation. The copy is never written again,
// which is what lets the strings share it. Only fields of at most
// maxCachedLen bytes in all are copied: those are the ones a cache may
// keep as its key, and what is kept from them can pin no more than that.
// Larger ones are parsed where they lie, and what is kept of them is copied
// on its own (see tsList.join and compactMembers), so a small member never
// keeps a large header alive.
func (in *fieldLists) ownFields(borrowed, ts, bag bool) {
	if !borrowed {
		return
	}
	ts = ts && !in.tsOwned && fieldsLen(in.tracestate) <= maxCachedLen
	bag = bag && !in.bagOwned && fieldsLen(in.baggage) <= maxCachedLen
	n := 0
	if ts {
		n += fieldsLen(in.tracestate)
	}
	if bag {
		n += fieldsLen(in.baggage)
	}
	in.tsOwned = in.tsOwned || ts
	in.bagOwned = in.bagOwned || bag
	if n == 0 {
		return
	}
	b := make([]byte, n)
	all := unsafe.String(unsafe.SliceData(b), n)
	off := 0
	if ts {
		for i, f := range in.tracestate {
			off += copy(b[off:], f)
			in.tracestate[i] = all[off-len(f) : off]
		}
	}
	if bag {
		for i, f := range in.baggage {
			off += copy(b[off:], f)
			in.baggage[i] = all[off-len(f) : off]
		}
	}
}

func (p *Propagator) read(c propagation.TextMapCarrier, l fieldLists) (in incoming, _ fieldLists) {
	names := &p.cfg.names
	switch c := c.(type) {
	case ByteCarrier:
		return p.readBytes(c, l)
	case propagation.ValuesGetter:
		tp := c.Values(names.Traceparent)
		in.traceparents = len(tp)
		if len(tp) > 0 {
			in.traceparent = tp[0]
		}
		l.tracestate = append(l.tracestate, c.Values(names.Tracestate)...)
		l.baggage = append(l.baggage, c.Values(names.Baggage)...)
		if s := c.Values(names.SessionID); len(s) > 0 {
			in.session = s[0]
		}
	default:
		if in.traceparent = c.Get(names.Traceparent); in.traceparent != "" {
			in.traceparents = 1
		}
		if v := c.Get(names.Tracestate); v != "" {
			l.tracestate = append(l.tracestate, v)
		}
		if v := c.Get(names.Baggage); v != "" {
			l.baggage = append(l.baggage, v)
		}
		in.session = c.Get(names.SessionID)
	}
	return in, l
}

// readBytes scans a byte carrier once, without copying anything.
func (p *Propagator) readBytes(c ByteCarrier, l fieldLists) (in incoming, _ fieldLists) {
	names := &p.cfg.names
	in.borrowed = true
	view := func(v []byte) string { return unsafe.String(unsafe.SliceData(v), len(v)) }
	sessionSeen := false
	for i := range c.Len() {
		k, v := c.At(i)
		switch k {
		case names.Traceparent:
			if in.traceparents == 0 {
				in.traceparentBytes = v
			}
			in.traceparents++
		// Every field is read, as from any other carrier: the parsers stop
		// early on their own (the 33rd tracestate member, the baggage
		// limits), and a field left out would change what the list means.
		case names.Tracestate:
			l.tracestate = append(l.tracestate, view(v))
		case names.Baggage:
			l.baggage = append(l.baggage, view(v))
		case names.SessionID:
			if !sessionSeen {
				in.session = view(v)
				sessionSeen = true
			}
		}
	}
	return in, l
}

// remoteLinkKey holds the creation context of untrusted input.
type remoteLinkKey struct{}

// levelTwoKey holds tracestate members OpenTelemetry-Go cannot represent.
type levelTwoKey struct{}

// RemoteLink returns the span context that an Untrusted propagator extracted.
// Untrusted input must not become a parent; a span that starts under ctx
// should link to it instead. tracebridge's consumers and HTTP middleware do.
func RemoteLink(ctx context.Context) (trace.SpanContext, bool) {
	sc, ok := ctx.Value(remoteLinkKey{}).(trace.SpanContext)
	return sc, ok
}

// Extract reads the journey from c into a copy of ctx. A valid traceparent
// becomes the remote parent (Trusted) or a RemoteLink (Untrusted); anything
// invalid is dropped, counted and logged once, and the caller simply starts a
// new trace. Extract never fails and never panics on bad input.
func (p *Propagator) Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	var tsBuf, bagBuf [4]string
	in, l := p.read(c, fieldLists{tracestate: tsBuf[:0], baggage: bagBuf[:0]})
	return p.extract(ctx, &in, &l)
}

func (p *Propagator) extract(ctx context.Context, in *incoming, l *fieldLists) context.Context {
	var sc trace.SpanContext
	valid := false
	switch {
	case in.traceparents > 1:
		p.drops.add(fieldTraceparent, dropDuplicate)
	case in.traceparentBytes != nil:
		if sc, valid = parseTraceparent(in.traceparentBytes); !valid {
			p.drops.add(fieldTraceparent, dropInvalid)
		}
	case in.traceparent != "":
		if sc, valid = parseTraceparent(in.traceparent); !valid {
			p.drops.add(fieldTraceparent, dropInvalid)
		}
	}
	if valid {
		if len(l.tracestate) > 0 {
			e := p.traceState(l, in.borrowed)
			if e.ts.Len() > 0 {
				sc = sc.WithTraceState(e.ts)
			}
			if e.extra != "" {
				ctx = context.WithValue(ctx, levelTwoKey{}, &levelTwoState{
					traceID: sc.TraceID(), members: e.extra, count: e.count, kept: e.kept, full: e.full})
			}
		}
		if p.cfg.trust == Trusted {
			ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
		} else {
			ctx = context.WithValue(ctx, remoteLinkKey{}, sc)
		}
	} else if len(l.tracestate) > 0 {
		p.drops.add(fieldTracestate, dropOrphan)
	}
	return p.extractBaggage(ctx, in, l)
}

// traceState decodes the tracestate fields of in. A single field, the usual
// case, is looked up in the cache first. On a miss the entry is built on the
// stack and reaches the heap only when the cache admits it: a value seen for
// the first time is usually never seen again. A tracestate that cannot be
// parsed is discarded whole (Level 2), counted once with the reason.
func (p *Propagator) traceState(in *fieldLists, borrowed bool) tsEntry {
	single := len(in.tracestate) == 1 && len(in.tracestate[0]) <= maxCachedLen
	var h uint64
	store := false
	if single {
		h = p.tsCache.hash(in.tracestate[0])
		if e, ok := p.tsCache.get(in.tracestate[0], h); ok {
			p.drops.replay(fieldTracestate, &e.drops)
			return *e
		}
		store = p.tsCache.admit(h)
	}
	// The baggage is copied along only while it is small, because a cached
	// tracestate keeps the whole copy alive.
	in.ownFields(borrowed, true, fieldsLen(in.baggage) <= maxCachedLen)
	var buf [maxTracestateMembers]tsMember
	l, reason, ok := parseTracestate(tsList{m: buf[:0]}, in.tracestate)
	var e tsEntry
	if !ok {
		e.drops[reason]++
		p.drops.add(fieldTracestate, reason)
	} else if len(l.m) > 0 {
		joined := ""
		if n := l.encodedLen(); len(in.tracestate) == 1 && n == len(in.tracestate[0]) && (!borrowed || in.tsOwned) {
			// Already normal, so no larger than what is kept, and the
			// message's own: no copy.
			joined = in.tracestate[0]
		} else {
			joined = l.join(make([]byte, 0, n))
		}
		e.ts, e.extra, e.kept = l.toTraceState(joined)
		e.full = joined
		if e.extra != "" {
			e.count = strings.Count(e.extra, ",") + 1
		}
	}
	if store {
		stored := new(tsEntry)
		*stored = e
		p.tsCache.store(in.tracestate[0], h, stored)
	}
	return e
}

func fieldsLen(fields []string) int {
	n := 0
	for _, f := range fields {
		n += len(f)
	}
	return n
}

// baggageMembers decodes the baggage fields of in, from the cache when a
// single field was seen before; the members must not be modified, as they
// may be the cache's. On a miss they are parsed into scratch, and only an
// entry the cache admits is copied to the heap, with its Baggage built once
// for every later message with these bytes; otherwise bag is empty and the
// caller builds it. Members and Baggage are separate results so that the
// Baggage, which escapes into the context, does not drag scratch along.
func (p *Propagator) baggageMembers(in *fieldLists, borrowed bool, scratch []bagMember) (members []bagMember, bag baggage.Baggage) {
	single := len(in.baggage) == 1 && len(in.baggage[0]) <= maxCachedLen
	var h uint64
	store := false
	if single {
		h = p.bagCache.hash(in.baggage[0])
		if e, ok := p.bagCache.get(in.baggage[0], h); ok {
			p.drops.replay(fieldBaggage, &e.drops)
			return e.members, e.bag
		}
		store = p.bagCache.admit(h)
	}
	in.ownFields(borrowed, false, true)
	if single && hasSessionPrefix(in.baggage[0]) {
		if members, bag, size, ok := p.baggageAfterSession(in.baggage[0], scratch); ok {
			if store {
				stored := &bagEntry{members: slices.Clone(members), bytes: size, bag: bag}
				p.bagCache.store(in.baggage[0], h, stored)
			}
			return members, bag
		}
	}
	sink := dropSink{d: p.drops, f: fieldBaggage}
	l := p.parseBaggage(in.baggage, scratch, &sink)
	sink.flush()
	if !store {
		if fieldsLen(in.baggage) > maxCachedLen {
			// Parsed where it lies, in a header too large to copy
			// whole (see ownFields): what is kept gets a copy of its own.
			compactMembers(l.m)
		}
		return l.m, baggage.Baggage{}
	}
	stored := &bagEntry{members: slices.Clone(l.m), bytes: l.bytes, drops: sink.n}
	stored.bag = toBaggage(stored.members)
	p.bagCache.store(in.baggage[0], h, stored)
	return stored.members, stored.bag
}

func (p *Propagator) parseBaggage(fields []string, scratch []bagMember, sink *dropSink) bagList {
	var keep func(string) bool
	if p.allow != nil {
		keep = p.allowed
	}
	return parseBaggage(bagList{m: scratch}, fields, keep, sink)
}

// hasSessionPrefix reports whether field starts with the session member, as
// the baggage that Inject writes does.
func hasSessionPrefix(field string) bool {
	return len(field) > len(BaggageSessionKey) && field[len(BaggageSessionKey)] == '=' &&
		field[:len(BaggageSessionKey)] == BaggageSessionKey
}

// baggageAfterSession decodes a baggage field that starts with the session
// member. Between journeys that share their baggage (tenant, feature flags)
// only the session differs, so every such message misses the cache although
// the rest of its baggage is the same. The rest is looked up (and admitted)
// on its own, and the session added to its cached Baggage: one map copy
// instead of validating and building every member again. It declines (ok is
// false) unless the result is exactly what decoding the whole field gives:
// a session member without properties, and a rest that decodes without
// drops, without a session member of its own and within the limits with the
// session added. field must be owned; size is the decoded bytes.
func (p *Propagator) baggageAfterSession(field string, scratch []bagMember) (members []bagMember, bag baggage.Baggage, size int, ok bool) {
	first, rest, _ := strings.Cut(field, ",")
	if rest == "" || len(rest) > maxCachedLen {
		return nil, baggage.Baggage{}, 0, false
	}
	// The rest first: when it is new, the whole field is decoded anyway.
	h := p.bagCache.hash(rest)
	e, hit := p.bagCache.get(rest, h)
	if !hit && !p.bagCache.admit(h) {
		return nil, baggage.Baggage{}, 0, false
	}
	first = trimOWS(first)
	if strings.IndexByte(first, ';') >= 0 {
		return nil, baggage.Baggage{}, 0, false
	}
	sm, valid := parseBaggageMember(first)
	if !valid || sm.key != BaggageSessionKey {
		return nil, baggage.Baggage{}, 0, false
	}
	if !hit {
		// Decoded for the cache, not for a message: its drops are
		// recorded, not reported.
		var sink dropSink
		l := p.parseBaggage([]string{rest}, nil, &sink)
		e = &bagEntry{members: l.m, bytes: l.bytes, drops: sink.n}
		e.bag = toBaggage(e.members)
		p.bagCache.store(rest, h, e)
	}
	if e.drops.any() || len(e.members) == 0 || len(e.members) >= maxBaggageMembers ||
		e.bytes+1+sm.size > maxBaggageBytes || e.bag.Len() != len(e.members) {
		return nil, baggage.Baggage{}, 0, false
	}
	for i := range e.members {
		if e.members[i].key == BaggageSessionKey {
			return nil, baggage.Baggage{}, 0, false
		}
	}
	bm, err := baggage.NewMemberRaw(sm.key, sm.value)
	if err != nil {
		return nil, baggage.Baggage{}, 0, false
	}
	if bag, err = e.bag.SetMember(bm); err != nil {
		return nil, baggage.Baggage{}, 0, false
	}
	members = append(append(scratch[:0], sm), e.members...)
	return members, bag, e.bytes + 1 + sm.size, true
}

func (p *Propagator) sessionOK(id string) bool {
	return validSession(id) && (p.cfg.trust == Trusted || p.cfg.sessionFormat(id))
}

func (p *Propagator) extractBaggage(ctx context.Context, in *incoming, l *fieldLists) context.Context {
	headerOK := false
	if in.session != "" {
		if p.sessionOK(in.session) {
			headerOK = true
		} else if !validSession(in.session) {
			p.drops.add(fieldSession, dropInvalid)
		} else {
			p.drops.add(fieldSession, dropUntrusted)
		}
	}
	if len(l.baggage) == 0 && in.session == "" {
		return ctx
	}
	var scratch [8]bagMember
	var members []bagMember
	var bag baggage.Baggage
	if len(l.baggage) > 0 {
		members, bag = p.baggageMembers(l, in.borrowed, scratch[:0])
	}
	// The session.id member and the session header must agree; the header
	// wins, and the member is the fallback when the header is missing or
	// invalid: a bad header must not cost a session that is valid on the wire.
	sess := ""
	changed := false
	member := -1
	for i := range members {
		if members[i].key == BaggageSessionKey {
			member = i
			break
		}
	}
	switch {
	case member >= 0 && headerOK && members[member].value == in.session:
		sess = members[member].value // owned, unlike a borrowed header
	case member >= 0 && !headerOK && p.sessionOK(members[member].value):
		sess = members[member].value
	case member >= 0:
		if !headerOK {
			p.drops.add(fieldSession, dropInvalid)
		}
		changed = true
		if headerOK {
			sess = in.own(in.session)
		}
	case headerOK:
		changed = true
		sess = in.own(in.session)
	}
	switch {
	case changed:
		bag = buildBaggage(members, member, sess)
	case bag.Len() == 0 && len(members) > 0: // not from the cache
		bag = buildBaggage(members, -1, "")
	}
	if bag.Len() == 0 && sess == "" {
		return ctx
	}
	ctx = baggage.ContextWithBaggage(ctx, bag)
	// A session set explicitly further up would shadow the message's own.
	// A message without a session leaves it alone, as it does when it
	// carries no headers at all.
	if sess != "" && ctx.Value(sessionKey{}) != nil {
		ctx = context.WithValue(ctx, sessionKey{}, &session{id: sess})
	}
	return ctx
}

func (p *Propagator) allowed(key string) bool {
	if key == BaggageDebugKey {
		return false // only trusted input may turn on debug capture, whatever the allow-list
	}
	_, ok := p.allow[key]
	return ok
}

// Retry is the retry metadata of a republished message.
type Retry struct {
	// Attempt is the number of the attempt this message is for, counted
	// from 1. Zero means the header was absent.
	Attempt int
	// Previous names the process span of the failed attempt before it.
	Previous trace.SpanContext
}

// InjectRetry writes the retry-attempt and retry-previous headers. An attempt
// below 2 writes nothing: absence means attempt 1.
func (p *Propagator) InjectRetry(c propagation.TextMapCarrier, r Retry) {
	if r.Attempt < 2 {
		return
	}
	c.Set(p.cfg.names.RetryAttempt, strconv.Itoa(r.Attempt))
	if r.Previous.IsValid() {
		c.Set(p.cfg.names.RetryPrevious, FormatTraceparent(r.Previous))
	}
}

// ExtractRetry reads the retry headers. A malformed attempt number or
// previous traceparent is dropped and counted, never an error.
func (p *Propagator) ExtractRetry(c propagation.TextMapCarrier) Retry {
	var r Retry
	if v := c.Get(p.cfg.names.RetryAttempt); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 2 && n < 1<<30 {
			r.Attempt = n
		} else {
			p.drops.add(fieldRetry, dropInvalid)
		}
	}
	if v := c.Get(p.cfg.names.RetryPrevious); v != "" {
		if sc, ok := parseTraceparent(v); ok {
			r.Previous = sc
		} else {
			p.drops.add(fieldRetry, dropInvalid)
		}
	}
	return r
}

// DeadLetter describes why a message was moved to its dead-letter
// destination.
type DeadLetter struct {
	Reason   string // the last error, truncated to one line
	Attempts int    // how many attempts were made
	Source   string // the original destination
}

// maxReasonLen caps the dead-letter-reason header.
const maxReasonLen = 512

// InjectDeadLetter writes the dead-letter-* headers. The reason is cut to
// one line of at most 512 bytes, with control characters replaced, because
// headers are often logged and some brokers reject them otherwise.
func (p *Propagator) InjectDeadLetter(c propagation.TextMapCarrier, d DeadLetter) {
	c.Set(p.cfg.names.DeadLetterReason, oneLine(d.Reason, maxReasonLen))
	c.Set(p.cfg.names.DeadLetterAttempts, strconv.Itoa(d.Attempts))
	c.Set(p.cfg.names.DeadLetterSource, oneLine(d.Source, maxReasonLen))
}

// ExtractDeadLetter reads the dead-letter-* headers; ok is false when the
// message carries none.
func (p *Propagator) ExtractDeadLetter(c propagation.TextMapCarrier) (d DeadLetter, ok bool) {
	// Whoever inspects dead letters logs these: one safe line, whoever wrote them.
	d.Reason = oneLine(c.Get(p.cfg.names.DeadLetterReason), maxReasonLen)
	d.Source = oneLine(c.Get(p.cfg.names.DeadLetterSource), maxReasonLen)
	d.Attempts, _ = strconv.Atoi(c.Get(p.cfg.names.DeadLetterAttempts))
	return d, d.Reason != "" || d.Source != "" || d.Attempts != 0
}

func oneLine(s string, limit int) string {
	if len(s) > limit {
		s = s[:limit]
		for len(s) > 0 && s[len(s)-1]&0xC0 == 0x80 { // do not split a UTF-8 sequence
			s = s[:len(s)-1]
		}
		if len(s) > 0 && s[len(s)-1] >= 0xC0 {
			s = s[:len(s)-1]
		}
	}
	return strings.Map(func(r rune) rune {
		if logsafe.Unsafe(r) {
			return ' '
		}
		return r
	}, s)
}
