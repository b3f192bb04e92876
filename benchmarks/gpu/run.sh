#!/usr/bin/env bash
# The GPU check in one device call (see README.md): installs the carried wheels into a
# temporary folder, runs check.py on Keras's JAX backend, and leaves in $OUT what comes back:
# report.md (every table), gpu_check.tar.gz (tables, CSVs, PNGs, logs), run.log and the main
# figures. Extra arguments go to check.py (e.g. --steps throughput,timm or --budget 300).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-build/gpu-check}
WHEELS=${GPU_WHEELS:-build/gpu-wheels}
RESULTS=${GPU_CHECK_RESULTS:-/tmp/gpu-check}
LIMIT=${GPU_CHECK_LIMIT:-455}  # seconds for check.py as a whole; its steps' budget is 430
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1

SITE=$(mktemp -d /tmp/gpu-site.XXXXXX)
if ls "$WHEELS"/keras-*.whl >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --find-links "$WHEELS" --target "$SITE" keras namex optree || exit 1
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=${KERAS_BACKEND:-jax} MPLBACKEND=Agg PYTHONUNBUFFERED=1
python3 -c "import keras, jax; print('keras', keras.__version__, keras.backend.backend(), \
'| jax', jax.__version__, jax.devices())" || exit 1
nvidia-smi -L || true

weights=$(ls "$WHEELS"/weights/mobilenet_v2_weights_*_224_no_top.h5 2>/dev/null | head -1)
rm -rf "$RESULTS"
timeout --signal=KILL "$LIMIT" python3 benchmarks/gpu/check.py --out "$RESULTS" \
  ${weights:+--weights "$weights"} "$@"
echo "check.py exit code: $?"

# At most 8 files come back from $OUT: the report, the figures, and everything else packed.
tar -czf "$OUT/gpu_check.tar.gz" -C "$(dirname "$RESULTS")" --exclude=work "$(basename "$RESULTS")"
for file in report.md throughput.png finetune_dashboard.png finetune_curves.png cpu_gpu.png; do
  [ -f "$RESULTS/$file" ] && cp "$RESULTS/$file" "$OUT/"
done
ls -la "$OUT"
