package tracebridge_test

import (
	"bytes"
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestREADMECompiles compiles every ```go block of README.md, so the README
// cannot drift from the API. The convention, for whoever writes a block:
//
//   - A block that starts with a package clause is a whole file and is
//     compiled as it is.
//   - Any other block is a fragment. It shows its own imports first (exactly
//     the ones it uses: an unused import fails, as in any Go file). If the
//     rest parses as top-level declarations it stays at file level;
//     otherwise it is the body of a `func() error`, so it may `return err`.
//   - A fragment may use, without declaring them, the names in
//     readmeGivens below: what a user already has (ctx, brokers, conn, ch,
//     nc, …) and their own functions (handle, charge, update, ship, mail,
//     declareTopology). Everything else it must declare, and everything it
//     declares it must use, as Go requires. Add to readmeGivens when a new
//     block needs something a reader obviously has; a given must not share
//     a name with a package a block imports (url, http, …).
//
// Each block becomes a package of its own in a scratch module that
// requires this one, compiled with `go build`. Line directives map the code
// back to the README, so a failure names README.md and the line of the
// broken code, as the compiler reports it.
func TestREADMECompiles(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := goBlocks(readme)
	if len(blocks) == 0 {
		t.Fatal("README.md has no ```go blocks; the extraction is broken")
	}
	repo, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(mod, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The scratch module requires this one from the working tree, with this
	// module's own requirements and sums, so it builds offline against
	// exactly the versions the library is tested with.
	gomod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile("go.sum")
	if err != nil {
		t.Fatal(err)
	}
	scratch := regexp.MustCompile(`(?m)^module .*$`).ReplaceAllString(string(gomod), "module readmecheck")
	scratch += fmt.Sprintf("\nrequire github.com/tracebridge/tracebridge v0.0.0\n\nreplace github.com/tracebridge/tracebridge => %s\n", repo)
	write("go.mod", scratch)
	write("go.sum", string(sum))

	for i, b := range blocks {
		dir := fmt.Sprintf("block%02d_line%d", i+1, b.line)
		src, err := blockFile(b)
		if err != nil {
			t.Errorf("README.md:%d: ```go block does not parse: %v", b.line, err)
			continue
		}
		write(filepath.Join(dir, "block.go"), src)
		if !b.whole {
			write(filepath.Join(dir, "givens.go"), readmeGivens)
		}
	}
	cmd := exec.Command("go", "build", "./...")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("the README's Go blocks do not compile (conventions: see TestREADMECompiles):\n%s", annotate(out, blocks))
	}
}

// readmeGivens declares what README fragments take as given.
const readmeGivens = `package readme

import (
	"context"
	"net/http"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp091 "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// What a user already has.
var (
	ctx                    context.Context
	brokers                []string
	key, value, body, data []byte
	payload                []byte
	readerConfig           kafkago.ReaderConfig
	amqpURL                string              // RabbitMQ
	conn                   *amqp091.Connection // RabbitMQ
	ch                     *amqp091.Channel    // RabbitMQ
	nc                     *nats.Conn          // NATS
	consumer               jetstream.Consumer  // a JetStream consumer
	r                      *http.Request
	mux                    *http.ServeMux
	exporter               sdktrace.SpanExporter
)

// The user's own functions.
func handle(context.Context, kafkago.Message) error  { return nil }
func charge(context.Context, amqp091.Delivery) error { return nil }
func update(context.Context, *nats.Msg)              {}
func ship(context.Context, jetstream.Msg) error      { return nil }
func mail(context.Context, []byte) error             { return nil }
func declareTopology(*amqp091.Channel) error         { return nil }
`

// goBlock is one ```go block of the README.
type goBlock struct {
	line  int    // README line of the block's first code line
	code  string // the code
	whole bool   // a whole file, with its package clause
}

func goBlocks(md []byte) []goBlock {
	var out []goBlock
	lines := strings.Split(string(md), "\n")
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != "```go" {
			continue
		}
		start := i + 1
		j := start
		for j < len(lines) && strings.TrimSpace(lines[j]) != "```" {
			j++
		}
		code := strings.Join(lines[start:j], "\n")
		out = append(out, goBlock{line: start + 1, code: code,
			whole: regexp.MustCompile(`(?m)^package \w+`).MatchString(code)})
		i = j
	}
	return out
}

// blockFile returns the Go file of one block, with line directives that
// point back into README.md.
func blockFile(b goBlock) (string, error) {
	directive := func(line int) string { return fmt.Sprintf("//line README.md:%d\n", line) }
	if b.whole {
		return directive(b.line) + b.code + "\n", nil
	}
	// Split the fragment's imports from the rest.
	const header = "package readme\n"
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "", header+b.code, parser.ImportsOnly)
	if err != nil {
		return "", err
	}
	cut := len(header)
	if n := len(f.Decls); n > 0 {
		cut = fset.Position(f.Decls[n-1].End()).Offset
	}
	imports, rest := (header + b.code)[len(header):cut], (header + b.code)[cut:]
	restLine := b.line + strings.Count(imports, "\n")
	var src bytes.Buffer
	src.WriteString(header)
	src.WriteString(directive(b.line))
	src.WriteString(imports)
	src.WriteString("\n")
	if _, err := parser.ParseFile(token.NewFileSet(), "", header+imports+rest, 0); err == nil {
		src.WriteString(directive(restLine))
		src.WriteString(rest)
	} else {
		src.WriteString("func _() error {\n")
		src.WriteString(directive(restLine))
		src.WriteString(rest)
		src.WriteString("\nreturn nil\n}\n")
	}
	return src.String(), nil
}

// annotate adds, to each compiler error about README.md, which block it is
// in.
func annotate(out []byte, blocks []goBlock) string {
	re := regexp.MustCompile(`README\.md:(\d+)`)
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		b.WriteString(l)
		if m := re.FindStringSubmatch(l); m != nil {
			var n int
			fmt.Sscan(m[1], &n)
			for _, blk := range blocks {
				if n >= blk.line && n <= blk.line+strings.Count(blk.code, "\n") {
					fmt.Fprintf(&b, "   [the ```go block starting at README.md:%d]", blk.line)
					break
				}
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
