package journey_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/internal/journeyfixture"
	"github.com/tracebridge/tracebridge/journey"
)

func names(spans []journey.Span) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name)
	}
	return out
}

func byName(t *testing.T, j *journey.Journey, name string, attempt int) journey.Span {
	t.Helper()
	for _, s := range j.Spans {
		if s.Name == name && (attempt == 0 || s.Attempt() == attempt) {
			return s
		}
	}
	t.Fatalf("no span %q attempt %d in the journey", name, attempt)
	return journey.Span{}
}

// A session spread over four traces (a link-policy consumer starts a trace
// per attempt, the job another) is one journey: every link resolves, the
// retry chain is joined across traces, and the critical path crosses them
// through the creation links.
func TestAssembleSessionOverSeveralTraces(t *testing.T) {
	r := journeyfixture.Record(t, journeyfixture.Config{Sessions: 2, NewTraces: true})
	journeys := journey.AssembleAll(r.Spans())
	if len(journeys) != 2 {
		t.Fatalf("%d journeys, want 2", len(journeys))
	}
	j := journey.Assemble(r.Sessions[0], r.Rec.Spans())
	if len(j.Traces) != 4 || len(j.Spans) != journeyfixture.SpansPerJourney {
		t.Fatalf("%d spans on %d traces, want %d on 4", len(j.Spans), len(j.Traces), journeyfixture.SpansPerJourney)
	}
	if !j.Whole() || len(j.CrossTalk) != 0 {
		t.Fatalf("orphans %v, broken links %v, cross-talk %v", j.Orphans, j.BrokenLinks, j.CrossTalk)
	}
	if want := []string{"kafka", "tracebridge.jobs"}; !slices.Equal(j.Systems, want) {
		t.Errorf("systems %v, want %v", j.Systems, want)
	}
	if want := []string{"web", "orders", "shipping"}; !slices.Equal(j.Services, want) {
		t.Errorf("services %v, want %v", j.Services, want)
	}
	// Every span is drawn once, and every link points at a number.
	var b strings.Builder
	j.Draw(&b)
	drawing := b.String()
	if rows := regexp.MustCompile(`(?m)^\d+ `).FindAllString(drawing, -1); len(rows) != len(j.Spans) {
		t.Errorf("%d rows drawn for %d spans:\n%s", len(rows), len(j.Spans), drawing)
	}
	if strings.Count(drawing, "── trace ") != 4 || strings.Contains(drawing, "✗ broken") ||
		strings.Count(drawing, "↪ link (creation) to #2") != 2 || !strings.Contains(drawing, "↪ link (previous_attempt) to #3") {
		t.Errorf("the drawing does not show 4 traces joined by their links:\n%s", drawing)
	}

	if len(j.Retries) != 2 {
		t.Fatalf("%d retry chains, want 2: %+v", len(j.Retries), j.Retries)
	}
	orders, shipping := j.Retries[0], j.Retries[1]
	if orders.Name != r.ProcessOrders || len(orders.Attempts) != 2 || !orders.Linked || orders.Outcome != journey.Succeeded ||
		orders.Attempts[0].Span.TraceID == orders.Attempts[1].Span.TraceID {
		t.Errorf("orders chain %+v: want 2 linked attempts on two traces, succeeded", orders)
	}
	if shipping.Name != r.ProcessShipping || len(shipping.Attempts) != 3 || !shipping.Linked ||
		shipping.Outcome != journey.DeadLettered || !shipping.Attempts[2].Final || shipping.Attempts[1].Final {
		t.Errorf("shipping chain %+v: want 3 linked attempts, the last final, dead-lettered", shipping)
	}
	if len(j.DeadLetters) != 1 || j.DeadLetters[0].Destination != r.DLQ || j.DeadLetters[0].Attempts != 3 ||
		j.DeadLetters[0].LastAttempt != shipping.Attempts[2].Span {
		t.Errorf("dead letters %+v, want one to %s from attempt 3", j.DeadLetters, r.DLQ)
	}

	// The critical path runs from the checkout to the span that ended last,
	// across the traces through the creation links.
	cp := j.CriticalPath
	if len(cp) == 0 || cp[0].Span.Name != r.Root {
		t.Fatalf("critical path %+v does not start at the checkout", cp)
	}
	last := cp[len(cp)-1]
	for _, s := range j.Spans {
		if s.End.After(j.Spans[j.Number(last.Span.SpanID)-1].End) {
			t.Errorf("critical path ends at %q, but %q ended later", last.Span.Name, s.Name)
		}
	}
	vias := 0
	for i, st := range cp {
		if st.Via == "link (creation)" {
			vias++
		}
		if i > 0 && st.Offset < cp[i-1].Offset {
			t.Errorf("critical path step %d starts before step %d", i, i-1)
		}
	}
	if vias != 2 {
		t.Errorf("critical path crosses %d creation links, want 2 (into orders, into the job): %+v", vias, cp)
	}
}

