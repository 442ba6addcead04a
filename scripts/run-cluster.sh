#!/usr/bin/env bash
# make run-cluster: Herald's horizontal setup on one machine, without Docker.
# Redis, two gateway replicas, the worker (`worker run`) and nginx in front
# of them, all on loopback; nginx is configured from
# deploy/nginx/herald.conf.template, as in docker-compose.yml and the
# browser tests. Ctrl-C stops everything.
#
# REDIS_MODE (make run-cluster REDIS_MODE=cluster) chooses the Redis:
#   single    one redis-server with AOF (the default)
#   cluster   a Redis Cluster of 3 masters with a replica each (6 nodes,
#             ports REDIS_PORT … REDIS_PORT+5), gateways in cluster mode
#   sentinel  a primary with a replica, watched by one Sentinel (ports
#             REDIS_PORT, +1, and +2 for the Sentinel)
# (In cluster and sentinel modes every publish waits for a replica, the
# gateways' default HERALD_REDIS_REPLICA_ACKS=1.)
#
#   scripts/run-cluster.sh              start the cluster (what make run-cluster runs)
#   scripts/run-cluster.sh restart a    from another terminal: start replica a (or b)
#                                       again after it was killed
#
# Logs, binaries and Redis's files live in $HERALD_CLUSTER_DIR (default
# $TMPDIR/herald-cluster, else /tmp/herald-cluster), kept after the cluster
# stops, until the next start.
#
# Ports (override through the environment): LB_PORT 8080 (the page),
# GATEWAY_A_PORT 8181, GATEWAY_B_PORT 8182, REDIS_PORT 6391.
set -euo pipefail
cd "$(dirname "$0")/.."

work=${HERALD_CLUSTER_DIR:-${TMPDIR:-/tmp}/herald-cluster}

# alive NAME: the process recorded as NAME in $work/pids runs.
alive() {
  local pid
  pid=$(cat "$work/pids/$1" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null
}

# start_gateway NODE: runs replica NODE in the background, its log appended
# to $work/gateway-NODE.log, and records its pid. The environment is the
# cluster's ($work/env).
start_gateway() {
  local node=$1 port
  port=$GATEWAY_A_PORT
  [ "$node" = b ] && port=$GATEWAY_B_PORT
  HERALD_NODE=$node HERALD_ADDR="127.0.0.1:$port" "$work/bin/gateway" >/dev/null 2>>"$work/gateway-$node.log" &
  echo $! >"$work/pids/gateway-$node"
}

# wait_http URL NAME: poll until URL answers 2xx, or give up after 20 s.
wait_http() {
  for _ in $(seq 200); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return
    sleep 0.1
  done
  echo "run-cluster: $2 not ready at $1; its log ($work/$2.log):" >&2
  tail -n 20 "$work/$2.log" >&2 || true
  exit 1
}

# restart NODE, from another terminal while the cluster runs: the replica
# comes back with the cluster's settings; the cluster's Ctrl-C stops it too.
if [ "${1:-}" = restart ]; then
  node=${2:-}
  case "$node" in
    a | b) ;;
    *) echo "usage: $0 restart a|b" >&2; exit 2 ;;
  esac
  if [ ! -f "$work/env" ] || ! alive nginx; then
    echo "run-cluster: no cluster running from $work: start one with make run-cluster" >&2
    exit 1
  fi
  if alive "gateway-$node"; then
    echo "run-cluster: replica $node runs already (pid $(cat "$work/pids/gateway-$node"))" >&2
    exit 1
  fi
  # shellcheck source=/dev/null
  . "$work/env"
  echo "--- restarted $(date -u +%FT%TZ)" >>"$work/gateway-$node.log"
  start_gateway "$node"
  port=$GATEWAY_A_PORT
  [ "$node" = b ] && port=$GATEWAY_B_PORT
  wait_http "http://127.0.0.1:$port/readyz" "gateway-$node"
  echo "run-cluster: replica $node is back (pid $(cat "$work/pids/gateway-$node")), log $work/gateway-$node.log"
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [restart a|b]" >&2; exit 2; }

