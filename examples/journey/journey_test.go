package main

// The demo is tested as a user runs it: the test builds the binary, runs it
// three times in a row against brokers that outlive each run (a kfake
// cluster, an embedded NATS server and the shared RabbitMQ, so the fixed
// destination names meet what earlier runs left) and an OTLP/HTTP receiver
// of its own, and checks what arrived at the receiver against what the
// terminal printed. Tests may use internal/testenv; the demo itself may not.

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	amqp091 "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/tracebridge/tracebridge/internal/testenv"
)

// receivedSpan is one span as the OTLP receiver decoded it.
type receivedSpan struct {
	service string
	span    *tracepb.Span
}

func (r receivedSpan) attr(key string) string { return attrString(r.span.GetAttributes(), key) }

func attrString(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			switch v := kv.GetValue().GetValue().(type) {
			case *commonpb.AnyValue_StringValue:
				return v.StringValue
			case *commonpb.AnyValue_IntValue:
				return fmt.Sprint(v.IntValue)
			case *commonpb.AnyValue_BoolValue:
				return fmt.Sprint(v.BoolValue)
			default:
				return fmt.Sprint(v)
			}
		}
	}
	return ""
}

// otlpReceiver is an OTLP/HTTP trace endpoint: it decodes every protobuf
// export request and answers as a collector does, or with status when set.
type otlpReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	spans  []receivedSpan
	status int // 0: accept
	bad    []string
}

func newOTLPReceiver(t *testing.T, status int) *otlpReceiver {
	r := &otlpReceiver{status: status}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.Close)
	return r
}

func (r *otlpReceiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err == nil && req.Header.Get("Content-Encoding") == "gzip" {
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(body)); err == nil {
			body, err = io.ReadAll(zr)
		}
	}
	var msg coltracepb.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &msg)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" || err != nil {
		r.bad = append(r.bad, fmt.Sprintf("%s %s (%s): %v", req.Method, req.URL.Path, req.Header.Get("Content-Type"), err))
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	if r.status != 0 {
		http.Error(w, "refused by the test", r.status)
		return
	}
	for _, rs := range msg.GetResourceSpans() {
		svc := attrString(rs.GetResource().GetAttributes(), "service.name")
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.spans = append(r.spans, receivedSpan{svc, s})
			}
		}
	}
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// trace returns the received spans of one trace.
func (r *otlpReceiver) trace(id string) []receivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []receivedSpan
	for _, s := range r.spans {
		if hex.EncodeToString(s.span.GetTraceId()) == id {
			out = append(out, s)
		}
	}
	return out
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// buildDemo builds the demo binary once per test process, with the race
// detector when the test runs with it, so a data race in the demo fails the
// test.
func buildDemo(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tracebridge-journey-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "journey")
		args := []string{"build", "-o", builtBin}
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "-race" && s.Value == "true" {
					args = append(args, "-race")
				}
			}
		}
		if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build the demo: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		_ = os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// runDemo runs the demo binary with env on top of the test's environment
