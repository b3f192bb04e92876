"""Training throughput on CPU against GPU (images/s and the GPU's speed-up).

For each model and image size, ``workbench.studies.throughput.throughput_table`` trains a
freshly built classifier for a few steps on the CPU and, when the Keras backend sees a GPU, on
the GPU, timing the steps after warm-up. Without a GPU the ratio column says "not measured: no
GPU". Prints the table and writes it to ``benchmarks/results/throughput.md``. The lent GPU
machines have JAX but not TensorFlow's GPU build, so run it there with ``KERAS_BACKEND=jax``::

    python benchmarks/throughput.py                                   # CPU (and GPU if visible)
    python benchmarks/throughput.py --models cifar_cnn:32 --steps 5   # quick
    KERAS_BACKEND=jax python benchmarks/throughput.py --steps 50      # on a GPU machine
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.studies.throughput import DEFAULT_MODELS, throughput_table

RESULTS = Path(__file__).parent / "results" / "throughput.md"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="NAME:SIZE pairs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--gpu-precision", default="mixed_float16",
                        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--out", type=Path, default=RESULTS, help="the Markdown file written")
    args = parser.parse_args(argv)

    result = throughput_table(args.models, batch_size=args.batch_size, steps=args.steps,
                              warmup=args.warmup, gpu_precision=args.gpu_precision)
    table = result.to_markdown()
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
