#!/usr/bin/env bash
# End-to-end story check (run by `make test`): the rideshare of one language (`rust`, the
# default, `c` or `python`) in three regions under equal load, profiles on the embedded default, then
# from the profiles alone:
#  - eu-north uses the most CPU per request;
#  - only eu-north has mutex_lock;
#  - find_nearest_vehicle's total contains check_driver_availability's;
#  - every sample inside check_driver_availability (called in the vehicle label's scope)
#    carries a vehicle label, and so do all of find_nearest_vehicle's but the few spent inside
#    the label calls themselves, before the label is set or after it is removed (at most 3%);
#  - us-east has the most alloc_space, inside do_work, and its inuse_space grows window after
#    window while eu-north's and ap-south's stay flat;
#  - `go tool pprof` (an independent decoder) reads the files and sees the same.
# Python: the checks that name functions need the CPython walker (Python frames on samples);
# RIDESHARE_FRAMES=0 runs only the others (CPU per request, alloc_space per region, in-use growth).
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
  *) fail "unknown language $lang (rust, c or python)" ;;
esac
frames=1
[ "$lang" = python ] && frames="${RIDESHARE_FRAMES:-1}"

regions=(us-east eu-north ap-south)
read -r -a ports <<<"$(free_ports 3)"
[ "${#ports[@]}" -eq 3 ] || fail "no free ports from the OS"
declare -A url
urls=()
for i in 0 1 2; do
  region=${regions[$i]}
  REGION=$region PORT=${ports[$i]} PYROSCOPE_EXPORT_DIR="$prof" PYROSCOPE_UPLOAD_INTERVAL=2 PYROSCOPE_ALLOC_SAMPLE_BYTES=65536 \
    PYROSCOPE_APPLICATION_NAME=rideshare-check "${service[@]}" 2>"$dir/$region.log" &
  pids+=($!)
  url[$region]="http://127.0.0.1:${ports[$i]}"
  urls+=("${url[$region]}")
done
for i in 0 1 2; do
  wait_listening "${pids[$i]}" "$dir/${regions[$i]}.log" "${ports[$i]}" 120 || fail "${regions[$i]} did not come up"
done
"$bin/rideshare-load" 8 10 "${urls[@]}" 2>"$dir/load.txt"
for p in "${pids[@]}"; do kill -TERM "$p" || fail "a service died before the end of the load"; done
for p in "${pids[@]}"; do wait "$p" || fail "a service exited with an error"; done
pids=()

requests() { grep -F "$1:" "$dir/load.txt" | sed -E 's/.*: ([0-9]+) ok.*/\1/'; }
top() { "$bin/pyroscope" top "$prof" --tsv --where "$@"; }
value() { awk -F'\t' -v f="$2" '$1 ~ f { print $3; found=1; exit } END { if (!found) print 0 }' <<<"$1"; }
total() { head -1 <<<"$1" | cut -f2; }

declare -A per_req
for region in "${regions[@]}"; do
  t="$(top region=$region)"
  n="$(requests "${url[$region]}")"
  [ "${n:-0}" -gt 20 ] || fail "$region served only ${n:-0} requests"
  per_req[$region]=$(( $(total "$t") / n ))
  [ "$frames" = 1 ] || continue
  mutex=$(value "$t" '^(.*::)?mutex_lock$')
  if [ "$region" = eu-north ]; then
    [ "$mutex" -gt 0 ] || fail "eu-north has no mutex_lock"
    fnv=$(value "$t" 'find_nearest_vehicle$'); cda=$(value "$t" 'check_driver_availability$')
    [ "$cda" -gt 0 ] && [ "$fnv" -ge "$cda" ] || fail "find_nearest_vehicle ($fnv) does not contain check_driver_availability ($cda)"
    labelled=0; cda_labelled=0
    for v in car bike scooter; do
      tv="$(top region=$region --where vehicle=$v)"
      labelled=$(( labelled + $(value "$tv" 'find_nearest_vehicle$') ))
      cda_labelled=$(( cda_labelled + $(value "$tv" 'check_driver_availability$') ))
    done
    echo "find_nearest_vehicle: $fnv ns, $labelled ns with a vehicle label; check_driver_availability: $cda ns, $cda_labelled ns labelled"
    # Inside the scope nothing sets labels: every sample of check_driver_availability is labelled.
    [ "$cda_labelled" -eq "$cda" ] || fail "check_driver_availability: $cda ns in all but only $cda_labelled ns carry a vehicle label"
    # The label calls themselves run before the label is set and after it is removed: on a
    # debug build under load they take a few samples of find_nearest_vehicle's own.
    [ $(( labelled * 100 )) -ge $(( fnv * 97 )) ] || fail "find_nearest_vehicle: $fnv ns in all but only $labelled ns carry a vehicle label"
  else
    [ "$mutex" -eq 0 ] || fail "$region has mutex_lock ($mutex ns)"
  fi
