#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: redis-server from
# the system package manager. Tests start their own redis-server on free
# loopback ports; nothing here starts or touches a running Redis.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing: ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if command -v apt-get >/dev/null 2>&1; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
elif command -v dnf >/dev/null 2>&1; then
  $sudo dnf install -y redis
elif command -v brew >/dev/null 2>&1; then
  brew install redis
else
  echo "please install: ${need[*]}" >&2
  exit 1
fi
