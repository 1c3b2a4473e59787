# Shared shell helpers for the demo and the story check. Expects $bin (folder of `pyroscope`).

# top_value TSV REGEX: the total (third column) of the first row of `pyroscope top --tsv`
# output whose function matches REGEX (an awk ERE); 0 when none does.
top_value() { awk -F'\t' -v f="$2" '$1 ~ f { print $3; found=1; exit } END { if (!found) print 0 }' <<<"$1"; }
# top_total TSV: the sum of all samples (the `#total` line of `pyroscope top --tsv`).
top_total() { head -1 <<<"$1" | cut -f2; }

# inuse_series DIR REGION [FUNCTION]: in-use bytes at the end of each memory window of REGION,
# oldest first (0 for a window of that region with nothing in use); with FUNCTION (an awk ERE
# matched against `pyroscope top`'s function column), only the bytes allocated under the first
# function it matches (its total).
inuse_series() {
  local f t
  for f in $(ls "$1"/*.memory.*.pb.gz 2>/dev/null | sort -t. -k3 -n); do
    # A window belongs to REGION if it recorded any allocation there.
    "$bin/pyroscope" top "$f" --tsv --type alloc_space --where region="$2" >/dev/null 2>&1 \
      || "$bin/pyroscope" top "$f" --tsv --type inuse_space --where region="$2" >/dev/null 2>&1 || continue
    t=$("$bin/pyroscope" top "$f" --tsv --type inuse_space --where region="$2" 2>/dev/null)
    if [ -n "${3:-}" ]; then
      top_value "$t" "$3"
    else
      t=$(top_total "$t")
      echo "${t:-0}"
    fi
  done
}

# free_ports N: N distinct TCP ports of 127.0.0.1 handed out by the OS (all bound at once, so
# they differ, then released for the services to bind).
free_ports() {
  command -v python3 >/dev/null || { echo "free_ports: python3 is required to ask the OS for free ports" >&2; return 1; }
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# alive PID: the process runs (not exited, not a zombie waiting for its parent).
alive() {
  [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"
}

# wait_listening PID LOG PORT [SECONDS]: polls until the service PID (stderr in LOG) says it
# listens on PORT and PORT accepts a connection; fails loudly, with the log's tail, when PID
# exits first or SECONDS (default 60) pass. The log line proves the port is PID's, not another
# program's that took it between free_ports and the service's bind.
wait_listening() {
  local pid=$1 log=$2 port=$3 secs=${4:-60}
  local end=$((SECONDS + secs))
  until grep -q "listening on http://127.0.0.1:$port\b" "$log" 2>/dev/null \
      && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! alive "$pid"; then
      echo "FAIL: process $pid exited before listening on port $port; $log ends with:"; tail -5 "$log"; return 1
    fi
    if [ "$SECONDS" -ge "$end" ]; then
      echo "FAIL: process $pid does not listen on port $port after ${secs}s; $log ends with:"; tail -5 "$log"; return 1
    fi
    sleep 0.1
  done
}
