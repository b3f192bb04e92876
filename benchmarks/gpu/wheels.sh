#!/usr/bin/env bash
# Downloads what the GPU machine lacks into one folder (default build/gpu-wheels), for
# benchmarks/gpu/run.sh to install there without a network: Keras and the two pure-Python or
# compiled packages it needs that the machine's image does not hold (namex, optree), at the
# versions installed in this checkout's .venv, for CPython 3.11-3.13 (Keras 3.15 needs 3.11) on
# manylinux x86_64 (the GPU machine runs 3.12); and the
# MobileNetV2 ImageNet weights the fine-tuning step starts from. `make gpu-wheels` runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
DEST=${1:-build/gpu-wheels}
mkdir -p "$DEST/weights"

pins=$("$PYTHON" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("keras", "namex", "optree")))
PY
)
echo "gpu-wheels: $pins"
for python_version in 3.11 3.12 3.13; do
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$python_version" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" $pins \
    || echo "gpu-wheels: none for Python $python_version"
done
ls "$DEST"/optree-*-cp312-*.whl >/dev/null  # the GPU machine's Python must be covered

# The weights file keras.applications itself downloads; fetched through Keras into a private
# KERAS_HOME so that ~/.keras is left alone.
if ! ls "$DEST"/weights/mobilenet_v2_weights_*_224_no_top.h5 >/dev/null 2>&1; then
  KERAS_HOME="$DEST/.keras" KERAS_BACKEND=${KERAS_BACKEND:-jax} "$PYTHON" -c \
    "import keras; keras.applications.MobileNetV2(include_top=False, weights='imagenet', \
input_shape=(224, 224, 3))" \
    && mv "$DEST"/.keras/models/mobilenet_v2_weights_*_224_no_top.h5 "$DEST/weights/" \
    || echo "gpu-wheels: no ImageNet weights (no network?); finetune will start from random weights"
  rm -rf "$DEST/.keras"
fi
ls -la "$DEST" "$DEST/weights"
du -sh "$DEST"
