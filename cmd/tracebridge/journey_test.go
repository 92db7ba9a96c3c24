package main

// The CLI is tested on what users point it at: the demo's own OTLP file
// (the demo binary runs against a kfake cluster, an embedded NATS server
// and the shared RabbitMQ, and writes its spans with --otlp-out), a Jaeger
// query API serving the same spans in Jaeger's JSON model, a Jaeger API
// serving a fixture in the shape of the real responses, and a session
// spread over several traces.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/internal/journeyfixture"
	"github.com/tracebridge/tracebridge/internal/testenv"
	"github.com/tracebridge/tracebridge/journey"
)

// cli runs the command in-process and returns its exit code and output.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

// demoRun is one run of the demo binary with --otlp-out and --logs-out.
type demoRun struct {
	stdout, session, spans, logs string
}

var (
	demoOnce sync.Once
	demo     demoRun
	demoErr  error
)

// runDemo builds the demo (with the race detector when the test has it)
// and runs it once per test process.
func runDemo(t *testing.T) demoRun {
	t.Helper()
	// The demo uses fixed queue names on the shared RabbitMQ: one demo at a
	// time on the machine, as in examples/journey.
	testenv.Exclusive(t, "journey-demo")
	amqpURL := testenv.AMQP(t)
	brokers := testenv.Kafka(t)
	natsSrv := testenv.EmbeddedNATS(t, testenv.NATSConfig{})
	demoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tracebridge-cli-")
		if err != nil {
			demoErr = err
			return
		}
		bin := filepath.Join(dir, "journey")
		args := []string{"build", "-o", bin}
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "-race" && s.Value == "true" {
					args = append(args, "-race")
				}
			}
		}
		if out, err := exec.Command("go", append(args, "../../examples/journey")...).CombinedOutput(); err != nil {
			demoErr = fmt.Errorf("go build the demo: %w\n%s", err, out)
			return
		}
		demo.spans, demo.logs = filepath.Join(dir, "spans.jsonl"), filepath.Join(dir, "logs.jsonl")
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "--otlp-out", demo.spans, "--logs-out", demo.logs)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "OTEL_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, "KAFKA_BROKERS="+strings.Join(brokers, ","), "NATS_URL="+natsSrv.URL, "AMQP_URL="+amqpURL)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		if err := cmd.Run(); err != nil {
			demoErr = fmt.Errorf("the demo: %w\nstdout:\n%s\nstderr:\n%s", err, o.String(), e.String())
			return
		}
		demo.stdout = o.String()
		m := regexp.MustCompile(`(?m)^session (\S+)\s+trace [0-9a-f]{32}\s+11 spans$`).FindStringSubmatch(demo.stdout)
		if m == nil {
			demoErr = fmt.Errorf("no session line with 11 spans in the demo's output:\n%s", demo.stdout)
			return
		}
		demo.session = m[1]
	})
	if demoErr != nil {
		t.Fatal(demoErr)
	}
	return demo
}

func TestMain(m *testing.M) {
	code := m.Run()
	if demo.spans != "" {
		_ = os.RemoveAll(filepath.Dir(demo.spans))
	}
	os.Exit(code)
}

// waterfall returns the rows of the waterfall in out: from its header to
// the first blank line.
func waterfall(t *testing.T, out string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(out, "#   span ")
	if !ok {
		t.Fatalf("no waterfall in:\n%s", out)
	}
	rows, _, _ := strings.Cut(rest, "\n\n")
	return strings.Split(rows, "\n")[1:]
}

