#!/usr/bin/env bash
# The HTML report renders in headless Chromium without script errors, and its flame graphs
# are drawn (run by `make test`, whose `chromium` target installs Debian's chromium). Without
# Chromium this check fails: a check that did not run did not pass.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/lib.sh
fail() { echo "check-report: FAIL: $*"; echo "0 passed, 1 failed"; exit 1; }
command -v chromium >/dev/null || fail "chromium is not installed: run \`make chromium\` as root (Debian's package)"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cargo build -q -p rideshare -p pyroscope-cli
port=$(free_ports 1)
[ -n "$port" ] || fail "no free port from the OS"
REGION=eu-north PORT=$port PYROSCOPE_EXPORT_DIR="$dir/p" PYROSCOPE_UPLOAD_INTERVAL=2 target/debug/rideshare 2>"$dir/rideshare.log" &
pid=$!
wait_listening $pid "$dir/rideshare.log" "$port" 60 || fail "the rideshare service did not come up"
target/debug/rideshare-load 3 10 "http://127.0.0.1:$port" 2>/dev/null
kill -TERM $pid; wait $pid || fail "the rideshare service exited with an error"
target/debug/pyroscope report "$dir/p" --by vehicle --out "$dir/report.html" >/dev/null || fail "report"
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
  --disable-component-update --disable-sync --user-data-dir="$dir/chrome" --window-size=1300,1600)
timeout 60 chromium "${flags[@]}" --enable-logging=stderr --v=0 --screenshot="$dir/shot.png" \
  "file://$dir/report.html" 2>"$dir/console.txt" >/dev/null || fail "chromium could not render the report"
grep -q "Uncaught\|SyntaxError\|ReferenceError" "$dir/console.txt" && { grep "Uncaught\|Error" "$dir/console.txt" | head -5; fail "script errors"; }
[ "$(stat -c %s "$dir/shot.png")" -gt 20000 ] || fail "the screenshot is empty"
timeout 60 chromium "${flags[@]}" --dump-dom "file://$dir/report.html" 2>/dev/null > "$dir/dom.html" || fail "dump-dom"
grep -q "<iframe class=\"flame\"" "$dir/dom.html" || fail "no flame graph frames in the rendered page"
[ "$(grep -o "<iframe class=\"flame\"" "$dir/dom.html" | wc -l)" -ge 3 ] || fail "expected cpu, memory and differential graphs"
cp "$dir/shot.png" "$root/target/report-screenshot.png"
echo "1 passed, 0 failed: the report renders in headless Chromium (screenshot: target/report-screenshot.png)"
