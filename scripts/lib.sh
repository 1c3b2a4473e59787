# Shared shell helpers for the demo and the story check. Expects $bin (folder of `pyroscope`).

# inuse_series DIR REGION: in-use bytes at the end of each memory window of REGION, oldest first
# (0 for a window of that region with nothing in use).
inuse_series() {
  local f t
  for f in $(ls "$1"/*.memory.*.pb.gz 2>/dev/null | sort -t. -k3 -n); do
    # A window belongs to REGION if it recorded any allocation there.
    "$bin/pyroscope" top "$f" --tsv --type alloc_space --where region="$2" >/dev/null 2>&1 \
      || "$bin/pyroscope" top "$f" --tsv --type inuse_space --where region="$2" >/dev/null 2>&1 || continue
    t=$("$bin/pyroscope" top "$f" --tsv --type inuse_space --where region="$2" 2>/dev/null | head -1 | cut -f2)
    echo "${t:-0}"
  done
}