// Spans written as OTLP JSON read back as they were recorded, so the
// journey drawn from a file is the journey drawn from the SDK.
func TestOTLPRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	r := journeyfixture.Record(t, journeyfixture.Config{NewTraces: true, OTLP: &buf})
	recorded := r.Rec.Spans()
	read, err := journey.ReadOTLP(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(read) != len(recorded) {
		t.Fatalf("read %d spans, recorded %d", len(read), len(recorded))
	}
	byID := map[trace.SpanID]journey.Span{}
	for _, s := range read {
		byID[s.SpanID] = s
	}
	for _, want := range recorded {
		got, ok := byID[want.SpanID]
		if !ok {
			t.Errorf("span %q not read back", want.Name)
			continue
		}
		if !got.Start.Equal(want.Start) || !got.End.Equal(want.End) {
			t.Errorf("%q: times %v–%v, want %v–%v", want.Name, got.Start, got.End, want.Start, want.End)
		}
		got.Start, got.End, want.Start, want.End = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(want)
		if !bytes.Equal(gj, wj) {
			t.Errorf("read back:\n%s\nrecorded:\n%s", gj, wj)
		}
	}
	var fromFile, fromSDK strings.Builder
	journey.Assemble(r.Sessions[0], read).Draw(&fromFile)
	journey.Assemble(r.Sessions[0], recorded).Draw(&fromSDK)
	if fromFile.String() != fromSDK.String() {
		t.Errorf("the journey drawn from the file differs from the one drawn from the SDK:\n%s\nvs\n%s", fromFile.String(), fromSDK.String())
	}
}

