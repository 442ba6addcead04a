#!/usr/bin/env bash
# Counts the instructions Redis spends per published event, with
# redis-server under callgrind (instruction counts are repeatable whatever
# else the machine does). Runs BenchmarkAppend twice against one private
# redis-server on a free loopback port and divides the difference:
#   scripts/redis-cost.sh [N]        (N events in the larger run, default 4000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-4000}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
count() { # events → total instructions of a fresh redis-server after that many
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >/dev/null 2>&1 &
  local pid=$!
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.2; done
  HERALD_BENCH_REDIS=127.0.0.1:$port go test -run '^$' -bench "${BENCH:-BenchmarkAppend}\$" -benchtime "$1x" ./internal/events/ >"$dir/bench.log" || { cat "$dir/bench.log" >&2; return 1; }
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait "$pid" || true
  callgrind_annotate "$dir/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'
}
small=$(count $((n / 4)))
large=$(count "$n")
echo "instructions per event: $(( (large - small) / (n - n / 4) )) (Redis $(redis-server --version | awk '{print $3}'), $((n - n / 4)) events)"
