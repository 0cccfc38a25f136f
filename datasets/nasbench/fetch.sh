#!/usr/bin/env bash
# Fetches analog-nasbench and nas-bench-graph from PyPI (checksummed wheels) and converts them
# once into CSV files under data/ for blockdiff-dag. Idempotent: does nothing when data/ is
# complete for these wheel checksums.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
declare -A wheels=(
  [analog_nasbench-0.1.3-py3-none-any.whl]=f7d4e56e416d249d25555b867a6d7c72886fa9d85a49bd1870708acbf5ee6fe2
  [nas_bench_graph-1.4.0-py3-none-any.whl]=f6ea43836262f1ee8d60c35bbbd20aa2536ee1f8492025e3b0b90096f5afc6ad
)
stamp="$here/data/.complete"
want="$(printf '%s\n' "${wheels[@]}" | sort | sha256sum | cut -d' ' -f1)-$(sha256sum "$here/convert.py" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then echo "nasbench: present"; exit 0; fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
# numpy: nas-bench-graph's pickles hold numpy float64 scalars.
python3 -c "import numpy" 2>/dev/null || python3 -m pip install --quiet numpy
python3 -m pip download --quiet --no-deps --dest "$tmp" "analog-nasbench==0.1.3" "nas-bench-graph==1.4.0"
for w in "${!wheels[@]}"; do
  got="$(sha256sum "$tmp/$w" | cut -d' ' -f1)"
  [ "$got" = "${wheels[$w]}" ] || { echo "checksum mismatch for $w: $got" >&2; exit 1; }
done
mkdir -p "$here/data"
python3 "$here/convert.py" "$tmp/analog_nasbench-0.1.3-py3-none-any.whl" \
  "$tmp/nas_bench_graph-1.4.0-py3-none-any.whl" "$here/data"
echo "$want" > "$stamp"
echo "nasbench: converted"
