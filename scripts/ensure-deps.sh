#!/usr/bin/env bash
# Installs what `make test` and `make run-cluster` need when it is missing,
# from the system package manager: redis-server (tests start their own on
# free loopback ports), nginx and chromium (the browser tests in e2e/ run
# them as their own processes), node (the browser client's unit tests,
# `node --test`), npm (e2e/npm_test.go packs the client and installs it,
# with typescript and esbuild from the npm registry, into a scratch
# project), a C compiler and the C library headers
# (`go test -race` needs cgo) and curl (scripts/run-cluster.sh polls with it).
#
# Nothing here starts or touches a running service. Debian's nginx and
# redis-server packages start their service when installed (on :80 and
# :6379, and the install fails when that port is taken), so while apt-get
# runs, a /usr/sbin/policy-rc.d that refuses every start is in place (unless
# the machine has its own already, as container images do); it is removed
# afterwards. dnf and brew do not start services on install.
set -euo pipefail

have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]
}

# The C compiler go uses for cgo (gcc on Linux), and whether it finds the C
# library's headers (gcc alone, without libc6-dev, cannot build cgo code).
cc=$(go env CC 2>/dev/null || true)
cc=${cc%% *}
cc=${cc:-gcc}
cc_works() {
  have "$cc" && printf '#include <stdlib.h>\n' | "$cc" -E -x c - >/dev/null 2>&1
}

# need: Debian package names; the other package managers' names follow below.
need=()
have redis-server || need+=(redis-server)
have nginx || need+=(nginx)
have chromium || have chromium-browser || have google-chrome || need+=(chromium)
have node || need+=(nodejs)
have npm || need+=(npm)
cc_works || need+=(gcc)
have curl || need+=(curl)
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing: ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

policy=/usr/sbin/policy-rc.d
policy_mark="written by Herald's scripts/ensure-deps.sh"

# deny_service_starts puts a policy-rc.d in place that refuses every service
# start (exit 101, which invoke-rc.d and deb-systemd-invoke obey) until this
# script exits. A policy-rc.d the machine already has is left alone.
deny_service_starts() {
  [ -e "$policy" ] && return 0
  trap allow_service_starts EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  # set -C: never overwrite a policy-rc.d that appeared meanwhile.
  printf '#!/bin/sh\n# %s while it installs packages:\n# start no service. Delete this file if it outlived the install.\nexit 101\n' "$policy_mark" |
    $sudo sh -c 'set -C && cat >"$1" && chmod 755 "$1"' sh "$policy"
}

allow_service_starts() {
  if [ -f "$policy" ] && grep -qF "$policy_mark" "$policy" 2>/dev/null; then
    $sudo rm -f "$policy" || echo "ensure-deps: could not remove $policy: delete it by hand" >&2
  fi
}

if command -v apt-get >/dev/null 2>&1; then
  pkgs=()
  for p in "${need[@]}"; do
    case "$p" in
      gcc) pkgs+=(gcc libc6-dev) ;;
      *) pkgs+=("$p") ;;
    esac
  done
  deny_service_starts
  $sudo apt-get update -qq
  # env: sudo resets the environment, so the variable goes through as an argument.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
elif command -v dnf >/dev/null 2>&1; then
  pkgs=()
  for p in "${need[@]}"; do
    case "$p" in
      redis-server) pkgs+=(redis) ;;
      gcc) pkgs+=(gcc glibc-devel) ;;
      *) pkgs+=("$p") ;;
    esac
  done
  $sudo dnf install -y "${pkgs[@]}"
elif command -v brew >/dev/null 2>&1; then
  for p in "${need[@]}"; do
    case "$p" in
      redis-server) brew install redis ;;
      nodejs) brew install node ;;
      npm) ;; # comes with brew's node
      chromium) brew install --cask chromium ;;
      gcc) echo "no C compiler ($cc) for go test -race: install Xcode's command line tools (xcode-select --install)" >&2 ;;
      *) brew install "$p" ;;
    esac
  done
else
  echo "please install: ${need[*]}" >&2
  exit 1
fi
