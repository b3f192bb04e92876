"""A tiny real dataset for training tests: scikit-learn's digits as 16 px PNG class folders."""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(root: Path, *, per_class: int = 30, size: int = 16) -> Path:
    digits = load_digits()
    counts = dict.fromkeys(range(10), 0)
    for image, label in zip(digits.images, digits.target):
        if counts[label] >= per_class:
            continue
        counts[label] += 1
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size)).convert("RGB").save(
            folder / f"{counts[label]:03d}.png")
    return root


def write_splits(root: Path, *, per_class: int, counts: tuple) -> Path:
    """Writes the tiny digits under ``root/data`` and their split under ``root/splits``."""
    from workbench.data.split import prepare

    write_digits(root / "data", per_class=per_class)
    prepare(root / "data", root / "splits", counts=counts, progress="none")
    return root / "splits"


def write_run(root: Path, *, epochs: int = 2, **solver) -> Path:
    """Trains a tiny lenet on 16 px digits into ``root/run`` (data in ``root/data``)."""
    from workbench.models import StartingPoint
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    splits = write_splits(root, per_class=8, counts=(4, "rest", 2))
    finetune(splits, root / "run", start=StartingPoint("lenet", weights=None), recipe="scratch",
             image_size=16, solver=SolverConfig(epochs=epochs, batch_size=8, **solver), progress="none")
    return root / "run"
