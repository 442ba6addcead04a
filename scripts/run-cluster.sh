#!/usr/bin/env bash
# make run-cluster: Herald's horizontal setup on one machine, without Docker.
# A redis-server (AOF), two gateway replicas, the worker (`worker run`) and
# nginx in front of them, all on loopback; nginx is configured from
# deploy/nginx/herald.conf.template, as in docker-compose.yml and the
# browser tests. Ctrl-C stops everything.
#
# Ports (override through the environment): LB_PORT 8080 (the page),
# GATEWAY_A_PORT 8181, GATEWAY_B_PORT 8182, REDIS_PORT 6391.
set -euo pipefail
cd "$(dirname "$0")/.."

LB_PORT=${LB_PORT:-8080}
GATEWAY_A_PORT=${GATEWAY_A_PORT:-8181}
GATEWAY_B_PORT=${GATEWAY_B_PORT:-8182}
REDIS_PORT=${REDIS_PORT:-6391}

find_program() {
  command -v "$1" 2>/dev/null && return
  [ -x "/usr/sbin/$1" ] && { echo "/usr/sbin/$1"; return; }
  echo "run-cluster: $1 not found; scripts/ensure-deps.sh installs it" >&2
  exit 1
}
REDIS_SERVER=$(find_program redis-server)
NGINX=$(find_program nginx)
find_program curl >/dev/null

work=$(mktemp -d "${TMPDIR:-/tmp}/herald-cluster.XXXXXX")
chmod 755 "$work" # nginx's workers run unprivileged when it runs as root
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "run-cluster: stopping" >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  rm -rf "$work"
}
trap cleanup INT TERM EXIT

# wait_http URL NAME: poll until URL answers 2xx, or give up after 20 s.
wait_http() {
  for _ in $(seq 200); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return
    sleep 0.1
  done
  echo "run-cluster: $2 not ready at $1; its log:" >&2
  tail -n 20 "$work/$2.log" >&2 || true
  exit 1
}

echo "run-cluster: building" >&2
go build -o "$work/bin/" ./cmd/gateway ./cmd/worker

"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work" --appendonly yes --save '' \
  --daemonize no --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
  sleep 0.1
done

export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export HERALD_DEV=true HERALD_DEV_FORCE=true # the demo endpoints, on purpose: a private Redis
export HERALD_API_KEYS=${HERALD_API_KEYS:-local-dev-key-0123456789}
export HERALD_TRUSTED_PROXIES=127.0.0.1/32 # nginx
export HERALD_DRAIN_TIMEOUT=${HERALD_DRAIN_TIMEOUT:-2s}

for node in a b; do
  port=$GATEWAY_A_PORT
  [ "$node" = b ] && port=$GATEWAY_B_PORT
  HERALD_NODE=$node HERALD_ADDR="127.0.0.1:$port" "$work/bin/gateway" >/dev/null 2>"$work/gateway-$node.log" &
  pids+=($!)
  eval "pid_$node=$!"
done
wait_http "http://127.0.0.1:$GATEWAY_A_PORT/readyz" gateway-a
wait_http "http://127.0.0.1:$GATEWAY_B_PORT/readyz" gateway-b

"$work/bin/worker" run 2>"$work/worker.log" &
pids+=($!)

# The same template as compose and the tests, its placeholders filled.
sed -e "s|\${LB_LISTEN}|127.0.0.1:$LB_PORT|g" \
    -e "s|\${LB_UPSTREAM_A}|127.0.0.1:$GATEWAY_A_PORT|g" \
    -e "s|\${LB_UPSTREAM_B}|127.0.0.1:$GATEWAY_B_PORT|g" \
    deploy/nginx/herald.conf.template >"$work/herald.conf"
cat >"$work/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.log;
events { worker_connections 1024; }
http {
    access_log $work/nginx-access.log;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    include $work/herald.conf;
}
EOF
"$NGINX" -p "$work" -c "$work/nginx.conf" -e "$work/nginx.log" &
pids+=($!)
wait_http "http://127.0.0.1:$LB_PORT/nginx-health" nginx

cat <<EOF

  Herald cluster up:  http://127.0.0.1:$LB_PORT   (the demo page, through nginx)

  replicas   a  http://127.0.0.1:$GATEWAY_A_PORT  (pid $pid_a)
             b  http://127.0.0.1:$GATEWAY_B_PORT  (pid $pid_b)
  redis      redis://127.0.0.1:$REDIS_PORT
  API key    $HERALD_API_KEYS
  logs       $work

  Kill the replica the page shows ("served by a": kill -9 $pid_a) and watch it
  reconnect to the other one. Ctrl-C stops everything.

EOF
wait
