"""How sure is the demo's model, and does one temperature fix it? (issue 20, calibration)

Reproduces the demo's notebooks 01-03 on the bundled offline data (the digits target task, the
letters source model of notebook 02, 5 training images per digit, each recipe over three seeds)
and evaluates every run on the held-out test split: top-1 accuracy, the expected calibration
error (15 bins) of the raw softmax and after the temperature the run fitted on its validation
split, the temperature, and the negative log-likelihood before and after.

Prints a table (mean +- std over seeds, and every run) and writes it to
``benchmarks/results/calibration.md``::

    .venv/bin/python benchmarks/calibration.py                      # the demo's settings
    .venv/bin/python benchmarks/calibration.py --epochs 20 --source-epochs 4   # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "calibration.md"
RECIPES = ("scratch", "feature_extraction", "two_stage", "caffe")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the data and runs (kept); default a temporary one")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per recipe")
    parser.add_argument("--epochs", type=int, default=40, help="notebook 03's default")
    parser.add_argument("--source-epochs", type=int, default=8, help="notebook 02's default")
    parser.add_argument("--source-per-class", type=int, default=400,
                        help="rendered letters per class (the sample data's default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file for the table")
    return parser.parse_args(argv)


def prepare_task(work: Path, args) -> tuple[Path, Path]:
    """The demo's data, target split and source model (notebooks 01 and 02 at their defaults,
    but for the source's epochs); kept in ``work`` and reused when already there."""
    from workbench.data import sample
    from workbench.data.split import prepare, split_options
    from workbench.models import StartingPoint
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    data = work / "data"
    missing = [name for name in ("source", "target") if not (data / name).is_dir()]
    if missing:
        sample.write_sample_data(data, datasets=missing, progress="none",
                                 source_per_class=args.source_per_class)
    target = work / "splits" / "target"
    if not (target / "splits.csv").is_file():
        prepare(data / "target", target, min_per_class=10, seed=0, progress="none",
                **split_options("5,rest,50"))
    source_splits = work / "splits" / "source"
    if not (source_splits / "splits.csv").is_file():
        prepare(data / "source", source_splits, val=0.1, test=0.1, seed=0, progress="none")
    solver = SolverConfig(optimizer="adam", base_lr=0.003, epochs=args.source_epochs,
                          batch_size=32, lr_policy="cosine", weight_decay=5e-4)
    source = finetune(source_splits, work / "source",
                      start=StartingPoint("cifar_cnn", weights=None), recipe="scratch",
                      solver=solver, image_size=32, seed=0, progress="none", resume=True)
    return target, source.model_path("final")


def measure(run_dir: Path) -> dict:
    """Test-split numbers of one run, raw and calibrated."""
    from workbench import calibration
    from workbench.evaluation import evaluate

    report = evaluate(run_dir, split="test", runtime="keras", save=False)
    raw = report.raw_probabilities
    return {"top1": report.top1, "temperature": report.temperature, "ece_raw": report.ece_raw,
            "ece": report.ece,
            "nll_raw": calibration.negative_log_likelihood(raw, report.labels),
            "nll": calibration.negative_log_likelihood(report.probabilities, report.labels),
            "confidence_raw": float(raw.max(axis=1).mean()),
            "confidence": float(report.probabilities.max(axis=1).mean()),
            "same_answers": bool(np.array_equal(raw.argmax(1), report.probabilities.argmax(1)))}


def _mean_std(values: pd.Series, digits: int = 3) -> str:
    return f"{values.mean():.{digits}f} ± {values.std(ddof=0):.{digits}f}"


def table(frame: pd.DataFrame, seconds: float, args) -> str:
    lines = [
        "| recipe | test accuracy | ECE raw | ECE calibrated | temperature | test NLL raw → "
        "calibrated | mean top-1 probability raw → calibrated |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe, rows in frame.groupby("recipe", sort=False):
        lines.append(
            f"| `{recipe}` | {_mean_std(rows['top1'])} | {_mean_std(rows['ece_raw'])} | "
            f"{_mean_std(rows['ece'])} | {_mean_std(rows['temperature'], 2)} | "
            f"{rows['nll_raw'].mean():.2f} → {rows['nll'].mean():.2f} | "
            f"{rows['confidence_raw'].mean():.2f} → {rows['confidence'].mean():.2f} |")
    runs = ["", "| run | test accuracy | ECE raw | ECE calibrated | temperature |",
            "|---|---|---|---|---|"]
    runs += [f"| {row.recipe}-seed{row.seed} | {row.top1:.3f} | {row.ece_raw:.3f} | "
             f"{row.ece:.3f} | {row.temperature:.3g} |" for row in frame.itertuples()]
    header = (f"Test split (500 digits) of the demo's task: {args.epochs} epochs per run, source "
              f"model {args.source_epochs} epochs, seeds 0-{args.seeds - 1}; mean ± std over "
              f"seeds. ECE: 15 bins. Every top-1 answer the same raw and calibrated: "
              f"{bool(frame['same_answers'].all())}. {len(frame)} runs in "
              f"{seconds / 60:.1f} min.\n\n")
    return header + "\n".join(lines + runs) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from workbench.studies.recipes import compare_recipes
    from workbench.training.solver import SolverConfig

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="calibration-") as scratch:
        work = args.work or Path(scratch)
        target, source = prepare_task(work, args)
        solver = SolverConfig(optimizer="sgd", base_lr=0.01, epochs=args.epochs, batch_size=16,
                              lr_policy="cosine", weight_decay=5e-4, test_interval=5)
        recipes = args.recipes.split(",")
        results = compare_recipes(target, work / "fine_tune", start=source, recipes=recipes,
                                  seeds=list(range(args.seeds)), solver=solver,
                                  solvers={"caffe": solver.replace(base_lr=0.001)}
                                  if "caffe" in recipes else {},
                                  image_size=32, augment="off", progress="none")
        rows = [{"recipe": row.recipe, "seed": row.seed, **measure(Path(row.run_dir))}
                for row in results.itertuples()]
    frame = pd.DataFrame(rows)
    text = table(frame, time.monotonic() - started, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