// The demo's OTLP file drawn by the CLI is the journey the demo printed:
// the same rows (spans, services, systems, attempts, durations, failures)
// and the same links, and the session's log lines in the order they were
// written.
func TestJourneyFromTheDemosOTLPFile(t *testing.T) {
	d := runDemo(t)
	code, out, errOut := cli(t, "journey", d.session, "--otlp", d.spans, "--logs", d.logs)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want, got := waterfall(t, d.stdout), waterfall(t, out)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the CLI's waterfall:\n%s\nthe demo's:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, s := range []string{"11 spans on 1 trace, from " + d.spans,
		"Crosses http → kafka → rabbitmq → nats → tracebridge.jobs (services web, orders, payments, shipping)",
		"process checkout.payments: 2 attempts, each attempt linked to the one before, succeeded",
		"Dead letters: none", "Critical path", "Whole: no orphans, no broken links, no cross-talk; 11 spans on 1 trace."} {
		if !strings.Contains(out, s) {
			t.Errorf("the output lacks %q:\n%s", s, out)
		}
	}

	// The log lines: those the demo printed, in its order, each at the
	// number of the span it was logged in.
	var demoMsgs []string
	for _, m := range regexp.MustCompile(`(?m)^  (?:INFO|WARN) +(.+?)\s{2,}service=`).FindAllStringSubmatch(d.stdout, -1) {
		demoMsgs = append(demoMsgs, m[1])
	}
	_, logs, _ := strings.Cut(out, "in time order (")
	var cliMsgs []string
	for _, m := range regexp.MustCompile(`(?m)^  \d\d:\d\d:\d\d\.\d{6} (?:INFO|WARN) +#\d+ +(.+?)\s{2,}`).FindAllStringSubmatch(logs, -1) {
		cliMsgs = append(cliMsgs, m[1])
	}
	if len(demoMsgs) != 6 || !slices.Equal(cliMsgs, demoMsgs) {
		t.Errorf("log lines %q, the demo printed %q", cliMsgs, demoMsgs)
	}

	// --json: the same journey, for scripts.
	code, out, errOut = cli(t, "journey", "--json", "--otlp", d.spans, "--logs", d.logs, d.session)
	if code != 0 {
		t.Fatalf("--json: exit %d: %s", code, errOut)
	}
	var j struct {
		Session     string
		Traces      []string
		Systems     []string
		Spans       []journey.Span
		Retries     []struct{ Linked bool }
		BrokenLinks []any `json:"brokenLinks"`
		Logs        []map[string]any
	}
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out)
	}
	if j.Session != d.session || len(j.Traces) != 1 || len(j.Spans) != 11 || len(j.Retries) != 1 || !j.Retries[0].Linked ||
		len(j.BrokenLinks) != 0 || len(j.Logs) != 6 || len(j.Systems) != 5 {
		t.Errorf("--json: %+v", j)
	}
}

