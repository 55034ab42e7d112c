#!/usr/bin/env bash
# W6 on a GPU: the loop-overhead matrix's W1 and tuple/dict rows on CUDA, in 32-true, bf16-mixed
# and 16-mixed, each against its own raw loop, in one short run. It prints the matrix's table for
# each precision, with the host-device syncs per step counted by torch.cuda.set_sync_debug_mode:
#   1. "error": the quiet row (no bar, logger or checkpoint) must fit without a single sync
#      (32-true and bf16-mixed; 16-mixed's GradScaler reads its inf check every step, in the raw
#      loop too, so it is only counted);
#   2. "warn": every row, syncs per step counted (draws and log flushes read metrics a few times a
#      second; anything near 1 per step is a per-step sync to remove).
# Without CUDA it stops at once with a message (exit 2).
#
#     bash benches/gpu_check.sh [--repeats 3]     (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}"
REPEATS=3
if [[ "${1:-}" == "--repeats" ]]; then REPEATS=$2; fi

"$PY" -c '
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available here (torch.cuda.is_available() is False); this check needs an NVIDIA GPU")
print("gpu_check on", torch.cuda.get_device_name(0), "torch", torch.__version__)
' || exit 2

ROWS="W1 (;tensor/tuple;map/tuple;map/dict, dropout;map/dict, bar off, logger=False;quiet:"
COMMON=(--device cuda --no-eval --no-lightning --repeats "$REPEATS" --outputs redirected)

echo "== 1. no host-device sync at all in the quiet row (sync debug mode: error)"
for prec in 32-true bf16-mixed; do
  echo "-- precision $prec"
  "$PY" -m ferrotrain.bench --matrix "${COMMON[@]}" --precision "$prec" --sync-debug error --only "quiet:" --repeats 1 --no-chart
done

echo "== 2. the rows, syncs per step counted (sync debug mode: warn)"
for prec in 32-true bf16-mixed 16-mixed; do
  echo "-- precision $prec"
  "$PY" -m ferrotrain.bench --matrix "${COMMON[@]}" --precision "$prec" --sync-debug warn --only "$ROWS" \
    --chart "gpu-matrix-$prec.png"
done
