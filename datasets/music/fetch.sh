#!/usr/bin/env bash
# Prepares the music dataset: Bach chorales from the music21 corpus as General MIDI
# files (train/val/test) plus the FluidR3_GM SoundFont that renders them.
#
# Usage: datasets/music/fetch.sh OUT_DIR [--limit N] [--variants K] [--seed S] [--force]
#
# All logs go to stderr; the LAST line of stdout is the SoundFont path:
#   SF2=$(datasets/music/fetch.sh out/music | tail -1)
# Repeat runs are fast: the venv is reused, and the export is skipped when
# OUT_DIR/manifest.json was written with the same arguments by the same exporter.
#
# Environment: MUSIC_VENV (default $HOME/.cache/blockdiff-music-venv),
#              PYTHON (base interpreter for the venv, default python3).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
music21_version="10.5.1"
sf2="/usr/share/sounds/sf2/FluidR3_GM.sf2"
venv="${MUSIC_VENV:-$HOME/.cache/blockdiff-music-venv}"
base_python="${PYTHON:-python3}"

log() { echo "music: $*" >&2; }

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: $0 OUT_DIR [--limit N] [--variants K] [--seed S] [--force]" >&2
  exit 2
fi
out_dir="$1"
shift

# 1. Python venv with the pinned music21 (installed only when missing or another version).
vpy="$venv/bin/python"
if [ ! -x "$vpy" ]; then
  log "creating venv $venv with $base_python"
  "$base_python" -m venv "$venv" >&2
fi
if ! "$vpy" -c "import importlib.metadata as m, sys; sys.exit(m.version('music21') != '$music21_version')" 2>/dev/null \
   || ! "$vpy" -c "import music21" >/dev/null 2>&1; then
  log "installing music21==$music21_version into $venv"
  "$vpy" -m pip install --quiet --disable-pip-version-check "music21==$music21_version" >&2
fi

# 2. The General MIDI SoundFont (Debian package fluid-soundfont-gm).
if [ ! -f "$sf2" ]; then
  log "installing fluid-soundfont-gm (for $sf2)"
  sudo_cmd=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo_cmd=(sudo)
    else
      log "error: $sf2 is missing and neither root nor sudo is available;"
      log "install the Debian package fluid-soundfont-gm"
      exit 1
    fi
  fi
  ${sudo_cmd[@]+"${sudo_cmd[@]}"} apt-get update -qq >&2
  ${sudo_cmd[@]+"${sudo_cmd[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluid-soundfont-gm >&2
  [ -f "$sf2" ] || { log "error: $sf2 still missing after installing fluid-soundfont-gm"; exit 1; }
fi

# 3. Export MIDI (skipped by export_midi.py itself when the manifest is up to date).
"$vpy" "$here/export_midi.py" "$out_dir" "$@" >&2

echo "$sf2"