// The same spans served by a Jaeger query API, in Jaeger's JSON model
// (links without attributes, times in microseconds), draw the same journey:
// the same spans and links, with link types inferred.
func TestJourneyFromJaegerServingTheDemosSpans(t *testing.T) {
	d := runDemo(t)
	f, err := os.Open(d.spans)
	if err != nil {
		t.Fatal(err)
	}
	spans, err := journey.ReadOTLP(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	srv := newFakeJaeger(t, jaegerTraces(spans))
	code, out, errOut := cli(t, "journey", d.session, "--jaeger", srv.URL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	// Jaeger keeps microseconds: compare everything but the duration and
	// the time bar.
	strip := regexp.MustCompile(`\s+\S+  \|[^|]*\|`)
	want, got := waterfall(t, d.stdout), waterfall(t, out)
	for i := range want {
		want[i] = strip.ReplaceAllString(want[i], " |")
	}
	for i := range got {
		got[i] = strip.ReplaceAllString(got[i], " |")
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the CLI's waterfall from Jaeger:\n%s\nthe demo's:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(out, "11 spans on 1 trace, from "+srv.URL) {
		t.Errorf("output:\n%s", out)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.searches == 0 || srv.badQueries != nil {
		t.Errorf("%d searches; bad queries: %v", srv.searches, srv.badQueries)
	}
}

// A Jaeger response of the real API's shape: a session over four traces
// (a link-policy consumer's, and a job retried on a trace per attempt) is
// drawn as one journey, and a trace of another session stays out.
func TestJourneyFromJaegerFixture(t *testing.T) {
	b, err := os.ReadFile("../../journey/testdata/jaeger-traces.json")
	if err != nil {
		t.Fatal(err)
	}
	var resp struct{ Data []jTrace }
	if err := json.Unmarshal(b, &resp); err != nil {
		t.Fatal(err)
	}
	srv := newFakeJaeger(t, resp.Data)
	const session = "0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a"
	// The fixture's spans are from October 2025.
	lookback := fmt.Sprintf("%dh", int(time.Since(time.UnixMicro(1760000000000000)).Hours())+1)
	code, out, errOut := cli(t, "journey", session, "--jaeger", srv.URL+"/", "--lookback", lookback)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, s := range []string{"6 spans on 4 traces", "Crosses http → kafka → tracebridge.jobs (services web, orders, shipping)",
		"↪ link (creation) to #2", "↪ link (creation) to #4", "↪ link (previous_attempt) to #5",
		"process jobs: 2 attempts, each attempt linked to the one before, succeeded", "via link (creation)",
		"Whole: no orphans, no broken links, no cross-talk; 6 spans on 4 traces."} {
		if !strings.Contains(out, s) {
			t.Errorf("the output lacks %q:\n%s", s, out)
		}
	}
	if n := strings.Count(out, "── trace "); n != 4 || strings.Contains(out, "6e0c63257de34c926f9efcd03927272e") {
		t.Errorf("%d traces drawn (want 4, without the other session's):\n%s", n, out)
	}
	srv.mu.Lock()
	if srv.searches != 4 || srv.badQueries != nil { // web, orders, shipping, jaeger-all-in-one
		t.Errorf("%d searches, want one per service; bad queries: %v", srv.searches, srv.badQueries)
	}
	srv.mu.Unlock()

	// Searching only orders finds its trace; the trace it links to, the
	// checkout's, is fetched by ID so that the link resolves.
	code, out, errOut = cli(t, "journey", session, "--jaeger", srv.URL, "--service", "orders", "--lookback", lookback)
	if code != 0 || !strings.Contains(out, "4 spans on 2 traces") || strings.Contains(out, "✗ broken") {
		t.Errorf("--service orders: exit %d, %s\n%s", code, errOut, out)
	}
	// A linked trace Jaeger no longer has is a broken link, not a failure.
	srv.mu.Lock()
	srv.gone = "4bf92f3577b34da6a3ce929d0e0e4736"
	srv.mu.Unlock()
	code, out, errOut = cli(t, "journey", session, "--jaeger", srv.URL, "--service", "orders", "--lookback", lookback)
	if code != 0 || !strings.Contains(out, "2 spans on 1 trace") || !strings.Contains(out, "✗ broken: trace not found") ||
		!strings.Contains(out, `Broken link from #1 "process checkout.orders" to 53995c3f42cd8ad8`) {
		t.Errorf("a linked trace gone: exit %d, %s\n%s", code, errOut, out)
	}
	// Jaeger's own error reaches the user.
	srv.mu.Lock()
	srv.fail = true
	srv.mu.Unlock()
	code, _, errOut = cli(t, "journey", session, "--jaeger", srv.URL, "--lookback", lookback)
	if code != 1 || !strings.Contains(errOut, "storage unavailable (code 500)") {
		t.Errorf("Jaeger failing: exit %d, stderr %q", code, errOut)
	}
}

// A session spread over four traces, recorded through kfake and the jobs
// runner and written as OTLP JSON, is one journey.
func TestJourneyOverSeveralTracesFromOTLP(t *testing.T) {
	var buf bytes.Buffer
	r := journeyfixture.Record(t, journeyfixture.Config{Sessions: 2, NewTraces: true, OTLP: &buf})
	file := filepath.Join(t.TempDir(), "spans.jsonl")
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := cli(t, "journey", r.Sessions[0], "--otlp", file)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, s := range []string{"11 spans on 4 traces", "Whole: no orphans, no broken links, no cross-talk; 11 spans on 4 traces.",
		r.ProcessOrders + ": 2 attempts, each attempt linked to the one before, succeeded",
		r.ProcessShipping + ": 3 attempts, each attempt linked to the one before, dead-lettered",
		r.SendDLQ + ": to " + r.DLQ + " after 3 attempts"} {
		if !strings.Contains(out, s) {
			t.Errorf("the output lacks %q:\n%s", s, out)
		}
	}
	if n := strings.Count(out, "── trace "); n != 4 || strings.Contains(out, r.Sessions[1]) {
		t.Errorf("%d traces drawn, want 4 of this session only:\n%s", n, out)
	}
}

func TestJourneyUsage(t *testing.T) {
	file := filepath.Join(t.TempDir(), "bad.jsonl")
	if err := os.WriteFile(file, []byte(`{"resourceSpans":[]}`+"\nnot json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{nil, 2, "usage: tracebridge"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"journey"}, 2, "want one session ID"},
		{[]string{"journey", "a", "b"}, 2, "want one session ID"},
		{[]string{"journey", "s", "--nope"}, 2, "flag provided but not defined: -nope"},
		{[]string{"journey", "s", "--jaeger", "http://x", "--otlp", file}, 2, "not both"},
		{[]string{"journey", "s", "--otlp", file}, 1, "line 2: "},
		{[]string{"journey", "s", "--otlp", filepath.Join(t.TempDir(), "missing")}, 1, "no such file"},
		{[]string{"journey", "s", "--jaeger", "localhost:16686"}, 1, "want a URL such as http://localhost:16686"},
		{[]string{"journey", "s", "--limit", "0"}, 2, "must be positive"},
		{[]string{"journey", "s", "--lookback", "-1h"}, 2, "must be positive"},
		{[]string{"journey", "-h"}, 0, "usage: tracebridge journey <session-id>"},
	} {
		code, _, errOut := cli(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.err) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", c.args, code, errOut, c.code, c.err)
		}
	}
}

// jTrace, jSpan and jKV are Jaeger's JSON model, as its query API writes it.
type jTrace struct {
	TraceID   string              `json:"traceID"`
	Spans     []jSpan             `json:"spans"`
	Processes map[string]jProcess `json:"processes"`
	Warnings  []string            `json:"warnings"`
}

type jSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	Flags         int    `json:"flags,omitempty"`
	OperationName string `json:"operationName"`
	References    []jRef `json:"references"`
	StartTime     int64  `json:"startTime"`
	Duration      int64  `json:"duration"`
	Tags          []jKV  `json:"tags"`
	Logs          []any  `json:"logs"`
	ProcessID     string `json:"processID"`
	Warnings      []any  `json:"warnings"`
}

type jRef struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

type jProcess struct {
	ServiceName string `json:"serviceName"`
	Tags        []jKV  `json:"tags"`
}

type jKV struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// jaegerTraces translates spans into Jaeger's model as Jaeger v2 does
// (the OpenTelemetry to Jaeger mapping): the parent as the first CHILD_OF
// reference, links as FOLLOWS_FROM references without their attributes,
// the kind as span.kind (none for internal), the status as
// otel.status_code, otel.status_description and error=true, times in
// microseconds, one process per service within each trace.
func jaegerTraces(spans []journey.Span) []jTrace {
	byTrace := map[trace.TraceID]*jTrace{}
	var order []trace.TraceID
	for _, s := range spans {
		jt := byTrace[s.TraceID]
		if jt == nil {
			jt = &jTrace{TraceID: s.TraceID.String(), Processes: map[string]jProcess{}}
			byTrace[s.TraceID] = jt
			order = append(order, s.TraceID)
		}
		pid := ""
		for id, p := range jt.Processes {
			if p.ServiceName == s.Service {
				pid = id
			}
		}
		if pid == "" {
			pid = fmt.Sprintf("p%d", len(jt.Processes)+1)
			jt.Processes[pid] = jProcess{ServiceName: s.Service}
		}
		js := jSpan{TraceID: s.TraceID.String(), SpanID: s.SpanID.String(), Flags: 1, OperationName: s.Name,
			StartTime: s.Start.UnixMicro(), Duration: s.End.Sub(s.Start).Microseconds(), ProcessID: pid}
		if s.Parent.IsValid() {
			js.References = append(js.References, jRef{"CHILD_OF", s.TraceID.String(), s.Parent.String()})
		}
		for _, l := range s.Links {
			js.References = append(js.References, jRef{"FOLLOWS_FROM", l.TraceID.String(), l.SpanID.String()})
		}
		keys := make([]string, 0, len(s.Attrs))
		for k := range s.Attrs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			v := s.Attrs[k]
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				js.Tags = append(js.Tags, jKV{k, "int64", n})
			} else if b, err := strconv.ParseBool(v); err == nil {
				js.Tags = append(js.Tags, jKV{k, "bool", b})
			} else {
				js.Tags = append(js.Tags, jKV{k, "string", v})
			}
		}
		if s.Kind != trace.SpanKindInternal {
			js.Tags = append(js.Tags, jKV{"span.kind", "string", strings.ToLower(s.Kind.String())})
		}
		if s.Error {
			js.Tags = append(js.Tags, jKV{"otel.status_code", "string", "ERROR"},
				jKV{"otel.status_description", "string", s.StatusMessage}, jKV{"error", "bool", true})
		}
		js.Tags = append(js.Tags, jKV{"internal.span.format", "string", "otlp"})
		jt.Spans = append(jt.Spans, js)
	}
	out := make([]jTrace, 0, len(order))
	for _, id := range order {
		out = append(out, *byTrace[id])
	}
	return out
}

// fakeJaeger answers as Jaeger's query API: GET /api/services, GET
// /api/traces?service=&tags=&start=&end=&limit= (the whole traces with a
// span of the service that has every tag, within the time range), and GET
// /api/traces/{id}, each wrapped in {"data", "total", "limit", "offset",
// "errors"}.
type fakeJaeger struct {
	*httptest.Server
	traces []jTrace

	mu         sync.Mutex
	searches   int
	badQueries []string
	gone       string // a trace ID answered with 404
	fail       bool   // answer every request with a storage error
}

func newFakeJaeger(t *testing.T, traces []jTrace) *fakeJaeger {
	f := &fakeJaeger{traces: traces}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeJaeger) reply(w http.ResponseWriter, status int, data any, errMsg string) {
	resp := map[string]any{"data": data, "total": 0, "limit": 0, "offset": 0, "errors": nil}
	if errMsg != "" {
		resp["errors"] = []map[string]any{{"code": status, "msg": errMsg}}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(resp)
}

func (f *fakeJaeger) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		f.reply(w, http.StatusInternalServerError, nil, "storage unavailable")
		return
	}
	switch {
	case r.URL.Path == "/api/services":
		seen := map[string]bool{"jaeger-all-in-one": true}
		data := []string{"jaeger-all-in-one"}
		for _, t := range f.traces {
			for _, p := range t.Processes {
				if !seen[p.ServiceName] {
					seen[p.ServiceName] = true
					data = append(data, p.ServiceName)
				}
			}
		}
		f.reply(w, http.StatusOK, data, "")
	case r.URL.Path == "/api/traces":
		f.searches++
		q := r.URL.Query()
		var tags map[string]string
		start, serr := strconv.ParseInt(q.Get("start"), 10, 64)
		end, eerr := strconv.ParseInt(q.Get("end"), 10, 64)
		limit, lerr := strconv.Atoi(q.Get("limit"))
		if q.Get("service") == "" || json.Unmarshal([]byte(q.Get("tags")), &tags) != nil || len(tags) == 0 ||
			serr != nil || eerr != nil || lerr != nil || start >= end || limit <= 0 {
			f.badQueries = append(f.badQueries, r.URL.RawQuery)
			f.reply(w, http.StatusBadRequest, nil, "bad query")
			return
		}
		data := []jTrace{}
		for _, t := range f.traces {
			if len(data) < limit && t.TraceID != f.gone && matches(t, q.Get("service"), tags, start, end) {
				data = append(data, t)
			}
		}
		f.reply(w, http.StatusOK, data, "")
	case strings.HasPrefix(r.URL.Path, "/api/traces/"):
		id := strings.TrimPrefix(r.URL.Path, "/api/traces/")
		for _, t := range f.traces {
			if t.TraceID == id && id != f.gone {
				f.reply(w, http.StatusOK, []jTrace{t}, "")
				return
			}
		}
		f.reply(w, http.StatusNotFound, nil, "trace not found")
	default:
		http.NotFound(w, r)
	}
}

