#!/usr/bin/env bash
# The README and docs/ point only at files inside the repository (run by `make lint`): every
# relative Markdown link, and every `path` in backticks that names a .md file or a path of the
# repository, must exist (relative to the page or to the repository root).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bad=0
for page in README.md docs/*.md; do
  base="$(dirname "$page")"
  {
    grep -oE '\]\([^)#]+' "$page" | sed 's/^](//' | grep -vE '^[a-z]+:' || true
    grep -oE '`[^` ]+`' "$page" | tr -d '`' | grep -E '\.md$|^\.\./|^(docs|scripts|examples|tests|bindings|benches|pyroscope-[a-z]+)/' || true
  } > /tmp/check-links.$$
  while read -r target; do
    target="${target%%:*}"
    [ -e "$base/$target" ] || [ -e "$target" ] || { echo "$page: $target does not exist in the repository"; bad=1; }
  done < /tmp/check-links.$$
done
rm -f /tmp/check-links.$$
[ "$bad" = 0 ] || { echo "check-links: FAIL"; exit 1; }
echo "check-links: README.md and docs/ point only at files of the repository"
