// Command testsummary reads `go test -json` from stdin and prints what a
// person wants from CI: package results, the integration summary, the full
// output of every failing test, and one closing line
// "N passed, N failed, N skipped" counting tests and subtests. It exits 1
// if any test or package failed.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

func main() {
	var passed, failed, skipped int
	failedPkg := false
	outputs := map[string][]string{} // package/test → output lines, kept until the test ends
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Println(sc.Text()) // build errors and the like come as plain text
			continue
		}
		key := e.Package + "/" + e.Test
		switch {
		case e.Action == "output" && e.Test == "":
			fmt.Print(e.Output) // ok/FAIL lines, TestMain output
		case e.Action == "output":
			outputs[key] = append(outputs[key], e.Output)
		case e.Test == "" && e.Action == "fail":
			failedPkg = true
		case e.Test != "" && (e.Action == "pass" || e.Action == "skip" || e.Action == "fail"):
			switch e.Action {
			case "pass":
				passed++
			case "skip":
				skipped++
			case "fail":
				failed++
				fmt.Print(strings.Join(outputs[key], ""))
			}
			delete(outputs, key)
		}
	}
	fmt.Printf("\n%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || failedPkg {
		os.Exit(1)
	}
}
