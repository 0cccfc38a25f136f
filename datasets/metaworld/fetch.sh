#!/usr/bin/env bash
# Installs the pinned Python packages that record.py / eval.py need into a dedicated virtualenv
# (default $HOME/.cache/blockdiff-metaworld-venv, or $METAWORLD_VENV), so the numpy < 2 pin that
# openpi-client 0.1.2 needs never downgrades the system's packages; PYTHON=... installs into
# that interpreter instead. A fast no-op when every pin is already installed. Prints nothing on
# stdout but the interpreter's path (scripts: BLOCKDIFF_PYTHON="$(datasets/metaworld/fetch.sh)").
# Python 3.10-3.12.
set -euo pipefail
if [ -z "${PYTHON:-}" ]; then
  venv="${METAWORLD_VENV:-$HOME/.cache/blockdiff-metaworld-venv}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "metaworld: creating virtualenv $venv" >&2
    python3 -m venv "$venv" >&2
  fi
  py="$venv/bin/python"
else
  py="$PYTHON"
fi
pins=(
  metaworld==3.1.1
  openpi-client==0.1.2
  safetensors==0.8.0
  packaging==26.3
  mujoco==3.3.0
  gymnasium==1.4.0
  numpy==1.26.4
  msgpack==1.2.4
  websockets==17.4
)
check() {
  "$py" - "${pins[@]}" <<'EOF'
import importlib.metadata as md
import sys
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have != want:
        print(f"{pin} (have {have})")
EOF
}
"$py" -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else
  f"metaworld: needs Python 3.10-3.12 (numpy 1.26.4), {sys.executable} is {sys.version.split()[0]}")'
missing="$(check)"
if [ -z "$missing" ]; then echo "metaworld: python packages present" >&2; echo "$py"; exit 0; fi
echo "metaworld: installing into $("$py" -c 'import sys; print(sys.executable)'):" $missing >&2
"$py" -m pip install -q "${pins[@]}" >&2
missing="$(check)"
if [ -n "$missing" ]; then echo "metaworld: still wrong after pip install: $missing" >&2; exit 1; fi
"$py" -c 'import gymnasium, metaworld, openpi_client.websocket_client_policy, safetensors.numpy'
echo "metaworld: python packages installed" >&2
echo "$py"