LB_PORT=${LB_PORT:-8080}
GATEWAY_A_PORT=${GATEWAY_A_PORT:-8181}
GATEWAY_B_PORT=${GATEWAY_B_PORT:-8182}
REDIS_PORT=${REDIS_PORT:-6391}
REDIS_MODE=${REDIS_MODE:-single}
case "$REDIS_MODE" in
  single | cluster | sentinel) ;;
  *) echo "run-cluster: REDIS_MODE=$REDIS_MODE: want single, cluster or sentinel" >&2; exit 2 ;;
esac

find_program() {
  command -v "$1" 2>/dev/null && return
  [ -x "/usr/sbin/$1" ] && { echo "/usr/sbin/$1"; return; }
  echo "run-cluster: $1 not found; scripts/ensure-deps.sh installs it" >&2
  exit 1
}
REDIS_SERVER=$(find_program redis-server)
REDIS_CLI=$(find_program redis-cli)
NGINX=$(find_program nginx)
find_program curl >/dev/null

# The last run's files go now, unless that run still runs.
if [ -d "$work/pids" ]; then
  for f in "$work"/pids/*; do
    [ -e "$f" ] || continue
    if alive "$(basename "$f")"; then
      echo "run-cluster: a cluster from $work still runs ($(basename "$f"), pid $(cat "$f")): stop it first" >&2
      exit 1
    fi
  done
fi
rm -rf "$work"
mkdir -p "$work/pids"
chmod 755 "$work" # nginx's workers run unprivileged when it runs as root

stopping=
cleanup() {
  trap - INT TERM EXIT
  stopping=1
  echo "run-cluster: stopping" >&2
  local pids=()
  for f in "$work"/pids/*; do
    [ -e "$f" ] && pids+=("$(cat "$f")")
  done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # A restarted replica is not this shell's child: wait for it by polling.
  for _ in $(seq 150); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.1
  done
  wait || true
  echo "run-cluster: logs kept in $work until the next make run-cluster" >&2
}
trap cleanup INT TERM EXIT

echo "run-cluster: building" >&2
go build -o "$work/bin/" ./cmd/gateway ./cmd/worker

# start_redis NAME PORT ARGS...: a redis-server (or Sentinel) of the
# cluster, its files in $work/NAME, its pid recorded as NAME.
start_redis() {
  local name=$1 port=$2
  shift 2
  mkdir -p "$work/$name"
  "$REDIS_SERVER" "$@" --port "$port" --bind 127.0.0.1 --dir "$work/$name" \
    --daemonize no --logfile "$work/$name.log" &
  echo $! >"$work/pids/$name"
  for _ in $(seq 100); do
    "$REDIS_CLI" -p "$port" ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "run-cluster: $name did not start; its log ($work/$name.log):" >&2
  tail -n 20 "$work/$name.log" >&2 || true
  exit 1
}

redis_mode_env=
case "$REDIS_MODE" in
  single)
    start_redis redis "$REDIS_PORT" --appendonly yes --save ''
    redis_url="redis://127.0.0.1:$REDIS_PORT"
    ;;
  cluster)
    nodes=()
    redis_url="redis://127.0.0.1:$REDIS_PORT"
    for i in 0 1 2 3 4 5; do
      port=$((REDIS_PORT + i))
      start_redis "redis-$i" "$port" --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout 2000 --appendonly yes --save '' --repl-diskless-sync-delay 0
      nodes+=("127.0.0.1:$port")
      [ "$i" -gt 0 ] && redis_url+=$([ "$i" -eq 1 ] && echo "?" || echo "&")"addr=127.0.0.1:$port"
    done
    "$REDIS_CLI" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$work/cluster-create.log" 2>&1 ||
      { echo "run-cluster: redis-cli --cluster create failed:" >&2; tail -n 20 "$work/cluster-create.log" >&2; exit 1; }
    for _ in $(seq 200); do
      "$REDIS_CLI" -p "$REDIS_PORT" cluster info 2>/dev/null | grep -q cluster_state:ok && break
      sleep 0.1
    done
    redis_mode_env="export HERALD_REDIS_MODE=cluster"
    ;;
  sentinel)
    start_redis redis-primary "$REDIS_PORT" --appendonly yes --save '' --repl-diskless-sync-delay 0
    start_redis redis-replica "$((REDIS_PORT + 1))" --replicaof 127.0.0.1 "$REDIS_PORT" --appendonly yes --save ''
    mkdir -p "$work/sentinel"
    printf 'sentinel monitor herald 127.0.0.1 %s 1\nsentinel down-after-milliseconds herald 2000\nsentinel failover-timeout herald 10000\n' \
      "$REDIS_PORT" >"$work/sentinel/sentinel.conf"
    # Sentinel rewrites its config file: it is the first argument.
    "$REDIS_SERVER" "$work/sentinel/sentinel.conf" --sentinel --port "$((REDIS_PORT + 2))" --bind 127.0.0.1 \
      --dir "$work/sentinel" --daemonize no --logfile "$work/sentinel.log" &
    echo $! >"$work/pids/sentinel"
    redis_url="redis://127.0.0.1:$((REDIS_PORT + 2))?master_name=herald"
    redis_mode_env="export HERALD_REDIS_MODE=sentinel"
    # Until the Sentinel answers for the master, the gateways cannot start.
    for _ in $(seq 200); do
      "$REDIS_CLI" -p "$((REDIS_PORT + 2))" sentinel get-master-addr-by-name herald 2>/dev/null | grep -q 127.0.0.1 && break
      sleep 0.1
    done
    ;;
esac

# The cluster's settings, kept for `restart`.
cat >"$work/env" <<EOF
export REDIS_URL="$redis_url"
$redis_mode_env
export HERALD_DEV=true HERALD_DEV_FORCE=true # the demo endpoints, on purpose: a private Redis
export HERALD_API_KEYS="${HERALD_API_KEYS:-local-dev-key-0123456789}"
export HERALD_TRUSTED_PROXIES=127.0.0.1/32 # nginx
export HERALD_DRAIN_TIMEOUT="${HERALD_DRAIN_TIMEOUT:-2s}"
GATEWAY_A_PORT=$GATEWAY_A_PORT
GATEWAY_B_PORT=$GATEWAY_B_PORT
EOF
# shellcheck source=/dev/null
. "$work/env"

for node in a b; do
  start_gateway "$node"
done
wait_http "http://127.0.0.1:$GATEWAY_A_PORT/readyz" gateway-a
wait_http "http://127.0.0.1:$GATEWAY_B_PORT/readyz" gateway-b

"$work/bin/worker" run 2>"$work/worker.log" &
echo $! >"$work/pids/worker"

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
echo $! >"$work/pids/nginx"
wait_http "http://127.0.0.1:$LB_PORT/nginx-health" nginx

cat <<EOF

  Herald cluster up:  http://127.0.0.1:$LB_PORT   (the demo page, through nginx)

  replicas   a  http://127.0.0.1:$GATEWAY_A_PORT  (pid $(cat "$work/pids/gateway-a"))
             b  http://127.0.0.1:$GATEWAY_B_PORT  (pid $(cat "$work/pids/gateway-b"))
  redis      $REDIS_URL  ($REDIS_MODE)
  API key    $HERALD_API_KEYS
  logs       $work  (kept until the next start)

  Kill the replica the page shows ("served by a": kill -9 $(cat "$work/pids/gateway-a")) and watch it
  reconnect to the other one; bring it back with: scripts/run-cluster.sh restart a
  Jobs for the page's user through the worker:
    REDIS_URL='$REDIS_URL' HERALD_REDIS_MODE=$REDIS_MODE $work/bin/worker demo --user alice --count 5
  Ctrl-C stops everything.

EOF

# Say which process ended, and how to bring a replica back (wait -p needs
# bash 5.1; an older bash just waits).
if [ "${BASH_VERSINFO[0]}${BASH_VERSINFO[1]}" -lt 51 ]; then
  wait
  exit 0
fi
while :; do
  ended=
  wait -n -p ended 2>/dev/null || true # bash reports a killed job itself: we say more below
  [ -n "$stopping" ] && break
  [ -n "${ended:-}" ] || break # no children left (bash unsets it when a signal ends the wait)
  for f in "$work"/pids/*; do
    [ "$(cat "$f" 2>/dev/null)" = "$ended" ] || continue
    name=$(basename "$f")
    case "$name" in
      gateway-*) echo "run-cluster: replica ${name#gateway-} (pid $ended) exited; its log: $work/$name.log; restart it with: scripts/run-cluster.sh restart ${name#gateway-}" >&2 ;;
      *) echo "run-cluster: $name (pid $ended) exited; its log is in $work" >&2 ;;
    esac
  done
done
