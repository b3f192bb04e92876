"""Running several trainings and collecting their numbers into one table.

``compare_recipes`` trains the same task with several recipes and seeds, as Caffe's flickr-style
example compared a pretrained network against one trained from scratch. Each run is an ordinary
run directory, so a re-run skips the finished ones (``resume=True``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from workbench._checks import check_int


def compare_recipes(splits: str | Path, runs_dir: str | Path, *, recipes=("scratch",
                    "feature_extraction", "two_stage", "caffe"), seeds=(0, 1, 2),
                    solvers: dict | None = None, **finetune_options) -> pd.DataFrame:
    """Trains every recipe with every seed and returns one row per run.

    Args:
        splits: the split folder of the target task (decoded once, shared by all runs).
        runs_dir: runs are written to ``runs_dir/<recipe>-seed<seed>/``.
        recipes: recipe names (see ``workbench.finetune.recipes.RECIPES``).
        seeds: seeds; each changes initialisation, order, augmentation and dropout.
        solvers: optional ``{recipe: SolverConfig}`` for recipes that need their own settings
            (Caffe's recipe trains the whole network, so it wants a lower ``base_lr``).
        **finetune_options: passed to :func:`workbench.finetune.train.finetune` (``source``,
            ``backbone``, ``solver``, ``image_size``, ``progress``, ...).

    Returns:
        A DataFrame with columns recipe, seed, run_dir, then the numbers of ``metrics.json``.
    """
    from workbench.finetune.train import finetune, load_splits

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


def summarize(results: pd.DataFrame, *, by: str = "recipe",
              metrics=("test_accuracy", "test_top5")) -> pd.DataFrame:
    """Mean, standard deviation and count of ``metrics`` per group (e.g. per recipe)."""
    present = [m for m in metrics if m in results.columns]
    if not present:
        raise ValueError(f"results must have one of the columns {list(metrics)}, received: "
                         f"{list(results.columns)}")
    table = results.groupby(by, sort=False)[present].agg(["mean", "std", "count"])
    return table.round(4)


def read_metrics(run_dirs) -> pd.DataFrame:
    """One row per run directory with its ``metrics.json`` (runs without one are skipped)."""
    rows = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "metrics.json"
        if path.is_file():
            rows.append({"run_dir": str(run_dir), **json.loads(path.read_text(encoding="utf-8"))})
    return pd.DataFrame(rows)
