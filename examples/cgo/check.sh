#!/usr/bin/env bash
# The C header from Go (cgo), run by `make test`: the Go program's own function shows in its
# CPU profile under the label it pushed through the C API.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
fail() { echo "cgo: FAIL: $*"; echo "0 passed, 1 failed"; exit 1; }
command -v go >/dev/null || fail "go is not installed"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cargo build -q -p pyroscope-ffi -p pyroscope-cli
(cd examples/cgo && CGO_ENABLED=1 go build -o "$dir/cgo-example" .) || fail "go build"
"$dir/cgo-example" "$dir/p" || fail "the Go program failed"
t="$(target/debug/pyroscope top "$dir/p" --tsv --where vehicle=car --where lang=go)"
grep -q "^main.goBurn" <<<"$t" || { echo "$t" | head; fail "main.goBurn missing under vehicle=car"; }
echo "1 passed, 0 failed: Go calls libpyroscope through pyroscope.h"