// (minus any OTLP setting of the machine's own) and returns its stdout,
// stderr and error.
func runDemo(t *testing.T, bin string, env ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTEL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// demoLock keeps t's demo runs apart from those of any other test process
// on the machine (another checkout's CI, say). Kafka and NATS are the
// test's own, but RabbitMQ is shared and the payments queue has the same
// name on every run: two runs at once share its deliveries, and each
// settles and skips the other's messages as leftovers, so neither journey
// finishes. Taken before the RabbitMQ lock, so that waiting for it does
// not hold off a test that restarts the node.
func demoLock(t *testing.T) { testenv.Exclusive(t, "journey-demo") }

var headerLine = regexp.MustCompile(`(?m)^session (\S+)\s+trace ([0-9a-f]{32})\s+(\d+) spans$`)

// The acceptance test: three runs in a row, each one trace at the
// endpoint with every span the terminal printed, one root, no orphans, every
// system, one session and the retry link; leftovers of earlier runs in the
// fixed-name destinations do not join it.
func TestDemoExportsWholeJourneyThreeRunsInARow(t *testing.T) {
	demoLock(t)
	amqpURL := testenv.AMQP(t)
	brokers := testenv.Kafka(t)
	natsSrv := testenv.EmbeddedNATS(t, testenv.NATSConfig{})
	recv := newOTLPReceiver(t, 0)
	bin := buildDemo(t)
	env := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + recv.URL, "KAFKA_BROKERS=" + strings.Join(brokers, ","),
		"NATS_URL=" + natsSrv.URL, "AMQP_URL=" + amqpURL}

	var names map[string]bool
	for run := 1; run <= 3; run++ {
		if run > 1 {
			plantLeftovers(t, brokers, natsSrv.URL, amqpURL, run)
		}
		start := time.Now()
		stdout, stderr, err := runDemo(t, bin, env...)
		if err != nil {
			t.Fatalf("run %d: %v\nstdout:\n%s\nstderr:\n%s", run, err, stdout, stderr)
		}
		t.Logf("run %d took %s", run, time.Since(start).Round(time.Millisecond))
		m := headerLine.FindStringSubmatch(stdout)
		if m == nil {
			t.Fatalf("run %d: no session/trace line in the output:\n%s", run, stdout)
		}
		session, traceID, printed := m[1], m[2], m[3]
		spans := recv.trace(traceID)
		if printed != "11" || fmt.Sprint(len(spans)) != printed {
			t.Fatalf("run %d: terminal printed %s spans, the endpoint received %d of trace %s; want 11 and 11\n%s",
				run, printed, len(spans), traceID, stdout)
		}
		if !strings.Contains(stdout, "accepted all 11 spans") {
			t.Errorf("run %d: the verdict does not report 11 spans accepted by the endpoint:\n%s", run, stdout)
		}
		names = checkTrace(t, run, session, spans, stdout)
		if strings.Contains(stderr, "export") {
			t.Errorf("run %d: stderr reports export trouble:\n%s", run, stderr)
		}
	}
	recv.mu.Lock()
	if len(recv.bad) > 0 {
		t.Errorf("malformed export requests: %v", recv.bad)
	}
	recv.mu.Unlock()
	checkLeftoversDrained(t, amqpURL)
	checkREADMEDiagram(t, names)
}

// checkTrace asserts the shape of one run's trace as received, and returns
// its span names.
func checkTrace(t *testing.T, run int, session string, spans []receivedSpan, stdout string) map[string]bool {
	t.Helper()
	byID := map[string]receivedSpan{}
	for _, s := range spans {
		id := hex.EncodeToString(s.span.GetSpanId())
		if _, dup := byID[id]; dup {
			t.Errorf("run %d: span %s received twice", run, id)
		}
		byID[id] = s
	}
	roots, systems, services, names := 0, map[string]bool{}, map[string]bool{}, map[string]bool{}
	retryLink := false
	for _, s := range spans {
		names[s.span.GetName()] = true
		services[s.service] = true
		if p := s.span.GetParentSpanId(); len(p) == 0 {
			roots++
		} else if _, ok := byID[hex.EncodeToString(p)]; !ok {
			t.Errorf("run %d: %q is an orphan: its parent %x was not received", run, s.span.GetName(), p)
		}
		if sys := s.attr("messaging.system"); sys != "" {
			systems[sys] = true
		}
		if s.span.GetKind() == tracepb.Span_SPAN_KIND_SERVER && s.attr("http.request.method") != "" {
			systems["http"] = true
		}
		if got := s.attr("session.id"); got != session {
			t.Errorf("run %d: %q has session.id %q, want %q", run, s.span.GetName(), got, session)
		}
		for _, l := range s.span.GetLinks() {
			target, ok := byID[hex.EncodeToString(l.GetSpanId())]
			if !ok {
				t.Errorf("run %d: %q links to span %x, which was not received", run, s.span.GetName(), l.GetSpanId())
				continue
			}
			if attrString(l.GetAttributes(), "tracebridge.link.type") == "previous_attempt" &&
				target.span.GetName() == s.span.GetName() && target.attr("tracebridge.attempt") == "1" {
				retryLink = true
			}
		}
		if !strings.Contains(stdout, s.span.GetName()+" (") {
			t.Errorf("run %d: received span %q is not in the terminal waterfall", run, s.span.GetName())
		}
	}
	if roots != 1 {
		t.Errorf("run %d: %d root spans, want 1", run, roots)
	}
	for _, sys := range []string{"http", "kafka", "rabbitmq", "nats", "tracebridge.jobs"} {
		if !systems[sys] {
			t.Errorf("run %d: no %s span received (got %v)", run, sys, systems)
		}
	}
	for _, svc := range []string{"web", "orders", "payments", "shipping"} {
		if !services[svc] {
			t.Errorf("run %d: no span of service %s received (got %v)", run, svc, services)
		}
	}
	if !retryLink {
		t.Errorf("run %d: no retry attempt links to its previous attempt", run)
	}
	return names
}

