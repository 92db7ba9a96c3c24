#!/bin/sh
# rounds.sh OUT ROUNDS: builds the broker and jobs packages' benchmark binaries once
# and runs the yardstick rows (raw client, tracebridge, the hand-written
# wrappers) in ROUNDS interleaved rounds, one output file per round in
# OUT. `go run ./internal/benchwrap/benchtable OUT/round-*.txt` then
# turns them into the README's table. Needs the brokers of internal/testenv.
set -eu
out=${1:?out dir}
rounds=${2:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
for p in kafka nats amqp jobs; do
	(cd "$root" && go test -c -o "$out/$p.test" "./$p")
done
rows='^(raw|untraced|raw-unsampled|raw-sampled|unsampled|sampled|wrapped-unsampled|wrapped-sampled|consumer-unsampled|consumer-sampled|tracer-unsampled|tracer-sampled|(consumer-)?hand(full)?-(un)?sampled)$'
bench() { # package, benchmark regexp, iterations
	(cd "$root/$1" && TRACEBRIDGE_REQUIRE_BROKERS=1 "$out/$1.test" -test.run '^$' -test.benchmem \
		-test.bench "$2/$rows" -test.benchtime "$3x")
}
r=1
while [ "$r" -le "$rounds" ]; do
	f="$out/round-$r.txt"
	: >"$f"
	bench kafka 'BenchmarkWriter/b100' 5000 >>"$f"
	bench kafka 'BenchmarkWriter/b1$' 2000 >>"$f"
	bench kafka 'BenchmarkConsume' 10000 >>"$f"
	bench kafka 'BenchmarkReader$' 10000 >>"$f"
	bench kafka 'BenchmarkBatchConsume' 10000 >>"$f"
	bench jobs 'BenchmarkEnqueueRun' 20000 >>"$f"
	bench nats 'BenchmarkCorePublish' 50000 >>"$f"
	bench nats 'BenchmarkCoreSubscribe' 100000 >>"$f"
	bench nats 'BenchmarkCoreRequest' 3000 >>"$f"
	bench nats 'BenchmarkJetStreamPublish$' 2000 >>"$f"
	bench nats 'BenchmarkJetStreamPublishAsync' 5000 >>"$f"
	bench nats 'BenchmarkJetStreamConsume' 20000 >>"$f"
	bench amqp 'BenchmarkPublish/noconfirm' 20000 >>"$f"
	bench amqp 'BenchmarkPublish/^confirm$' 2000 >>"$f"
	bench amqp 'BenchmarkPublish/^confirmwindow$' 5000 >>"$f"
	bench amqp 'BenchmarkConsume' 10000 >>"$f"
	r=$((r + 1))
done