// OTLP JSON as the Collector's file exporter writes it: hex IDs, enums as
// numbers, 64-bit integers as strings, fields this version does not know.
func TestReadOTLPCollectorLine(t *testing.T) {
	line := `{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"payments"}}]},` +
		`"scopeSpans":[{"scope":{"name":"x"},"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174",` +
		`"parentSpanId":"b7ad6b7169203331","name":"process payments","kind":5,"startTimeUnixNano":"1544712660300000000",` +
		`"endTimeUnixNano":"1544712661300000000","attributes":[{"key":"tracebridge.attempt","value":{"intValue":"2"}},` +
		`{"key":"tracebridge.retry.final","value":{"boolValue":true}},{"key":"ratio","value":{"doubleValue":0.5}}],` +
		`"links":[{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"a2fb4a1d1a96d312","attributes":` +
		`[{"key":"tracebridge.link.type","value":{"stringValue":"previous_attempt"}}]}],` +
		`"status":{"code":2,"message":"card declined"},"aFieldOfTomorrow":{"x":1}}]}]}]}`
	// A line of a plain Protobuf JSON encoder (base64 IDs, enum names) reads too.
	plain := `{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"W47/95gDgQPSabYzgT/GDA==","spanId":"t61rcWkgMzE=",` +
		`"name":"send payments","kind":"SPAN_KIND_PRODUCER","startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712660100000000"}]}]}]}`
	spans, err := journey.ReadOTLP(strings.NewReader(line + "\n\n" + plain + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	s, p := spans[0], spans[1]
	if s.TraceID.String() != "5b8efff798038103d269b633813fc60c" || s.SpanID.String() != "eee19b7ec3c1b174" ||
		s.Parent.String() != "b7ad6b7169203331" || s.Kind != trace.SpanKindConsumer || s.Service != "payments" ||
		s.Attempt() != 2 || s.Attrs["tracebridge.retry.final"] != "true" || s.Attrs["ratio"] != "0.5" ||
		!s.Error || s.StatusMessage != "card declined" || s.Duration() != time.Second {
		t.Errorf("read %+v", s)
	}
	if len(s.Links) != 1 || s.Links[0].SpanID.String() != "a2fb4a1d1a96d312" || s.Links[0].Type != journey.LinkPreviousAttempt {
		t.Errorf("links %+v", s.Links)
	}
	if p.TraceID != s.TraceID || p.SpanID.String() != "b7ad6b7169203331" || p.Kind != trace.SpanKindProducer {
		t.Errorf("plain Protobuf JSON read as %+v", p)
	}

	for _, bad := range []string{
		line + "\n{\"resourceSpans\": 7}\n",
		line + "\nnot json\n",
		line + "\n" + strings.Replace(line, `"spanId":"eee19b7ec3c1b174"`, `"spanId":"eee19b"`, 1) + "\n",
	} {
		_, err := journey.ReadOTLP(strings.NewReader(bad))
		if err == nil || !strings.HasPrefix(err.Error(), "line 2: ") {
			t.Errorf("reading a bad second line: err %v, want one naming line 2", err)
		}
	}
}

// A response of Jaeger's query API: a session over four traces (a
// link-policy consumer, a job retried on a trace per attempt) and a trace of
// another session. Jaeger keeps links as FOLLOWS_FROM references without
// their attributes; the journey infers their types.
func TestReadJaeger(t *testing.T) {
	f, err := os.Open("testdata/jaeger-traces.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	spans, err := journey.ReadJaeger(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) != 7 {
		t.Fatalf("%d spans, want 7", len(spans))
	}
	j := journey.Assemble("0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a", spans)
	if len(j.Traces) != 4 || len(j.Spans) != 6 || !j.Whole() || len(j.CrossTalk) != 0 {
		t.Fatalf("%d spans on %d traces, orphans %v, broken %v, want 6 on 4, whole", len(j.Spans), len(j.Traces),
			j.Orphans, j.BrokenLinks)
	}
	post := byName(t, j, "POST", 0)
	if post.Kind != trace.SpanKindServer || post.Service != "web" || post.System() != "http" ||
		post.Attrs["http.response.status_code"] != "202" || post.Attrs["span.kind"] != "" || post.Start.UnixMicro() != 1760000000000000 ||
		post.Duration() != 4200*time.Microsecond {
		t.Errorf("POST read as %+v", post)
	}
	send := byName(t, j, "send checkout.orders", 0)
	if send.Parent != post.SpanID || send.Kind != trace.SpanKindProducer {
		t.Errorf("send read as %+v", send)
	}
	want := map[string][]string{ // by name and attempt
		"process checkout.orders 1": {journey.LinkCreation},
		"process jobs 1":            {journey.LinkCreation},
		"process jobs 2":            {journey.LinkCreation, journey.LinkPreviousAttempt},
	}
	for _, s := range j.Spans {
		var types []string
		for _, l := range s.Links {
			types = append(types, l.Type)
		}
		key := fmt.Sprintf("%s %d", s.Name, s.Attempt())
		if !slices.Equal(types, want[key]) {
			t.Errorf("%q: link types %v, want %v", key, types, want[key])
		}
	}
	if len(j.Retries) != 1 || len(j.Retries[0].Attempts) != 2 || !j.Retries[0].Linked ||
		j.Retries[0].Outcome != journey.Succeeded || j.Retries[0].Attempts[0].Error != "*net.OpError" {
		t.Errorf("retries %+v, want the job's 2 linked attempts, succeeded", j.Retries)
	}
	if want := []string{"http", "kafka", "tracebridge.jobs"}; !slices.Equal(j.Systems, want) {
		t.Errorf("systems %v, want %v", j.Systems, want)
	}
	other := journey.Assemble("0193a5c4-0000-7c1a-9f3b-000000000000", spans)
	if len(other.Spans) != 1 || !other.Spans[0].Error || other.Spans[0].StatusMessage != "Internal Server Error" {
		t.Errorf("the other session's trace read as %+v", other.Spans)
	}

	_, err = journey.ReadJaeger(strings.NewReader(`{"data":null,"total":0,"limit":0,"offset":0,"errors":[{"code":404,"msg":"trace not found"}]}`))
	var jerr *journey.JaegerError
	if !errors.As(err, &jerr) || jerr.Code != 404 || jerr.Msg != "trace not found" {
		t.Errorf("an error response: %v, want JaegerError 404", err)
	}
	if _, err := journey.ReadJaeger(strings.NewReader(`<html>`)); !errors.Is(err, journey.ErrNotJaeger) {
		t.Errorf("HTML: %v, want ErrNotJaeger", err)
	}
}

func span(tr, id, parent byte, name, session string, start int, links ...journey.Link) journey.Span {
	s := journey.Span{TraceID: trace.TraceID{tr}, SpanID: trace.SpanID{id}, Name: name, Kind: trace.SpanKindInternal,
		Start: time.Unix(100, 0).Add(time.Duration(start) * time.Millisecond), Attrs: map[string]string{}, Links: links}
	s.End = s.Start.Add(time.Millisecond)
	if parent != 0 {
		s.Parent = trace.SpanID{parent}
	}
	if session != "" {
		s.Attrs[journey.SessionKey] = session
	}
	return s
}

// What a store can hand over: the same span twice, a parent cycle, spans
// whose parent never arrived, a trace whose root names no session.
func TestAssembleOddInput(t *testing.T) {
	spans := []journey.Span{
		span(1, 1, 0, "root", "", 0), // no session on the root: the trace's session is the one most spans name
		span(1, 2, 1, "a", "s", 1),
		span(1, 2, 1, "a", "s", 1), // the same span twice
		span(1, 3, 2, "b", "s", 2),
		span(1, 4, 2, "intruder", "other", 3),
		span(1, 5, 9, "orphan", "s", 4), // parent 9 never arrived
		span(1, 6, 7, "cycle-1", "s", 5),
		span(1, 7, 6, "cycle-2", "s", 6),
		span(2, 1, 0, "other root", "other", 0),
		span(2, 2, 1, "stray", "s", 1), // a span of s on a trace of another session
	}
	j := journey.Assemble("s", spans)
	if len(j.Traces) != 2 || len(j.Spans) != 9 {
		t.Fatalf("%d spans on %d traces, want 9 on 2 (the duplicate once, every span of both traces): %v",
			len(j.Spans), len(j.Traces), names(j.Spans))
	}
	var orphans []string
	for _, o := range j.Orphans {
		orphans = append(orphans, o.Span.Name)
	}
	slices.Sort(orphans)
	if !slices.Equal(orphans, []string{"cycle-1", "orphan"}) {
		t.Errorf("orphans %v, want the one whose parent never arrived and the cycle's entry", orphans)
	}
	var talk []string
	for _, c := range j.CrossTalk {
		talk = append(talk, c.Span.Name+"@"+c.TraceSession)
	}
	slices.Sort(talk)
	if !slices.Equal(talk, []string{"intruder@s", "stray@other"}) {
		t.Errorf("cross-talk %v, want the intruder on s's trace and s's stray span on other's", talk)
	}
	if j.TraceSession(trace.TraceID{1}) != "s" || j.TraceSession(trace.TraceID{2}) != "other" {
		t.Errorf("trace sessions %q, %q", j.TraceSession(trace.TraceID{1}), j.TraceSession(trace.TraceID{2}))
	}
	var b strings.Builder
	j.Draw(&b)
	for _, n := range names(j.Spans) {
		if !strings.Contains(b.String(), n+" (internal)") {
			t.Errorf("%q not drawn:\n%s", n, b.String())
		}
	}
	if p := j.Path(trace.SpanID{3}); !slices.Equal(names(p), []string{"root", "a", "b"}) {
		t.Errorf("path to b: %v", names(p))
	}
	if e := journey.Assemble("", spans); len(e.Spans) != 0 {
		t.Errorf("the empty session has %d spans", len(e.Spans))
	}
	if e := journey.Assemble("nobody", spans); len(e.Spans) != 0 || e.Whole() != true {
		t.Errorf("a session no span names has %d spans", len(e.Spans))
	}
}

// A journey's JSON holds what the CLI's --json prints, and spans read back.
func TestJourneyJSON(t *testing.T) {
	f, err := os.Open("testdata/jaeger-traces.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	spans, err := journey.ReadJaeger(f)
	if err != nil {
		t.Fatal(err)
	}
	j := journey.Assemble("0193a5c4-7d2e-7c1a-9f3b-4a5e6d7c8b9a", spans)
	b, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Session  string
		Traces   []string
		Systems  []string
		Spans    []journey.Span
		Retries  []struct{ Outcome string }
		Critical []struct {
			Span struct{ SpanID string }
		} `json:"criticalPath"`
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Session != j.Session || len(back.Traces) != 4 || back.Traces[0] != "4bf92f3577b34da6a3ce929d0e0e4736" ||
		len(back.Spans) != len(j.Spans) || len(back.Retries) != 1 || back.Retries[0].Outcome != "succeeded" ||
		len(back.Critical) != len(j.CriticalPath) || back.Critical[0].Span.SpanID != "00f067aa0ba902b7" {
		t.Fatalf("JSON read back as %+v:\n%s", back, b)
	}
	for i, s := range back.Spans {
		w := j.Spans[i]
		if s.TraceID != w.TraceID || s.SpanID != w.SpanID || s.Parent != w.Parent || s.Kind != w.Kind ||
			!s.Start.Equal(w.Start) || len(s.Links) != len(w.Links) || s.Attempt() != w.Attempt() {
			t.Errorf("span %d read back as %+v, want %+v", i, s, w)
		}
	}
	if !strings.Contains(string(b), `"parentSpanId":"00f067aa0ba902b7"`) || strings.Contains(string(b), `"parentSpanId":"0000000000000000"`) ||
		!strings.Contains(string(b), `"kind":"consumer"`) {
		t.Errorf("span JSON lacks hex parents or kind names:\n%s", b)
	}
}