// plantLeftovers leaves a message of another session in every destination,
// as an interrupted earlier run would.
func plantLeftovers(t *testing.T, brokers []string, natsURL, amqpURL string, run int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	session := fmt.Sprintf("leftover-of-run-%d", run-1)
	w := &kafkago.Writer{Addr: kafkago.TCP(brokers...), Topic: ordersTopic, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafkago.Message{Value: []byte(`{"id":"leftover","total":1}`),
		Headers: []kafkago.Header{{Key: "session-id", Value: []byte(session)}}}); err != nil {
		t.Fatalf("plant a Kafka leftover: %v", err)
	}
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.PublishWithContext(ctx, "", paymentsQueue, false, false, amqp091.Publishing{
		Headers: amqp091.Table{"session-id": session}, Body: []byte("leftover")}); err != nil {
		t.Fatalf("plant a RabbitMQ leftover: %v", err)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(shippingSubj)
	msg.Header.Set("session-id", session)
	msg.Data = []byte("leftover")
	if _, err := js.PublishMsg(msg); err != nil {
		t.Fatalf("plant a JetStream leftover: %v", err)
	}
}

// checkLeftoversDrained asserts that the payments queue holds nothing after
// the runs: the leftovers were settled, not left for the next run.
func checkLeftoversDrained(t *testing.T, amqpURL string) {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(paymentsQueue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 0 {
		t.Errorf("%d messages left in %s after the runs, want 0", q.Messages, paymentsQueue)
	}
}

var diagramName = regexp.MustCompile(`\b(?:send|process|POST|GET) [\w.-]+|\bPOST\b`)

// checkREADMEDiagram asserts that the README's span diagram names exactly
// the spans the demo produces.
func checkREADMEDiagram(t *testing.T, names map[string]bool) {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "## Spans and links")
	diagram, _, ok2 := strings.Cut(rest, "```\n\n")
	if !ok || !ok2 {
		t.Fatal("README.md: no diagram under \"## Spans and links\"")
	}
	var missing []string
	for n := range names {
		if !strings.Contains(diagram, n+" ") && !strings.Contains(diagram, n+"\n") {
			missing = append(missing, n)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("README.md's span diagram lacks spans the demo prints: %q", missing)
	}
	for _, n := range diagramName.FindAllString(diagram, -1) {
		if !names[n] {
			t.Errorf("README.md's span diagram names %q, which the demo does not produce (it has %v)", n, names)
		}
	}
}

// A failed export fails the run, and the verdict says how many spans the
// endpoint accepted instead of claiming success.
func TestDemoReportsFailedExport(t *testing.T) {
	demoLock(t)
	amqpURL := testenv.AMQP(t)
	recv := newOTLPReceiver(t, http.StatusBadRequest)
	bin := buildDemo(t)
	stdout, stderr, err := runDemo(t, bin, "OTEL_EXPORTER_OTLP_ENDPOINT="+recv.URL, "AMQP_URL="+amqpURL)
	if err == nil {
		t.Fatalf("the demo succeeded although the endpoint refused every span:\n%s\nstderr:\n%s", stdout, stderr)
	}
	if !strings.Contains(stderr, "OTLP export FAILED") || !strings.Contains(stderr, "accepted 0 of the 11 spans") {
		t.Errorf("stderr does not say plainly that the export failed:\n%s", stderr)
	}
	if strings.Contains(stdout, "Exported over OTLP") {
		t.Errorf("stdout claims the export succeeded:\n%s", stdout)
	}
}
