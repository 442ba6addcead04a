#!/usr/bin/env bash
# Installs what the test suite needs when it is missing, from the system
# package manager: redis-server (tests start their own on free loopback
# ports), nginx and chromium (the browser tests in e2e/ run them as their own
# processes), and node (the browser client's unit tests, `node --test`, no
# npm packages). Nothing here starts or touches a running service.
set -euo pipefail

have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]
}

# need: Debian package names; dnf/brew names follow in the case below.
need=()
have redis-server || need+=(redis-server)
have nginx || need+=(nginx)
have chromium || have chromium-browser || have google-chrome || need+=(chromium)
have node || need+=(nodejs)
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing: ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if command -v apt-get >/dev/null 2>&1; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
elif command -v dnf >/dev/null 2>&1; then
  pkgs=("${need[@]/redis-server/redis}")
  $sudo dnf install -y "${pkgs[@]}"
elif command -v brew >/dev/null 2>&1; then
  for p in "${need[@]}"; do
    case "$p" in
      redis-server) brew install redis ;;
      nodejs) brew install node ;;
      chromium) brew install --cask chromium ;;
      *) brew install "$p" ;;
    esac
  done
else
  echo "please install: ${need[*]}" >&2
  exit 1
fi