// matches reports whether a span of service in t has every tag and starts
// in [start, end] (microseconds).
func matches(t jTrace, service string, tags map[string]string, start, end int64) bool {
	for _, s := range t.Spans {
		if t.Processes[s.ProcessID].ServiceName != service || s.StartTime < start || s.StartTime > end {
			continue
		}
		n := 0
		for _, kv := range s.Tags {
			if v, ok := tags[kv.Key]; ok && fmt.Sprint(kv.Value) == v {
				n++
			}
		}
		if n == len(tags) {
			return true
		}
	}
	return false
}

// The README's "Debugging a session" shows what the CLI prints for the
// demo: the output on the demo's files in testdata, under the names the
// README's commands give them.
func TestREADMEShowsWhatTheCLIPrintsForTheDemo(t *testing.T) {
	code, out, errOut := cli(t, "journey", "01a23223-9a02-7f05-a1d2-bc7b56140c3e.3wP7qOfZ0MFpjwETss6Vkg",
		"--otlp", "testdata/demo-spans.jsonl", "--logs", "testdata/demo-logs.jsonl")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	out = strings.NewReplacer("testdata/demo-spans.jsonl", "spans.jsonl", "testdata/demo-logs.jsonl", "logs.jsonl").Replace(out)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "## Debugging a session\n")
	_, block, ok2 := strings.Cut(section, "For the demo it\nprints:\n\n```\n")
	block, _, ok3 := strings.Cut(block, "```\n")
	if !ok || !ok2 || !ok3 {
		t.Fatal(`README.md: no output block after "For the demo it prints:" under "## Debugging a session"`)
	}
	if block != out {
		t.Errorf("README.md shows:\n%s\nthe CLI prints:\n%s", block, out)
	}
}
