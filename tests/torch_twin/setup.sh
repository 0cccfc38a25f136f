#!/usr/bin/env bash
# Installs CPU PyTorch (from PyPI) + safetensors into a dedicated virtualenv for the twin
# (default $HOME/.cache/blockdiff-twin-venv, or $TWIN_VENV). A fast no-op when the pins are
# installed. Prints only the interpreter's path on stdout
# (BLOCKDIFF_TWIN_PYTHON="$(tests/torch_twin/setup.sh)"); prints nothing and exits 0 when torch
# cannot be installed here, so callers can skip the twin with a message.
# PyPI's Linux torch wheel pulls the CUDA runtime libraries (~4 GB) even for CPU use: the
# download happens once per machine, the virtualenv is reused.
set -euo pipefail
venv="${TWIN_VENV:-$HOME/.cache/blockdiff-twin-venv}"
pins=(torch==2.15.0 safetensors==0.8.0 numpy==2.4.6)
have() {
  "$venv/bin/python" - "${pins[@]}" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
sys.exit(any(md.version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
PY
}
if [ ! -x "$venv/bin/python" ]; then
  echo "torch twin: creating virtualenv $venv" >&2
  python3 -m venv "$venv" >&2 || exit 0
fi
if ! have; then
  echo "torch twin: installing ${pins[*]} (once; several GB)" >&2
  if ! "$venv/bin/pip" install -q "${pins[@]}" >&2; then
    echo "torch twin: torch could not be installed; the twin will be skipped" >&2
    exit 0
  fi
fi
"$venv/bin/python" -c "import torch, safetensors" >&2 || exit 0
echo "$venv/bin/python"
