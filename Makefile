# Herald. The two commands a new machine needs:
#   make run    — one gateway, single-node in memory, demo page at http://127.0.0.1:8080
#   make test   — installs what tests need (redis-server, nginx, chromium, node, npm, gcc for -race), then
#                 go test -race -count=1 ./... and a short run (5,000 inputs) of every fuzz target
# And one to try the horizontal setup without Docker:
#   make run-cluster — Redis, two replicas, the worker and nginx on loopback, page at http://127.0.0.1:8080
#                      (REDIS_MODE=cluster: a Redis Cluster; REDIS_MODE=sentinel: Sentinel failover)

GO ?= go

.PHONY: run run-cluster test test-web test-e2e deps build vet fuzz bench

# On loopback unless HERALD_ADDR says otherwise: dev mode lets anyone log in
# as anyone. The gateway prints the page's URL.
run:
	HERALD_ADDR=$${HERALD_ADDR:-127.0.0.1:8080} $(GO) run ./cmd/gateway

# REDIS_MODE=cluster: a 6-node Redis Cluster; REDIS_MODE=sentinel: a primary,
# a replica and a Sentinel (see scripts/run-cluster.sh).
REDIS_MODE ?= single
run-cluster: deps
	REDIS_MODE=$(REDIS_MODE) ./scripts/run-cluster.sh

# -count=1: never a cached pass. go test caches a package's result by the Go
# files and the files its tests open, but the e2e tests build the binaries
# with a child `go build` and the web tests run node on .mjs files, neither
# of which go test tracks: a cached pass there could hide a change.
test: deps
	$(GO) test -race -count=1 -timeout 20m ./...
	./scripts/fuzz.sh 5000x

# Every fuzz target for longer (FUZZTIME each); crashers land in testdata/fuzz.
FUZZTIME ?= 2m
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

# The browser client's unit tests alone (also part of `make test`).
test-web:
	node --test web/test/

# The browser and deployment tests alone (also part of `make test`).
test-e2e: deps
	$(GO) test -race -count=1 ./e2e/

deps:
	./scripts/ensure-deps.sh

# Every load of cmd/load's suite for Herald and the bare baseline, alternating,
# with a fresh server per run; under 5 minutes on 2 cores. Prints one JSON line
# per run, then a table with Herald/baseline ratios (docs/BENCHMARKS.md).
# BENCH_ARGS passes more flags to the suite, e.g. BENCH_ARGS="-runs 3".
BENCH_ARGS ?=
bench: deps
	$(GO) build -o bin/ ./cmd/gateway ./cmd/load ./bench/baseline
	bin/load bench -out bin/bench.jsonl -args "-commit $$(git describe --always --dirty)" $(BENCH_ARGS)

build:
	$(GO) build -o bin/ ./cmd/... ./deploy/probe

vet:
	$(GO) vet ./...
