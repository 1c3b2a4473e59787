#!/usr/bin/env bash
# make demo: the rideshare story on the embedded default (no server), then the top tables.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${DEMO_SECONDS:-60}"
out="$root/demo/profiles"
pyout="$root/demo/profiles-python"
nodeout="$root/demo/profiles-node"
rm -rf "$out" "$pyout" "$nodeout"; mkdir -p "$out" "$pyout" "$nodeout"

echo "==> building (release)"
cargo build --release -q -p rideshare -p pyroscope-cli
bin="$root/target/release"
echo "==> installing the Python rideshare (venv under target/rideshare-python)"
examples/rideshare/python/run --build-only
echo "==> installing the Node rideshare (npm ci in examples/rideshare/node)"
examples/rideshare/node/run --build-only

source "$root/scripts/lib.sh"

# One line per region: its in-use memory (MiB) window after window, from the profiles in $1.
inuse_lines() {
  local region v series
  for region in us-east eu-north ap-south; do
    series=""
    for v in $(inuse_series "$1" $region); do
      series="$series $(awk -v b="$v" 'BEGIN { printf "%.1f", b / 1048576 }')"
    done
    echo "  $region:$series"
  done
}
pids=() urls=() logs=() listen=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
regions=(us-east eu-north ap-south)
# Starts one service per region on ports the OS hands out: $1 names its logs (demo/$1-REGION.log),
# $2 is its profiles folder, $3 its application name (empty: the program's own), then the command.
launch() {
  local name=$1 dir=$2 app=$3 i ports
  shift 3
  read -r -a ports <<<"$(free_ports 3)"
  [ "${#ports[@]}" -eq 3 ] || { echo "demo: no free ports from the OS"; exit 1; }
  for i in 0 1 2; do
    env REGION="${regions[$i]}" PORT="${ports[$i]}" PYROSCOPE_EXPORT_DIR="$dir" PYROSCOPE_UPLOAD_INTERVAL=5 \
      ${app:+PYROSCOPE_APPLICATION_NAME="$app"} "$@" 2>"$root/demo/$name-${regions[$i]}.log" &
    pids+=($!)
    urls+=("http://127.0.0.1:${ports[$i]}")
    logs+=("$root/demo/$name-${regions[$i]}.log")
    listen+=("${ports[$i]}")
  done
}
launch rideshare "$out" "" "$bin/rideshare"
# The same story in Python (Flask) and in Node (express), their profiles in their own folders.
launch rideshare-python "$pyout" ride-sharing-app-python examples/rideshare/python/run
launch rideshare-node "$nodeout" ride-sharing-app-node examples/rideshare/node/run
for i in "${!pids[@]}"; do
  wait_listening "${pids[$i]}" "${logs[$i]}" "${listen[$i]}" 60
done
echo "==> load on all three regions, Rust, Python and Node, for ${secs}s (5 req/s each): ${urls[*]}"
"$bin/rideshare-load" "$secs" 5 "${urls[@]}"
echo "==> stopping services (each flushes its last window)"
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
echo "==> $(ls "$out" | wc -l) profiles in $out"
report="$root/demo/report.html"
"$bin/pyroscope" report "$out" --by region --out "$report" >/dev/null
echo
echo "==> CPU, top functions by total, region=eu-north"
"$bin/pyroscope" top "$out" --type cpu --where region=eu-north --sort total --limit 12
echo
echo "==> CPU, eu-north vs ap-south (mutex_lock runs only in eu-north)"
"$bin/pyroscope" diff "$out" --left region=eu-north --right region=ap-south --limit 12
for region in us-east eu-north; do
  echo
  echo "==> memory allocated (alloc_space), region=$region"
  "$bin/pyroscope" top "$out" --type alloc_space --where region=$region --sort total --limit 10
done
echo
echo "==> memory in use at the end of each window (inuse_space, MiB): us-east leaks, the others stay flat"
inuse_lines "$out"
echo
echo "==> Python: CPU per region (eu-north busy-waits), then memory in use per window (us-east leaks)"
for region in us-east eu-north ap-south; do
  echo "  $region: $("$bin/pyroscope" top "$pyout" --tsv --type cpu --where region=$region 2>/dev/null | head -1 | cut -f2) ns CPU"
done
inuse_lines "$pyout"
"$bin/pyroscope" report "$pyout" --by region --out "$root/demo/report-python.html" >/dev/null
echo
echo "==> Node: CPU per region (eu-north busy-waits in mutexLock)"
for region in us-east eu-north ap-south; do
  t="$("$bin/pyroscope" top "$nodeout" --tsv --type cpu --where region=$region 2>/dev/null)"
  mutex=$(awk -F'\t' '$1 ~ /:mutexLock:[0-9]+$/ { print $3; exit }' <<<"$t")
  echo "  $region: $(head -1 <<<"$t" | cut -f2) ns CPU, ${mutex:-0} ns in mutexLock"
done
if ls "$nodeout"/*.memory.*.pb.gz >/dev/null 2>&1; then
  echo "==> Node: memory in use per window (MiB; us-east leaks)"
  inuse_lines "$nodeout"
fi
"$bin/pyroscope" report "$nodeout" --by region --out "$root/demo/report-node.html" >/dev/null
echo
echo "==> Python report: $root/demo/report-python.html"
echo "==> Node report: $root/demo/report-node.html"
echo "==> report (flame graphs, tables, tag comparison): $report"
