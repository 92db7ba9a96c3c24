package carrier_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tracebridge/tracebridge/carrier"
)

// sessionSource is one place a client can put its session.
type sessionSource struct {
	name   string
	enable carrier.MiddlewareOption // nil: X-Session-ID, the default
	put    func(r *http.Request, v string)
	bearer bool
}

func sessionSources() []sessionSource {
	return []sessionSource{
		{"header", nil, func(r *http.Request, v string) { r.Header.Set("X-Session-ID", v) }, false},
		{"correlation header", carrier.WithSessionCorrelationID(), func(r *http.Request, v string) { r.Header.Set("X-Correlation-ID", v) }, false},
		// Raw, because http.Request.AddCookie drops the bytes a forger sends.
		{"cookie", carrier.WithSessionCookie("sid"), func(r *http.Request, v string) { r.Header.Add("Cookie", "sid="+v) }, false},
		{"query", carrier.WithSessionQuery("session"), func(r *http.Request, v string) { r.URL.RawQuery = "session=" + url.QueryEscape(v) }, false},
		{"bearer", carrier.WithSessionBearer(), func(r *http.Request, v string) { r.Header.Set("Authorization", "Bearer "+v) }, true},
		{"propagator header", carrier.WithPropagatedSession(), func(r *http.Request, v string) { r.Header.Set("session-id", v) }, false},
		{"propagator baggage", carrier.WithPropagatedSession(), func(r *http.Request, v string) {
			r.Header.Set("baggage", "session.id="+url.PathEscape(v))
		}, false},
	}
}

// edgeMode is a trust policy and the verification configured on top.
type edgeMode struct {
	trust            carrier.Trust
	signer, verifier bool
}

func (m edgeMode) String() string {
	v := "no verification"
	switch {
	case m.signer && m.verifier:
		v = "MAC and verifier"
	case m.signer:
		v = "MAC"
	case m.verifier:
		v = "verifier"
	}
	return m.trust.String() + ", " + v
}

func edgeModes() []edgeMode {
	var ms []edgeMode
	for _, tr := range []carrier.Trust{carrier.Trusted, carrier.Untrusted} {
		for _, sv := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
			ms = append(ms, edgeMode{tr, sv[0], sv[1]})
		}
	}
	return ms
}

// newModeRig builds an edge for mode that reads src. Its verifier hook
// accepts the sessions the application has seen (rig.known), as a lookup
// in a session store would, and fails the test if it is ever asked about
// an ID that is not a valid session ID.
func newModeRig(t *testing.T, mode edgeMode, src sessionSource, signer *carrier.SessionSigner) *edgeRig {
	t.Helper()
	opts := []carrier.MiddlewareOption{carrier.WithPropagator(carrier.NewPropagator(carrier.WithTrust(mode.trust))), src.enable}
	if mode.signer {
		opts = append(opts, carrier.WithSessionSigner(signer))
	}
	var rig *edgeRig
	if mode.verifier {
		opts = append(opts, carrier.WithSessionVerifier(func(r *http.Request, id string) bool {
			if err := carrier.ValidateSessionID(id); err != nil {
				t.Errorf("verifier called with an invalid ID: %v", err)
			}
			_, ok := rig.known.Load(id)
			return ok
		}))
	}
	rig = newEdgeRig(t, opts...)
	return rig
}

