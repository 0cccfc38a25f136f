#!/usr/bin/env bash
# Installs the pinned Python packages that record.py / eval.py need into ${PYTHON:-python3}
# (no virtualenv: CI installs globally). A fast no-op when every pin is already installed.
# numpy must stay < 2 (openpi-client 0.1.2 requires it), so Python 3.10-3.12.
set -euo pipefail
py="${PYTHON:-python3}"
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
if [ -z "$missing" ]; then echo "metaworld: python packages present"; exit 0; fi
echo "metaworld: installing into $("$py" -c 'import sys; print(sys.executable)'):" $missing >&2
"$py" -m pip install -q "${pins[@]}"
missing="$(check)"
if [ -n "$missing" ]; then echo "metaworld: still wrong after pip install: $missing" >&2; exit 1; fi
"$py" -c 'import gymnasium, metaworld, openpi_client.websocket_client_policy, safetensors.numpy'
echo "metaworld: python packages installed"
