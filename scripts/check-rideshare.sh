#!/usr/bin/env bash
# End-to-end story check (run by `make test`): the rideshare of one language (`rust`, the
# default, `c`, `python` or `node`) in three regions under equal load, profiles on the embedded
# default, then from the profiles alone:
#  - eu-north uses the most CPU per request;
#  - only eu-north has mutex_lock;
#  - find_nearest_vehicle's total contains check_driver_availability's;
#  - every sample inside check_driver_availability (called in the vehicle label's scope)
#    carries a vehicle label, and so do all of find_nearest_vehicle's but the few spent inside
#    the label calls themselves, before the label is set or after it is removed (at most 3%);
#  - us-east has the most alloc_space, inside do_work (not for Node: V8's heap profile is
#    in-use memory), and its inuse_space grows window after window while eu-north's stays flat
#    (for Node, the bytes allocated in do_work: the whole JS heap holds uncollected garbage);
#  - `go tool pprof` (an independent decoder) reads the files and sees the same.
# Python: the checks that name functions need the CPython walker (Python frames on samples);
# RIDESHARE_FRAMES=0 runs only the others (CPU per request, alloc_space per region, in-use growth).
# Node: the functions are camelCase (findNearestVehicle, ...) in frames named as @pyroscope/nodejs
# names them (`./examples/rideshare/node/app.js:findNearestVehicle:50`); its memory is V8's heap
# profile, in-use memory by default (V8 samples one kind per isolate), so the in-use checks run
# and the alloc_space ones do not.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/lib.sh
dir="$(mktemp -d)"
prof="$dir/profiles"
mkdir -p "$prof"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
fail() {
  echo "check-rideshare: FAIL: $*"
  for f in "$dir"/*.log; do [ -f "$f" ] && { echo "--- $(basename "$f")"; tail -5 "$f"; }; done
  echo "0 passed, 1 failed"
  exit 1
}

lang="${1:-rust}"
cargo build -q -p rideshare -p pyroscope-cli
bin=target/debug
case "$lang" in
  rust) service=("$bin/rideshare") ;;
  c) PROFILE=debug examples/rideshare/c/run --build-only || fail "building the C rideshare"
     service=(env PROFILE=debug examples/rideshare/c/run) ;;
  python) examples/rideshare/python/run --build-only || fail "installing the Python rideshare"
     service=(examples/rideshare/python/run) ;;
  node) examples/rideshare/node/run --build-only || fail "installing the Node rideshare"
     service=(examples/rideshare/node/run) ;;
  *) fail "unknown language $lang (rust, c, python or node)" ;;
esac
frames=1
[ "$lang" = python ] && frames="${RIDESHARE_FRAMES:-1}"
memory=1
# alloc_space checks: not for Node's in-use heap profile.
allocs=1
[ "$lang" = node ] && allocs=0
# The story's functions as the language spells them, and `fn NAME`: the regex (awk ERE) of
# NAME's frames in the function column of `pyroscope top`.
if [ "$lang" = node ]; then
  fnv=findNearestVehicle cda=checkDriverAvailability mutex=mutexLock work=doWork
  fn() { echo ":$1:[0-9]+\$"; }
else
  fnv=find_nearest_vehicle cda=check_driver_availability mutex=mutex_lock work=do_work
  fn() { echo "(^|::)$1\$"; }
fi

regions=(us-east eu-north ap-south)
read -r -a ports <<<"$(free_ports 3)"
[ "${#ports[@]}" -eq 3 ] || fail "no free ports from the OS"
declare -A url
urls=()
for i in 0 1 2; do
  region=${regions[$i]}
  REGION=$region PORT=${ports[$i]} PYROSCOPE_EXPORT_DIR="$prof" PYROSCOPE_UPLOAD_INTERVAL=2 PYROSCOPE_ALLOC_SAMPLE_BYTES=65536 PYROSCOPE_HEAP_SAMPLING_INTERVAL_BYTES=65536 \
    PYROSCOPE_APPLICATION_NAME=rideshare-check "${service[@]}" 2>"$dir/$region.log" &
  pids+=($!)
  url[$region]="http://127.0.0.1:${ports[$i]}"
  urls+=("${url[$region]}")
done
for i in 0 1 2; do
  wait_listening "${pids[$i]}" "$dir/${regions[$i]}.log" "${ports[$i]}" 120 || fail "${regions[$i]} did not come up"
done
"$bin/rideshare-load" 8 10 "${urls[@]}" 2>"$dir/load.txt"
# The in-use checks need three memory windows of each region: 8 s at 2 s windows make four,
# unless a busy machine held the collectors; then the load goes on, 2 s at a time (at most 30).
windows_of() { inuse_series "$prof" "$1" | wc -l; }
for round in $(seq 30); do
  [ "$memory" = 1 ] && { [ "$(windows_of us-east)" -lt 3 ] || [ "$(windows_of eu-north)" -lt 3 ]; } || break
  echo "check-rideshare: fewer than 3 memory windows per region after the load; 2 s more (round $round)"
  "$bin/rideshare-load" 2 10 "${urls[@]}" 2>"$dir/load-more-$round.txt"
done
for p in "${pids[@]}"; do kill -TERM "$p" || fail "a service died before the end of the load"; done
for p in "${pids[@]}"; do wait "$p" || fail "a service exited with an error"; done
pids=()

requests() { grep -hF "$1:" "$dir"/load*.txt | sed -E 's/.*: ([0-9]+) ok.*/\1/' | awk '{ n += $1 } END { print n + 0 }'; }
top() { "$bin/pyroscope" top "$prof" --tsv --where "$@"; }

declare -A per_req
for region in "${regions[@]}"; do
  t="$(top region=$region)"
  n="$(requests "${url[$region]}")"
  [ "${n:-0}" -gt 20 ] || fail "$region served only ${n:-0} requests"
  per_req[$region]=$(( $(top_total "$t") / n ))
  [ "$frames" = 1 ] || continue
  m=$(top_value "$t" "$(fn $mutex)")
  if [ "$region" = eu-north ]; then
    [ "$m" -gt 0 ] || fail "eu-north has no $mutex"
    f=$(top_value "$t" "$(fn $fnv)"); c=$(top_value "$t" "$(fn $cda)")
    [ "$c" -gt 0 ] && [ "$f" -ge "$c" ] || fail "$fnv ($f) does not contain $cda ($c)"
    labelled=0; c_labelled=0
    for v in car bike scooter; do
      tv="$(top region=$region --where vehicle=$v)"
      labelled=$(( labelled + $(top_value "$tv" "$(fn $fnv)") ))
      c_labelled=$(( c_labelled + $(top_value "$tv" "$(fn $cda)") ))
    done
    echo "$fnv: $f ns, $labelled ns with a vehicle label; $cda: $c ns, $c_labelled ns labelled"
    # Inside the scope nothing sets labels: every sample of check_driver_availability is labelled.
    [ "$c_labelled" -eq "$c" ] || fail "$cda: $c ns in all but only $c_labelled ns carry a vehicle label"
    # The label calls themselves run before the label is set and after it is removed: on a
    # debug build under load they take a few samples of find_nearest_vehicle's own.
    [ $(( labelled * 100 )) -ge $(( f * 97 )) ] || fail "$fnv: $f ns in all but only $labelled ns carry a vehicle label"
  else
    [ "$m" -eq 0 ] || fail "$region has $mutex ($m ns)"
  fi
done
echo "cpu per request (ns): us-east=${per_req[us-east]} eu-north=${per_req[eu-north]} ap-south=${per_req[ap-south]}"
[ "${per_req[eu-north]}" -gt "${per_req[us-east]}" ] && [ "${per_req[eu-north]}" -gt "${per_req[ap-south]}" ] \
  || fail "eu-north is not the region with the most CPU per request"

if [ "$frames" = 1 ]; then
# The comparison: mutex_lock on the eu-north side only.
d="$("$bin/pyroscope" diff "$prof" --tsv --left region=eu-north --right region=ap-south)"
row=$(awk -F'\t' -v f="$(fn $mutex)" '$1 ~ f { print $2, $3; exit }' <<<"$d")
[ -n "$row" ] || fail "diff: no $mutex row"
read -r left right <<<"$row"
[ "$left" -gt 0 ] && [ "$right" -eq 0 ] || fail "diff: $mutex eu-north=$left ap-south=$right"
# The report: both memory views name the leaking function.
if [ "$memory" = 1 ]; then
  "$bin/pyroscope" report "$prof" --by region --limit 60 --out "$dir/report.html" >/dev/null || fail "report"
  sections=(inuse_space)
  [ "$allocs" = 1 ] && sections=(alloc_space inuse_space)
  for section in "${sections[@]}"; do
    part=$(awk -v s="id=\"$section\"" 'index($0, s) { on = 1 } on && /<\/section>/ { exit } on' "$dir/report.html")
    grep -Eq "<td class=\"fn\">[^<]*$work(:[0-9]+)?</td>" <<<"$part" || fail "report: $work missing from the $section section"
  done
fi

fi

if [ "$memory" = 1 ]; then
# Memory: alloc_space per region inside do_work (without frames: in all), and in-use growth per window.
if [ "$allocs" = 1 ]; then
declare -A alloc
for region in us-east eu-north ap-south; do
  t="$("$bin/pyroscope" top "$prof" --tsv --type alloc_space --where region=$region)"
  if [ "$frames" = 1 ]; then alloc[$region]=$(top_value "$t" "$(fn $work)"); else alloc[$region]=$(top_total "$t"); fi
done
echo "alloc_space in $work (bytes): us-east=${alloc[us-east]} eu-north=${alloc[eu-north]} ap-south=${alloc[ap-south]}"
[ "${alloc[us-east]}" -gt "${alloc[eu-north]}" ] && [ "${alloc[us-east]}" -gt "${alloc[ap-south]}" ] \
  || fail "us-east is not the region with the most alloc_space in $work"
fi
if [ "$lang" = node ]; then
  # A JS heap's in-use memory includes garbage the collector has not reached yet, which comes
  # and goes with the collector's timing (several MB of express's request garbage): the series
  # are those of doWork's own allocations, where us-east leaks and the other regions allocate
  # only short-lived scratch arrays. The whole heap's are shown for reference.
  echo "whole JS heap inuse_space per window (bytes): us-east=$(inuse_series "$prof" us-east | xargs) eu-north=$(inuse_series "$prof" eu-north | xargs)"
  east=($(inuse_series "$prof" us-east "$(fn $work)"))
  north=($(inuse_series "$prof" eu-north "$(fn $work)"))
  echo "inuse_space in $work per window (bytes): us-east=${east[*]} eu-north=${north[*]}"
else
  east=($(inuse_series "$prof" us-east))
  north=($(inuse_series "$prof" eu-north))
  echo "inuse_space per window (bytes): us-east=${east[*]} eu-north=${north[*]}"
fi
[ "${#east[@]}" -ge 3 ] || fail "too few us-east memory windows (${#east[@]})"
[ "${east[-1]}" -gt $(( ${east[0]} * 2 )) ] && [ $(( ${east[-1]} - ${east[0]} )) -gt $(( 4 << 20 )) ] \
  || fail "us-east inuse_space does not grow: ${east[*]}"
[ "${#north[@]}" -ge 3 ] || fail "too few eu-north memory windows (${#north[@]})"
# Flat: every eu-north window well under us-east's last.
for v in "${north[@]}"; do
  [ "$v" -lt $(( ${east[-1]} / 4 )) ] || fail "eu-north inuse_space is not flat: ${north[*]}"
done
fi

if [ "$frames" = 1 ] && command -v go >/dev/null; then
  f=$(ls "$prof"/*.pb.gz | head -1)
  go tool pprof -raw "$prof"/*.process_cpu.*.pb.gz > "$dir/raw.txt" 2>/dev/null || fail "go tool pprof cannot read our files"
  go tool pprof -top -tagfocus=region=eu-north "$prof"/*.process_cpu.*.pb.gz > "$dir/top-eu.txt" 2>/dev/null
  go tool pprof -top -tagfocus=region=ap-south "$prof"/*.process_cpu.*.pb.gz > "$dir/top-ap.txt" 2>/dev/null
  grep -q "$mutex" "$dir/raw.txt" || fail "go tool pprof: $mutex missing"
  grep -q "$mutex" "$dir/top-eu.txt" || fail "go tool pprof: $mutex missing for eu-north"
  ! grep -q "$mutex" "$dir/top-ap.txt" || fail "go tool pprof: $mutex for ap-south"
  grep -q "vehicle:\[car\]" "$dir/raw.txt" || fail "go tool pprof: vehicle label missing"
  if [ "$memory" = 1 ] && [ "$allocs" = 1 ]; then
    go tool pprof -top -sample_index=alloc_space -tagfocus=region=us-east "$prof"/*.memory.*.pb.gz > "$dir/mem.txt" 2>/dev/null \
      || fail "go tool pprof cannot read our memory profiles"
    grep -q "$work" "$dir/mem.txt" || fail "go tool pprof: $work missing from us-east alloc_space"
  fi
fi
echo "1 passed, 0 failed: the $lang rideshare story holds ($(ls "$prof"/*.pb.gz | wc -l) profiles; go tool pprof agrees)"
