# Herald. The two commands a new machine needs:
#   make run    — one gateway, single-node in memory, demo page at http://localhost:8080
#   make test   — installs what tests need (redis-server), then go test -race ./...

GO ?= go

.PHONY: run test deps build vet fuzz bench

run:
	$(GO) run ./cmd/gateway

test: deps
	$(GO) test -race -timeout 20m ./...

deps:
	./scripts/ensure-deps.sh

build:
	$(GO) build -o bin/ ./cmd/...

vet:
	$(GO) vet ./...