// TestMiddlewareSessionSources is the table of every session source under
// both trust policies, without verification, with the MAC, with a verifier
// hook and with both, against a session the edge issued and against
// forgeries. A session is kept only if its source is configured and it
// passes every check: valid, and verified when verification is configured
// (the untrusted edge always verifies, with a per-process key by default).
// A trusted edge without verification accepts any valid ID, except from a
// bearer token, which may be a credential. A rejected value starts a new
// session without session.previous_id and never reaches the spans, the log
// line, the handler's baggage or the response.
func TestMiddlewareSessionSources(t *testing.T) {
	signer := testSigner(t)
	other, err := carrier.NewSessionSigner([]byte("another key, another system, 32b"))
	if err != nil {
		t.Fatal(err)
	}
	type value struct {
		name string
		make func(issued string) string
		// validShape: a well-formed ID that only verification can refuse.
		validShape bool
		issued     bool
	}
	values := []value{
		{"issued by the edge", func(s string) string { return s }, true, true},
		{"wrong MAC", func(string) string { return other.NewID() }, true, false},
		{"MAC of another session", func(s string) string {
			dot := strings.LastIndexByte(s, '.')
			if dot < 0 { // an edge that does not sign: an unissued ID of the same shape
				return carrier.NewSessionID()
			}
			return carrier.NewSessionID() + s[dot:]
		}, true, false},
		{"truncated", func(s string) string { return s[:len(s)-1] }, true, false},
		{"other user's unissued UUID", func(string) string { return carrier.NewSessionID() }, true, false},
		{"129 bytes", func(string) string { return strings.Repeat("a", 129) }, false, false},
		{"control characters", func(s string) string { return s[:8] + "\x01\x7f" }, false, false},
		{"separator", func(s string) string { return s[:8] + "/" + s[9:] }, false, false},
		{"1000x oversized", func(string) string { return strings.Repeat("s", 1000*carrier.MaxSessionIDLen) }, false, false},
	}
	for _, mode := range edgeModes() {
		for _, src := range sessionSources() {
			for _, val := range values {
				t.Run(mode.String()+"/"+src.name+"/"+val.name, func(t *testing.T) {
					rig := newModeRig(t, mode, src, signer)
					issued := rig.issue(t)
					v := val.make(issued)
					verifies := mode.trust == carrier.Untrusted || mode.signer || mode.verifier
					want := val.issued || (val.validShape && !verifies)
					if src.bearer && !verifies {
						want = false // a bearer token must verify
					}
					req := httptest.NewRequest("GET", "/", nil)
					src.put(req, v)
					seen, w := rig.do(t, req)
					_, started := sessionStart(rig.lastSpan(t))
					if want {
						if seen != v || started {
							t.Fatalf("session %.60q not kept: handler saw %q, session.start %v", v, seen, started)
						}
						if got := w.Header().Get("X-Session-ID"); got != v {
							t.Fatalf("response session %q, want %q", got, v)
						}
						return
					}
					if seen == v || !started {
						t.Fatalf("session %.60q kept (handler saw %.60q, session.start %v)", v, seen, started)
					}
					if carrier.ValidateSessionID(seen) != nil {
						t.Fatalf("new session %q is invalid", seen)
					}
					if mode.signer && !signer.Verify(seen) {
						t.Fatalf("new session %q is not signed with the configured key", seen)
					}
					if hasAttr(rig.lastSpan(t), "session.previous_id") {
						t.Fatal("the rejected session became session.previous_id")
					}
					if where := rig.leaks(v, w); len(where) > 0 {
						t.Fatalf("rejected session %.60q reached %v", v, where)
					}
				})
			}
		}
	}
}

// TestMiddlewareIgnoresSourcesNotConfigured: every source is off until
// configured. An edge with every other source on (and a key, so a signed
// session would verify) ignores a valid, signed session sent through the
// one that is off.
func TestMiddlewareIgnoresSourcesNotConfigured(t *testing.T) {
	signer := testSigner(t)
	for _, off := range sessionSources() {
		for _, trust := range []carrier.Trust{carrier.Trusted, carrier.Untrusted} {
			t.Run(off.name+"/"+trust.String(), func(t *testing.T) {
				opts := []carrier.MiddlewareOption{carrier.WithSessionSigner(signer),
					carrier.WithPropagator(carrier.NewPropagator(carrier.WithTrust(trust)))}
				if off.enable == nil {
					opts = append(opts, carrier.WithSessionHeaders("X-Other-Session"))
				}
				for _, on := range sessionSources() {
					if on.enable != nil && on.name != off.name && !(strings.HasPrefix(off.name, "propagator") && strings.HasPrefix(on.name, "propagator")) {
						opts = append(opts, on.enable)
					}
				}
				rig := newEdgeRig(t, opts...)
				v := signer.NewID()
				req := httptest.NewRequest("GET", "/", nil)
				off.put(req, v)
				seen, w := rig.do(t, req)
				if seen == v {
					t.Fatalf("session taken from %s, which is not configured", off.name)
				}
				if where := rig.leaks(v, w); len(where) > 0 {
					t.Fatalf("unread session reached %v", where)
				}
			})
		}
	}
}

