# syntax=docker/dockerfile:1
# Herald's image: the gateway, the worker and a health probe, as static
# binaries in a minimal image that runs as an unprivileged user.
#
#   docker build -t herald .
#   docker run --rm -p 8080:8080 herald      # one gateway, in memory, demo page on :8080
#
# docker-compose.yml runs the whole stack from it.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# Static binaries: no libc in the final image.
ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/gateway ./cmd/gateway && \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/worker ./cmd/worker && \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/probe ./deploy/probe

# Nothing but the binaries, CA certificates and time zones; no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER nonroot:nonroot
EXPOSE 8080
CMD ["/usr/local/bin/gateway"]
