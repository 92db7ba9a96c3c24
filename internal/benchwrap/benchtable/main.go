// Command benchtable turns the round files of rounds.sh into the README's
// cost table: per path and mode, the overhead above the raw client of
// tracebridge and of the two hand-written wrappers, in process CPU time
// and allocations per message, as medians over the rounds with the
// spread (min–max) of the per-round values.
//
//	go run ./internal/benchwrap/benchtable /tmp/out/round-*.txt
package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// labels are the README's names of the paths; a path without one is
// shown as "package Benchmark".
var labels = map[string]string{
	"kafka Writer/b100":          "Kafka `Writer`, batches of 100",
	"kafka Writer/b1":            "Kafka `Writer`, one message",
	"kafka Consume":              "Kafka `Consumer` (hand: own `Reader` loop)",
	"kafka Reader":               "Kafka own `Reader` loop on `kafka.NewReader`",
	"kafka BatchConsume":         "Kafka `BatchConsumer` (hand: own loop, 100 a batch)",
	"jobs EnqueueRun":            "jobs enqueue + run (raw: a goroutine pool)",
	"nats CorePublish":           "NATS core publish",
	"nats CoreSubscribe":         "NATS core subscribe",
	"nats CoreRequest":           "NATS core request (reply from a raw responder)",
	"nats JetStreamPublish":      "JetStream publish (waits for each PubAck)",
	"nats JetStreamPublishAsync": "JetStream async publish (all PubAcks awaited)",
	"nats JetStreamConsume":      "JetStream consume + ack",
	"amqp Publish/noconfirm":     "RabbitMQ publish, no confirms",
	"amqp Publish/confirm":       "RabbitMQ publish, confirms (waits for each)",
	"amqp Publish/confirmwindow": "RabbitMQ publish, confirms awaited 100 at a time",
	"amqp Consume":               "RabbitMQ `Consumer` (hand: own loop)",
	"amqp Consume Tracer loop":   "RabbitMQ `Tracer` in the user's own loop",
}

// sample is one row's numbers in one round.
type sample struct{ cpu, allocs float64 }

var line = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+\d+\s+.*?([\d.]+) cpu-µs/msg.*?(\d+) allocs/op`)

func main() {
	// rounds[path][row] holds one sample per round.
	rounds := map[string]map[string][]sample{}
	// base[path] is the path whose raw and hand-written rows a path
	// without its own is measured against.
	base := map[string]string{}
	var order []string
	for _, name := range os.Args[1:] {
		pkg := ""
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "pkg: "); ok {
				pkg = p[strings.LastIndex(p, "/")+1:]
			}
			m := line.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			i := strings.LastIndex(m[1], "/")
			path, row := pkg+" "+strings.TrimPrefix(m[1][:i], "Benchmark"), m[1][i+1:]
			row = strings.TrimPrefix(strings.TrimPrefix(row, "consumer-"), "wrapped-")
			if r, ok := strings.CutPrefix(row, "tracer-"); ok {
				// Another of the benchmark's wrappers (the RabbitMQ Tracer
				// in a loop of the user's own): a path of its own, measured
				// against the same raw and hand-written rows.
				if base[path+" Tracer loop"] == "" {
					base[path+" Tracer loop"] = path
				}
				path, row = path+" Tracer loop", r
			}
			cpu, _ := strconv.ParseFloat(m[3], 64)
			allocs, _ := strconv.ParseFloat(m[4], 64)
			if rounds[path] == nil {
				rounds[path] = map[string][]sample{}
				order = append(order, path)
			}
			rounds[path][row] = append(rounds[path][row], sample{cpu, allocs})
		}
		f.Close()
	}
	fmt.Println("| path | parent | tracebridge CPU µs | hand CPU µs | hand + attrs CPU µs | tracebridge allocs | hand allocs | hand + attrs allocs | tracebridge / hand + attrs, CPU |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, path := range order {
		rows := rounds[path]
		if b := base[path]; b != "" {
			for name, s := range rounds[b] {
				if rows[name] == nil && (name == "raw" || strings.HasPrefix(name, "raw-") || strings.HasPrefix(name, "hand")) {
					rows[name] = s
				}
			}
		}
		for _, mode := range []string{"unsampled", "sampled"} {
			raw := rows["raw"]
			if raw == nil {
				raw = rows["raw-"+mode]
			}
			tb, hand, full := rows[mode], rows["hand-"+mode], rows["handfull-"+mode]
			if raw == nil || tb == nil || hand == nil || full == nil {
				continue
			}
			cpu := func(s []sample) string { return spread(over(s, raw, func(x sample) float64 { return x.cpu }), 1) }
			al := func(s []sample) string { return spread(over(s, raw, func(x sample) float64 { return x.allocs }), 0) }
			tbo := over(tb, raw, func(x sample) float64 { return x.cpu })
			fo := over(full, raw, func(x sample) float64 { return x.cpu })
			var ratios []float64
			for i := range min(len(tbo), len(fo)) {
				ratios = append(ratios, tbo[i]/fo[i])
			}
			label := path
			if l, ok := labels[path]; ok {
				label = l
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", label, mode,
				cpu(tb), cpu(hand), cpu(full), al(tb), al(hand), al(full), spread(ratios, 2))
			// A path whose tracebridge side is a machine of its own (the
			// jobs runner: IDs, timeouts, settling) also gets a line with
			// that machine, untraced, as tracebridge's raw row: the cost of
			// the tracing alone, against the hand-written wrappers' over
			// the raw client.
			if own := rows["untraced"]; own != nil {
				tbo := over(tb, own, func(x sample) float64 { return x.cpu })
				ratios = ratios[:0]
				for i := range min(len(tbo), len(fo)) {
					ratios = append(ratios, tbo[i]/fo[i])
				}
				fmt.Printf("| jobs: the runner's tracing alone (raw: the runner, untraced) | %s | %s | %s | %s | %s | %s | %s | %s |\n", mode,
					spread(tbo, 1), cpu(hand), cpu(full),
					spread(over(tb, own, func(x sample) float64 { return x.allocs }), 0), al(hand), al(full), spread(ratios, 2))
			}
		}
	}
}

// over is each round's value of s minus the raw row's in the same round.
func over(s, raw []sample, v func(sample) float64) []float64 {
	var out []float64
	for i := range min(len(s), len(raw)) {
		out = append(out, v(s[i])-v(raw[i]))
	}
	return out
}

// spread formats the median of xs with its min–max.
func spread(xs []float64, prec int) string {
	if len(xs) == 0 {
		return "–"
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	if len(s) == 1 {
		return strconv.FormatFloat(med, 'f', prec, 64)
	}
	return fmt.Sprintf("%s (%s…%s)", strconv.FormatFloat(med, 'f', prec, 64),
		strconv.FormatFloat(s[0], 'f', prec, 64), strconv.FormatFloat(s[len(s)-1], 'f', prec, 64))
}