// TestMiddlewareSourceOrder: the first source whose ID passes wins; a
// rejected one earlier in the order does not hide a good one later.
func TestMiddlewareSourceOrder(t *testing.T) {
	signer := testSigner(t)
	rig := newEdgeRig(t, carrier.WithSessionSigner(signer), carrier.WithSessionCorrelationID(),
		carrier.WithSessionCookie("sid"), carrier.WithSessionBearer())
	a, b := signer.NewID(), signer.NewID()
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Session-ID", carrier.NewSessionID()) // forged
	req.Header.Set("X-Correlation-ID", a)
	req.Header.Set("Authorization", "Bearer "+b)
	if seen, _ := rig.do(t, req); seen != a {
		t.Fatalf("session %q, want the correlation header's %q", seen, a)
	}
	req = httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Authorization", "bearer   "+b) // scheme is case-insensitive
	if seen, _ := rig.do(t, req); seen != b {
		t.Fatalf("session %q, want the bearer token's %q", seen, b)
	}
}

// TestSessionSigner: IDs it issues are valid session IDs, usable as bearer
// tokens, unique, and verify; rotation keeps old sessions; keys shorter
// than MinSessionKeyLen are refused.
func TestSessionSigner(t *testing.T) {
	oldKey, newKey := []byte("old key, at least sixteen bytes."), []byte("new key, at least sixteen bytes.")
	old, err := carrier.NewSessionSigner(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := carrier.NewSessionSigner(newKey, oldKey)
	if err != nil {
		t.Fatal(err)
	}
	fresh, _ := carrier.NewSessionSigner(newKey)
	seen := map[string]bool{}
	for range 1000 {
		id := old.NewID()
		if err := carrier.ValidateSessionID(id); err != nil || seen[id] {
			t.Fatalf("NewID %q: valid %v, duplicate %v", id, err, seen[id])
		}
		seen[id] = true
		for _, c := range id { // RFC 6750 b64token, minus '/', '=' (session separators)
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-._~+", c)) {
				t.Fatalf("NewID %q holds %q, not usable as a bearer token", id, c)
			}
		}
		if !old.Verify(id) || !rotated.Verify(id) || fresh.Verify(id) {
			t.Fatalf("%q: old %v, rotated %v (both want true), fresh %v (want false)", id, old.Verify(id), rotated.Verify(id), fresh.Verify(id))
		}
		// Flip each character of the MAC: none may verify.
		dot := strings.LastIndexByte(id, '.')
		for i := dot + 1; i < len(id); i++ {
			b := []byte(id)
			b[i] ^= 0x01
			if old.Verify(string(b)) {
				t.Fatalf("altered ID %q verifies", b)
			}
		}
	}
	if !fresh.Verify(rotated.NewID()) {
		t.Fatal("the rotated signer does not sign with the new key")
	}
	for _, bad := range [][]byte{nil, []byte("short"), make([]byte, carrier.MinSessionKeyLen-1)} {
		if _, err := carrier.NewSessionSigner(bad); err == nil {
			t.Fatalf("key of %d bytes accepted", len(bad))
		}
		if _, err := carrier.NewSessionSigner(newKey, bad); err == nil {
			t.Fatalf("previous key of %d bytes accepted", len(bad))
		}
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	s, _ := carrier.NewSessionSigner(key)
	id := s.NewID()
	key[0] = 'X' // the signer keeps its own copy
	if !s.Verify(id) {
		t.Fatal("signer changed with the caller's key slice")
	}
}

// TestMiddlewareUntrustedDefaultKeyIsPerEdge: without a key, an untrusted
// edge signs with a random one of its own, so a session one edge issued
// does not verify at another (another process, or a restart): configure a
// shared key for edges with several instances.
func TestMiddlewareUntrustedDefaultKeyIsPerEdge(t *testing.T) {
	a, b := newEdgeRig(t), newEdgeRig(t)
	id := a.issue(t)
	for name, rig := range map[string]*edgeRig{"same edge": a, "other edge": b} {
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("X-Session-ID", id)
		seen, _ := rig.do(t, req)
		if (seen == id) != (name == "same edge") {
			t.Fatalf("%s: session %q kept %v", name, id, seen == id)
		}
	}
}

// TestMiddlewareOversizedSourcesStayCheap: every source carrying a value
// 1000 times the longest session ID (128 KB each, on a real server)
// costs work linear in its size: ten times the input may cost at most a
// generous multiple of ten times the time, and each request stays far
// under a second even on a loaded machine under -race.
func TestMiddlewareOversizedSourcesStayCheap(t *testing.T) {
	signer := testSigner(t)
	verifierCalls := 0
	var mu sync.Mutex
	opts := []carrier.MiddlewareOption{carrier.WithSessionSigner(signer), carrier.WithSessionVerifier(func(*http.Request, string) bool {
		mu.Lock()
		verifierCalls++
		mu.Unlock()
		return true
	})}
	for _, s := range sessionSources() {
		if s.enable != nil {
			opts = append(opts, s.enable)
		}
	}
	rig := newEdgeRig(t, opts...)
	srv := httptest.NewServer(rig.h)
	t.Cleanup(srv.Close)
	client := srv.Client()
	send := func(size int) time.Duration {
		v := strings.Repeat("s", size)
		req, _ := http.NewRequest("GET", srv.URL+"/?session="+v, nil)
		for _, s := range sessionSources() {
			if s.name != "query" {
				s.put(req, v)
			}
		}
		start := time.Now()
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("request with %d-byte sources: %v", size, err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %s", res.Status)
		}
		if strings.Contains(res.Header.Get("X-Session-ID"), "ssss") {
			t.Fatal("oversized session echoed")
		}
		return time.Since(start)
	}
	best := func(size int) time.Duration {
		b := time.Hour
		for range 5 {
			b = min(b, send(size))
		}
		return b
	}
	small, large := best(100*carrier.MaxSessionIDLen), best(1000*carrier.MaxSessionIDLen)
	t.Logf("best of 5: %d-byte sources %v, %d-byte sources %v (ratio %.1f)", 100*carrier.MaxSessionIDLen, small, 1000*carrier.MaxSessionIDLen, large, float64(large)/float64(small))
	if large > time.Second {
		t.Fatalf("a request with 1000x oversized sources took %v", large)
	}
	if large > 40*small+20*time.Millisecond {
		t.Fatalf("10x the input took %v against %v: not linear", large, small)
	}
	if verifierCalls != 0 {
		t.Fatalf("verifier called %d times with oversized IDs", verifierCalls)
	}
}

// TestMiddlewareConcurrentClientsKeepTheirSessions: clients hammering one
// edge at once each keep the session it issued them, and never see
// another's.
func TestMiddlewareConcurrentClientsKeepTheirSessions(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	h := carrier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got[carrier.SessionFromContext(r.Context())]++
		mu.Unlock()
	}))
	const clients, requests = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Go(func() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
			id := w.Header().Get("X-Session-ID")
			for range requests {
				req := httptest.NewRequest("GET", "/", nil)
				req.Header.Set("X-Session-ID", id)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Header().Get("X-Session-ID") != id {
					errs <- fmt.Errorf("client %s got %s", id, w.Header().Get("X-Session-ID"))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(got) != clients {
		t.Fatalf("%d sessions for %d clients", len(got), clients)
	}
	for id, n := range got {
		if n != requests+1 {
			t.Fatalf("session %s handled %d times, want %d", id, n, requests+1)
		}
	}
}

// TestMiddlewareCountsRejectedSessions: a rejected session is counted in
// the dropped-content metric (malformed as invalid, unverified as
// untrusted), as the README says; a request without one counts nothing.
func TestMiddlewareCountsRejectedSessions(t *testing.T) {
	prop, drops := newProp(t, carrier.WithTrust(carrier.Untrusted))
	rig := newEdgeRig(t, carrier.WithPropagator(prop), carrier.WithSessionCookie("sid"))
	rig.issue(t)
	if got := drops.counts(t); len(got) != 0 {
		t.Fatalf("a request without a session counted drops: %v", got)
	}
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Session-ID", carrier.NewSessionID()) // unissued
	req.Header.Add("Cookie", "sid=a/b")                    // a separator: no session ID
	rig.do(t, req)
	want := map[string]int64{"session-id/untrusted": 1, "session-id/invalid": 1}
	if got := drops.counts(t); !equalCounts(got, want) {
		t.Fatalf("drops %v, want %v", got, want)
	}
}