done
echo "cpu per request (ns): us-east=${per_req[us-east]} eu-north=${per_req[eu-north]} ap-south=${per_req[ap-south]}"
[ "${per_req[eu-north]}" -gt "${per_req[us-east]}" ] && [ "${per_req[eu-north]}" -gt "${per_req[ap-south]}" ] \
  || fail "eu-north is not the region with the most CPU per request"

if [ "$frames" = 1 ]; then
# The comparison: mutex_lock on the eu-north side only.
d="$("$bin/pyroscope" diff "$prof" --tsv --left region=eu-north --right region=ap-south)"
row=$(awk -F'\t' '$1 ~ /(^|::)mutex_lock$/ { print $2, $3; exit }' <<<"$d")
[ -n "$row" ] || fail "diff: no mutex_lock row"
read -r left right <<<"$row"
[ "$left" -gt 0 ] && [ "$right" -eq 0 ] || fail "diff: mutex_lock eu-north=$left ap-south=$right"
# The report: both memory views name the leaking function.
"$bin/pyroscope" report "$prof" --by region --limit 60 --out "$dir/report.html" >/dev/null || fail "report"
for section in alloc_space inuse_space; do
  part=$(awk -v s="id=\"$section\"" 'index($0, s) { on = 1 } on && /<\/section>/ { exit } on' "$dir/report.html")
  grep -q "<td class=\"fn\">[^<]*do_work</td>" <<<"$part" || fail "report: do_work missing from the $section section"
done

fi

# Memory: alloc_space per region inside do_work (without frames: in all), and in-use growth per window.
declare -A alloc
for region in us-east eu-north ap-south; do
  t="$("$bin/pyroscope" top "$prof" --tsv --type alloc_space --where region=$region)"
  if [ "$frames" = 1 ]; then alloc[$region]=$(value "$t" 'do_work$'); else alloc[$region]=$(total "$t"); fi
done
echo "alloc_space in do_work (bytes): us-east=${alloc[us-east]} eu-north=${alloc[eu-north]} ap-south=${alloc[ap-south]}"
[ "${alloc[us-east]}" -gt "${alloc[eu-north]}" ] && [ "${alloc[us-east]}" -gt "${alloc[ap-south]}" ] \
  || fail "us-east is not the region with the most alloc_space in do_work"
source "$root/scripts/lib.sh"
east=($(inuse_series "$prof" us-east))
north=($(inuse_series "$prof" eu-north))
echo "inuse_space per window (bytes): us-east=${east[*]} eu-north=${north[*]}"
[ "${#east[@]}" -ge 3 ] || fail "too few us-east memory windows (${#east[@]})"
[ "${east[-1]}" -gt $(( ${east[0]} * 2 )) ] || fail "us-east inuse_space does not grow: ${east[*]}"
[ "${#north[@]}" -ge 3 ] || fail "too few eu-north memory windows (${#north[@]})"
for v in "${north[@]}"; do
  [ "$v" -lt $(( ${east[-1]} / 4 )) ] || fail "eu-north inuse_space is not flat: ${north[*]}"
done

if [ "$frames" = 1 ] && command -v go >/dev/null; then
  f=$(ls "$prof"/*.pb.gz | head -1)
  go tool pprof -raw "$prof"/*.process_cpu.*.pb.gz > "$dir/raw.txt" 2>/dev/null || fail "go tool pprof cannot read our files"
  go tool pprof -top -tagfocus=region=eu-north "$prof"/*.process_cpu.*.pb.gz > "$dir/top-eu.txt" 2>/dev/null
  go tool pprof -top -tagfocus=region=ap-south "$prof"/*.process_cpu.*.pb.gz > "$dir/top-ap.txt" 2>/dev/null
  grep -q "mutex_lock" "$dir/raw.txt" || fail "go tool pprof: mutex_lock missing"
  grep -q "mutex_lock" "$dir/top-eu.txt" || fail "go tool pprof: mutex_lock missing for eu-north"
  ! grep -q "mutex_lock" "$dir/top-ap.txt" || fail "go tool pprof: mutex_lock for ap-south"
  grep -q "vehicle:\[car\]" "$dir/raw.txt" || fail "go tool pprof: vehicle label missing"
  go tool pprof -top -sample_index=alloc_space -tagfocus=region=us-east "$prof"/*.memory.*.pb.gz > "$dir/mem.txt" 2>/dev/null \
    || fail "go tool pprof cannot read our memory profiles"
  grep -q "do_work" "$dir/mem.txt" || fail "go tool pprof: do_work missing from us-east alloc_space"
fi
echo "1 passed, 0 failed: the $lang rideshare story holds ($(ls "$prof"/*.pb.gz | wc -l) profiles; go tool pprof agrees)"
