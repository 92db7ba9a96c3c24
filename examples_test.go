package tracebridge_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestExamplesUseOnlyPublicAPI keeps the examples copyable: no package under
// examples/, nor any examples/ package it depends on, imports an internal
// package of this module, which a user's module could not import. (Tests of
// the examples may; they are not part of what a user copies.)
func TestExamplesUseOnlyPublicAPI(t *testing.T) {
	const module = "github.com/tracebridge/tracebridge"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", "./examples/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list ./examples/...: %v\n%s", err, out)
	}
	examples := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || !strings.HasPrefix(fields[0], module+"/examples/") {
			continue
		}
		examples++
		if strings.Contains(fields[0]+"/", "/internal/") {
			t.Errorf("%s is an internal package under examples/", fields[0])
		}
		for _, imp := range fields[1:] {
			if strings.HasPrefix(imp, module+"/") && strings.Contains(imp+"/", "/internal/") {
				t.Errorf("%s imports %s: a user who copies it cannot", fields[0], imp)
			}
		}
	}
	if examples < 5 {
		t.Fatalf("go list found %d packages under examples/, want at least 5 (journey, kafka, amqp, nats, jobs)", examples)
	}
}
