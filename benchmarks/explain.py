"""Explanations: do Grad-CAM and occlusion sensitivity point at what tells the class?

On the shapes task of ``tests/shapes_data.py`` (40 px grey clutter with one 6 px shape whose
colour is the class: a red disc, a green square or a blue triangle, at a random place, and four
grey distractors), a small CNN with a nested backbone (three convolutions; the last map 10x10)
is trained to near-perfect accuracy. On held-out images, for the true class:

* the pointing rate of each method: the fraction of images whose map maximum lies inside the
  object's box grown by 2 px (10x10 of 40x40: chance 0.06);
* the same for a model with other, untrained weights (a map that ignores the model would point
  as well there: a faithful one does not);
* how the two methods agree: the rate at which their maxima lie within 4 px of each other, and
  the mean Spearman rank correlation of their maps over the pixels;
* seconds per image of each.

Prints the table and writes it to ``benchmarks/results/explain.md``::

    .venv/bin/python benchmarks/explain.py            # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import shapes_data  # noqa: E402
from workbench import explain  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "explain.md"
SIZE, SHAPE, MARGIN, NEAR = 40, 6, 2, 4
PATCH, STRIDE = 8, 4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--train", type=int, default=600, help="training images")
    parser.add_argument("--test", type=int, default=100, help="held-out images measured")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    return parser.parse_args(argv)


def measure(explainer, images, labels, boxes) -> dict:
    """Pointing rates, agreement and time of both methods for one model."""
    start = time.perf_counter()
    grad_cam, _, _ = explainer.maps(images, class_index=labels)
    grad_cam_time = (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    occluded, _, _ = explainer.maps(images, method="occlusion", class_index=labels,
                                    patch=PATCH, stride=STRIDE)
    occlusion_time = (time.perf_counter() - start) / len(images)
    peaks = [np.array(np.unravel_index(m.reshape(len(m), -1).argmax(axis=1), m.shape[1:])).T
             for m in (grad_cam, occluded)]
    near = np.abs(peaks[0] - peaks[1]).max(axis=1) <= NEAR
    ranks = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(grad_cam, occluded)]
    return {"grad_cam": shapes_data.hits(grad_cam, boxes).mean(),
            "occlusion": shapes_data.hits(occluded, boxes).mean(),
            "near": near.mean(), "spearman": float(np.nanmean(ranks)),
            "grad_cam_s": grad_cam_time, "occlusion_s": occlusion_time}


def main(argv=None) -> int:
    args = parse_args(argv)
    images, labels, _ = shapes_data.make_shapes(args.train, size=SIZE, shape_size=SHAPE,
                                                seed=args.seed)
    start = time.perf_counter()
    model = shapes_data.train_shapes_model(images, labels, epochs=args.epochs, seed=args.seed)
    train_s = time.perf_counter() - start
    test, test_labels, boxes = shapes_data.make_shapes(args.test, size=SIZE, shape_size=SHAPE,
                                                       seed=args.seed + 1)
    boxes = shapes_data.dilated(boxes, MARGIN, SIZE)
    trained = explain.Explainer(model)
    accuracy = float((trained.probabilities(test).argmax(axis=1) == test_labels).mean())
    keras.utils.set_random_seed(args.seed + 100)
    untrained = explain.Explainer(shapes_data.shapes_model(SIZE))
    rows = {"trained": measure(trained, test, test_labels, boxes),
            "untrained (other weights)": measure(untrained, test, test_labels, boxes)}
    chance = shapes_data.chance(boxes, SIZE)

    lines = ["# Explanations: where the model looked", "",
             "Written by `benchmarks/explain.py`.", "",
             "| model | test accuracy | pointing: Grad-CAM | pointing: occlusion | chance "
             "| maxima within 4 px | Spearman (maps) | s/image Grad-CAM | s/image occlusion |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        shown = f"{accuracy:.2f}" if name == "trained" else ""
        lines.append(f"| {name} | {shown} | {row['grad_cam']:.2f} | {row['occlusion']:.2f} | "
                     f"{chance:.2f} | {row['near']:.2f} | {row['spearman']:.2f} | "
                     f"{row['grad_cam_s']:.4f} | {row['occlusion_s']:.3f} |")
    lines += ["", f"The shapes task of `tests/shapes_data.py`: {SIZE} px grey clutter with one "
              f"{SHAPE} px shape whose colour tells the class, {args.train} training images, "
              f"{args.epochs} epochs of Adam ({train_s:.0f} s), {args.test} held-out images, "
              f"seed {args.seed}; each map for the true class. Pointing: the map's maximum "
              f"inside the object's box grown by {MARGIN} px (chance: the box's share of the "
              f"image). Occlusion: a {PATCH} px patch of the image's mean colour, stride "
              f"{STRIDE}. Agreement: the two maxima within {NEAR} px, and the mean Spearman "
              f"correlation of the two maps over the pixels. The untrained row is the same "
              f"network with other weights: its maps follow those weights, not the object. "
              f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}, Keras {keras.__version__} "
              f"({keras.backend.backend()})."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
