#!/usr/bin/env bash
# Print the path of a working python<VERSION> interpreter (e.g. `scripts/find-python.sh 3.13`):
# on PATH, then under pyenv, then the system's. Exits 1 (saying so) when there is none.
set -euo pipefail
version=${1:?usage: find-python.sh X.Y}
candidates=("python$version")
if command -v pyenv >/dev/null 2>&1; then
  for dir in "$(pyenv root)"/versions/"$version".*; do
    candidates+=("$dir/bin/python$version")
  done
fi
candidates+=("/usr/bin/python$version" "/usr/local/bin/python$version")
for python in "${candidates[@]}"; do
  if "$python" -c 'import sys; sys.exit(0)' >/dev/null 2>&1; then
    command -v "$python"
    exit 0
  fi
done
echo "find-python.sh: no working python$version (tried: ${candidates[*]})" >&2
exit 1
