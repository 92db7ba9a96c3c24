package journey_test

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"testing"

	"github.com/tracebridge/tracebridge/journey"
)

// Whatever a file or a store hands over, reading it returns spans or an
// error, and assembling, drawing and encoding what was read never panics.
func FuzzReadOTLP(f *testing.F) {
	f.Add([]byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b174","name":"p","kind":5,"attributes":[{"key":"session.id","value":{"stringValue":"s"}},{"key":"tracebridge.attempt","value":{"intValue":"2"}}],"links":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}]}`))
	f.Add([]byte("{}\n\n{\"resourceSpans\":null}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		spans, err := journey.ReadOTLP(bytes.NewReader(b))
		if err == nil {
			exercise(t, spans)
		}
	})
}

func FuzzReadJaeger(f *testing.F) {
	seed, err := os.ReadFile("testdata/jaeger-traces.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{"data":[{"traceID":"1","spans":[{"traceID":"1","spanID":"2","references":[{"refType":"CHILD_OF","traceID":"1","spanID":"2"}],"tags":[{"key":"session.id","value":"s"},{"key":"tracebridge.attempt","type":"int64","value":1e400}],"duration":-5}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		spans, err := journey.ReadJaeger(bytes.NewReader(b))
		if err == nil {
			exercise(t, spans)
		}
	})
}

func exercise(t *testing.T, spans []journey.Span) {
	for _, j := range journey.AssembleAll(spans) {
		j.Draw(io.Discard)
		j.Describe(io.Discard)
		if _, err := json.Marshal(j); err != nil {
			t.Fatalf("marshal the journey of %q: %v", j.Session, err)
		}
		for _, s := range j.Spans {
			j.Path(s.SpanID)
		}
	}
}
