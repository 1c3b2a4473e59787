#!/usr/bin/env bash
# Installs a Debian package once when the command a check needs is missing:
#   scripts/apt-need.sh COMMAND PACKAGE WHY
# Without root or apt-get it fails with what to install: `make test` never skips a check.
set -euo pipefail
cmd="$1" pkg="$2" why="$3"
command -v "$cmd" >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup: $cmd is missing: install Debian's $pkg package (apt-get install $pkg) as root ($why)"
  exit 1
fi
echo "setup: installing Debian's $pkg for $why (once)..."
log=$(mktemp)
if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg") >"$log" 2>&1; then
  tail -20 "$log"
  echo "setup: apt-get install $pkg failed"
  rm -f "$log"
  exit 1
fi
rm -f "$log"
command -v "$cmd" >/dev/null || { echo "setup: $cmd still missing after apt-get install $pkg"; exit 1; }
echo "setup: $("$cmd" --version 2>/dev/null | head -1)"
