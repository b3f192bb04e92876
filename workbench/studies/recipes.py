"""Training the same task with several recipes and seeds, and tabulating the runs.

``compare_recipes`` trains a target task with each recipe and seed, as Caffe's flickr-style
example compared a pretrained network against one trained from scratch. Each run is an ordinary
run directory, so a re-run skips the finished ones (``resume=True``)::

    results = compare_recipes("../runs/splits/target", "../runs/fine_tune", seeds=(0, 1, 2),
                              source="../runs/source/model.keras")
    summarize_runs(results)   # mean, std and count of the test accuracy per recipe
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from workbench._checks import check_int
from workbench.data.splitdir import load_splits
from workbench.runs import RunDir
from workbench.training.train import finetune


def compare_recipes(splits: str | Path, runs_dir: str | Path, *, recipes=("scratch",
                    "feature_extraction", "two_stage", "caffe"), seeds=(0, 1, 2),
                    solvers: dict | None = None, **finetune_options) -> pd.DataFrame:
    """Trains every recipe with every seed and returns one row per run.

    Args:
        splits: the split folder of the target task (decoded once, shared by all runs).
        runs_dir: runs are written to ``runs_dir/<recipe>-seed<seed>/``.
        recipes: recipe names (see ``workbench.training.recipes.RECIPES``).
        seeds: seeds; each changes initialisation, order, augmentation and dropout.
        solvers: optional ``{recipe: SolverConfig}`` for recipes that need their own settings
            (Caffe's recipe trains the whole network, so it wants a lower ``base_lr``).
        **finetune_options: passed to :func:`workbench.training.train.finetune` (``source``,
            ``backbone``, ``solver``, ``image_size``, ``progress``, ...).

    Returns:
        A DataFrame with columns recipe, seed, run_dir, then the numbers of ``metrics.json``.
    """
    recipes, seeds = list(recipes), [check_int("seeds", seed, minimum=0) for seed in seeds]
    solvers = dict(solvers or {})
    unknown = sorted(set(solvers) - set(recipes))
    if unknown:
        raise ValueError(f"solvers must name recipes being compared ({recipes}), received: "
                         f"{unknown}")
    if not recipes or not seeds:
        raise ValueError(f"recipes and seeds must not be empty, received: {recipes!r}, {seeds!r}")
    image_size = finetune_options.get("image_size", 224)
    data = load_splits(splits, image_size=image_size,
                       resize_mode=finetune_options.get("resize_mode", "squash"),
                       progress=finetune_options.get("progress", "auto") != "none")
    rows = []
    for recipe in recipes:
        for seed in seeds:
            run_dir = Path(runs_dir) / f"{recipe}-seed{seed}"
            options = dict(finetune_options)
            if recipe in solvers:
                options["solver"] = solvers[recipe]
            run = finetune(data, run_dir, recipe=recipe, seed=seed, resume=True, **options)
            rows.append({"recipe": recipe, "seed": seed, "run_dir": str(run_dir), **run.metrics})
    return pd.DataFrame(rows)


def summarize_runs(results: pd.DataFrame, *, by: str = "recipe",
                   metrics=("test_accuracy", "test_top5")) -> pd.DataFrame:
    """Mean, standard deviation and count of ``metrics`` per group (e.g. per recipe).

    Args:
        results: one row per run, e.g. from :func:`compare_recipes` or :func:`read_metrics`.
        by: the column to group by.
        metrics: the columns to summarise; those missing from ``results`` are left out.

    Returns:
        A DataFrame indexed by ``by`` with a (metric, mean/std/count) column per metric,
        rounded to 4 decimals.

    Raises:
        ValueError: ``results`` is not a DataFrame with ``by`` and one of ``metrics``.
    """
    if not isinstance(results, pd.DataFrame) or by not in results.columns:
        got = list(results.columns) if isinstance(results, pd.DataFrame) \
            else type(results).__name__
        raise ValueError(f"results must be a DataFrame with the column by={by!r}, "
                         f"received: {got}")
    present = [m for m in metrics if m in results.columns]
    if not present:
        raise ValueError(f"results must have one of the columns {list(metrics)}, received: "
                         f"{list(results.columns)}")
    table = results.groupby(by, sort=False)[present].agg(["mean", "std", "count"])
    return table.round(4)


def read_metrics(run_dirs) -> pd.DataFrame:
    """One row per run directory with its ``metrics.json`` (runs without one are skipped).

    Args:
        run_dirs: run directories (paths).

    Returns:
        A DataFrame with a ``run_dir`` column, then the numbers of each ``metrics.json``.

    Raises:
        ValueError: ``run_dirs`` is a single path rather than a list of them.
    """
    if isinstance(run_dirs, (str, bytes, Path)):
        raise ValueError(f"run_dirs must be a list of run directories, received: {run_dirs!r}")
    rows = []
    for run in map(RunDir, run_dirs):
        metrics = run.metrics
        if metrics is not None:
            rows.append({"run_dir": str(run.path), **metrics})
    return pd.DataFrame(rows)

