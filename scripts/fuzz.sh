#!/usr/bin/env bash
# Runs every fuzz target for the given -fuzztime each (default 3s): `make
# test` runs them briefly, `make fuzz` longer. New crashers land in the
# package's testdata/fuzz/ and fail the run. `make test` gives a count
# (5000x), not a duration: Go 1.26's fuzz coordinator can report a
# duration's end as "context deadline exceeded" when a worker is busy at
# that moment on a loaded machine (go.dev/issue/75804, fixed in Go 1.27).
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${1:-3s}"
targets=(
  "./internal/gateway FuzzDecodeFrame"
  "./internal/gateway FuzzDecodePublication"
  "./internal/gateway FuzzParseCursor"
  "./internal/gateway FuzzFrameScanner"
  "./internal/gateway FuzzStrictFields"
  "./internal/origin FuzzOrigin"
  "./internal/events FuzzParseChannel"
  "./internal/events FuzzParseClassic"
  "./internal/session FuzzDecodeSession"
)
for t in "${targets[@]}"; do
  set -- $t
  echo "fuzz $2 ($1) for $fuzztime"
  go test -run '^$' -fuzz "^$2\$" -fuzztime "$fuzztime" "$1"
done
