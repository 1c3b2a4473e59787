#!/usr/bin/env bash
# Independent decoder check: profiles written by the agent must be readable by `go tool pprof`
# and show the rideshare functions.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if ! command -v go >/dev/null; then echo "go not found; skipping go tool pprof check"; exit 0; fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cargo build -q -p rideshare
REGION=eu-north PORT=5099 PYROSCOPE_EXPORT_DIR="$dir" PYROSCOPE_UPLOAD_INTERVAL=2 target/debug/rideshare 2>/dev/null &
pid=$!
sleep 0.5
target/debug/rideshare-load 4 10 http://127.0.0.1:5099 2>/dev/null
kill -TERM $pid; wait $pid || true
f=$(ls "$dir"/*.pb.gz | head -1)
go tool pprof -raw "$f" > "$dir/raw.txt" 2>/dev/null
go tool pprof -top -tagfocus=vehicle=car "$f" > "$dir/top.txt" 2>/dev/null
for fn in find_nearest_vehicle check_driver_availability mutex_lock; do
  grep -q "$fn" "$dir/raw.txt" || { echo "go tool pprof: $fn missing in $f"; exit 1; }
done
grep -q "mutex_lock" "$dir/top.txt" || { echo "go tool pprof -tagfocus=vehicle=car lost mutex_lock"; exit 1; }
grep -q "region:\[eu-north\]" "$dir/raw.txt" || { echo "go tool pprof: region label missing"; exit 1; }
echo "1 passed, 0 failed: go tool pprof reads our profiles ($(ls "$dir"/*.pb.gz | wc -l) files)"
