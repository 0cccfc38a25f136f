#!/usr/bin/env bash
# blockdiff's benches on an NVIDIA GPU: burn's CUDA backend against PyTorch on the same GPU.
#
#   cargo build --release -p blockdiff-cli --features cuda      # builds without a GPU or toolkit
#   tests/gpu/bench.sh target/release/blockdiff OUT_DIR [PYTHON_WITH_CUDA_TORCH]
#   STEPS="twin-small core" tests/gpu/bench.sh …                 # a subset
#
# Writes OUT_DIR/{gpu.txt, twin-cuda-small.json, twin-cuda-full.json, core-cuda-small.json} and a
# log per step; a failing step is reported and the next one still runs (exit status: failures).
# burn 0.21 loads CUDA at run time (cudarc): the driver's libcuda and the toolkit's libnvrtc must
# be findable, so the toolkit's library folders are put on LD_LIBRARY_PATH when present.
set -uo pipefail
BIN=${1:?usage: bench.sh BLOCKDIFF_BINARY OUT_DIR [PYTHON]}
OUT=${2:?usage: bench.sh BLOCKDIFF_BINARY OUT_DIR [PYTHON]}
PY=${3:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
if ! ldconfig -p | grep -q libnvrtc && ! ls /usr/local/cuda/lib64/libnvrtc* >/dev/null 2>&1; then
  # pip's nvidia-cuda-nvrtc wheel (PyTorch's own) as the fallback.
  d=$("$PY" -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib"))' 2>/dev/null) \
    && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
export RUST_BACKTRACE=1
fails=0
step() { # name timeout_s command...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then echo "ok ($((SECONDS - t0)) s)"; else
    echo "FAILED rc=$? ($((SECONDS - t0)) s)"; fails=$((fails + 1)); fi
  tail -n 14 "$OUT/$name.log"
}
# STEPS picks a subset (default: all three).
STEPS=${STEPS:-twin-small twin-full core}
want() { [[ " $STEPS " == *" $1 "* ]]; }
want twin-small && step twin-cuda-small 120 "$BIN" bench twin --size small --device cuda --python "$PY" \
  --dir "$OUT/case-small" --json "$OUT/twin-cuda-small.json"
want twin-full && step twin-cuda-full 150 "$BIN" bench twin --size full --device cuda --python "$PY" --batches 1,16,256 \
  --dir "$OUT/case-full" --json "$OUT/twin-cuda-full.json"
# CORE_ARGS: extra `bench core` options (the README's run: "--steps 500 --repeats 5").
# shellcheck disable=SC2086
want core && step core-cuda-small 200 "$BIN" bench core --task small --device cuda ${CORE_ARGS:---repeats 10} \
  --json "$OUT/core-cuda-small.json"
rm -rf "$OUT/case-small" "$OUT/case-full"
exit "$fails"
