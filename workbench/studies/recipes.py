"""Training the same task with several recipes and seeds, and tabulating the runs.

``compare_recipes`` trains a target task with each recipe and seed, as Caffe's flickr-style
example compared a pretrained network against one trained from scratch. Each run is an ordinary
run directory, so running it again never gets stuck: finished runs are kept, interrupted ones
continue from their last checkpoint, a folder holding only a failed start is trained afresh, and
a run whose settings changed is trained again, saying so in one line; ``overwrite=True`` trains
every run again (each replaces its old run only when it finishes)::

    results = compare_recipes("runs/demo/splits/target", "runs/demo/fine_tune", seeds=(0, 1, 2),
                              start="runs/demo/source/model.keras")
    summarize_runs(results)   # mean, std and count of the test accuracy per recipe
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pandas as pd

from workbench import models
from workbench._checks import UsageError, check_bool, check_int, deprecated
from workbench._progress import loop_progress
from workbench.data.splitdir import load_splits
from workbench.runs import RunDir
from workbench.training.recipes import get_recipe
from workbench.training.train import SettingsChanged, finetune


def compare_recipes(splits: str | Path, runs_dir: str | Path, *,
                    start: models.StartingPoint | str | None = None, recipes=("scratch",
                    "feature_extraction", "two_stage", "caffe"), seeds=(0, 1, 2),
                    solvers: dict | None = None, overwrite: bool = False,
                    resume: bool | None = None, **finetune_options) -> pd.DataFrame:
    """Trains every recipe with every seed and returns one row per run.

    Before each run it prints one line, ``run 3 of 12: two_stage, seed 1`` (unless
    ``progress="none"``), above that run's progress.

    Args:
        splits: the split folder of the target task (decoded once, shared by all runs).
        runs_dir: runs are written to ``runs_dir/<recipe>-seed<seed>/``.
        start: what every run starts from, as for :func:`~workbench.training.train.finetune`
            (a :class:`~workbench.models.StartingPoint`, a backbone name or a saved ``.keras``
            model); ``backbone``, ``weights``, ``source`` and ``cut_at`` among
            ``finetune_options`` still work for one release, with a ``DeprecationWarning``.
        recipes: recipe names (see ``workbench.training.recipes.RECIPES``).
        seeds: seeds; each changes initialisation, order, augmentation and dropout.
        solvers: optional ``{recipe: SolverConfig}`` for recipes that need their own settings
            (Caffe's recipe trains the whole network, so it wants a lower ``base_lr``).
        overwrite: False keeps the finished runs whose settings are unchanged and continues
            the unfinished ones from their checkpoints; True trains every run again. Either way
            a run whose settings changed is trained again, and a folder without a checkpoint
            (a failed start) is trained afresh. A run trained again replaces the old one only
            when it finishes.
        resume: deprecated: ``resume=False`` is ``overwrite=True``.
        **finetune_options: passed to :func:`workbench.training.train.finetune` (``solver``,
            ``image_size``, ``progress``, ...); ``image_size`` defaults to the source model's
            input or the backbone's natural size.

    Returns:
        A DataFrame with columns recipe, seed, run_dir, then the numbers of ``metrics.json``.
    """
    recipes = [get_recipe(recipe).name for recipe in _as_sequence("recipes", recipes)]
    seeds = [check_int("seeds", seed, minimum=0) for seed in _as_sequence("seeds", seeds)]
    if resume is not None:
        warnings.warn("compare_recipes(resume=...) is deprecated: use overwrite=True to train "
                      "every run again", DeprecationWarning, stacklevel=2)
        overwrite = not check_bool("resume", resume)
    check_bool("overwrite", overwrite)
    solvers = dict(solvers or {})
    unknown = sorted(set(solvers) - set(recipes))
    if unknown:
        raise UsageError(f"solvers must name recipes being compared ({recipes}), received: "
                         f"{unknown}")
    options = dict(finetune_options)
    start = models.StartingPoint.from_arguments(
        start, {name: options.pop(name) for name in models.START_KEYWORDS if name in options},
        caller="compare_recipes")
    if options.get("image_size") is None:
        options["image_size"] = start.image_size()
    talk = options.get("progress", "auto") != "none"
    if any(get_recipe(recipe).pretrained and (overwrite or not RunDir(  # offline: say so
            Path(runs_dir) / f"{recipe}-seed{seed}").resumable)  # before decoding
           for recipe, seed in itertools.product(recipes, seeds)):
        start.fetch_weights(options["image_size"])
    data = load_splits(splits, image_size=options["image_size"],
                       resize_mode=options.get("resize_mode", "squash"),
                       progress=loop_progress(options.get("progress", "auto")))
    rows, total = [], len(recipes) * len(seeds)
    for number, (recipe, seed) in enumerate(itertools.product(recipes, seeds), start=1):
        run_dir = Path(runs_dir) / f"{recipe}-seed{seed}"
        heading = f"run {number} of {total}: {recipe}, seed {seed}"
        kept = not overwrite and RunDir(run_dir).finished  # unless its settings changed
        if talk and not kept:
            print(heading, flush=True)
        run_options = {**options, "solver": solvers.get(recipe, options.get("solver"))}
        try:
            run = finetune(data, run_dir, start=start, recipe=recipe, seed=seed,
                           resume=not overwrite, overwrite=overwrite, **run_options)
        except SettingsChanged as changed:
            if talk:
                print(f"{heading if kept else run_dir.name}: the settings changed "
                      f"({', '.join(changed.settings)}), so it starts again", flush=True)
            run = finetune(data, run_dir, start=start, recipe=recipe, seed=seed,
                           overwrite=True, **run_options)
        else:
            if talk and kept:
                print(f"{heading}: finished earlier with the same settings, kept "
                      "(overwrite=True trains it again)", flush=True)
        rows.append({"recipe": recipe, "seed": seed, "run_dir": str(run_dir), **run.metrics})
    return pd.DataFrame(rows)


def _as_sequence(name: str, values) -> list:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise UsageError(f"{name} must be a list, received: {values!r}")
    values = list(values)
    if not values:
        raise UsageError(f"{name} must not be empty, received: []")
    return values


def summarize_runs(results: pd.DataFrame, *, by: str = "recipe",
                   metrics=("test_accuracy", "test_top5")) -> pd.DataFrame:
    """Mean, standard deviation and count of ``metrics`` per group (e.g. per recipe).

    Args:
        results: one row per run, e.g. from :func:`compare_recipes`.
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
        raise UsageError(f"results must be a DataFrame with the column by={by!r}, "
                         f"received: {got}")
    present = [m for m in metrics if m in results.columns]
    if not present:
        raise UsageError(f"results must have one of the columns {list(metrics)}, received: "
                         f"{list(results.columns)}")
    table = results.groupby(by, sort=False)[present].agg(["mean", "std", "count"])
    return table.round(4)


def read_metrics(run_dirs) -> pd.DataFrame:
    """One row per run directory with its ``metrics.json`` (runs without one are skipped).

    Deprecated, and gone in the next release: nothing uses it; :func:`compare_recipes` returns
    the same rows for the runs it trains, and ``RunDir(path).metrics`` reads one run's.

    Args:
        run_dirs: run directories (paths).

    Returns:
        A DataFrame with a ``run_dir`` column, then the numbers of each ``metrics.json``.

    Raises:
        ValueError: ``run_dirs`` is a single path rather than a list of them.
    """
    deprecated("read_metrics is deprecated and will be removed in the next release: "
               "use compare_recipes()'s table, or RunDir(path).metrics for each run")
    if isinstance(run_dirs, (str, bytes, Path)):
        raise UsageError(f"run_dirs must be a list of run directories, received: {run_dirs!r}")
    rows = []
    for run in map(RunDir, run_dirs):
        metrics = run.metrics
        if metrics is not None:
            rows.append({"run_dir": str(run.path), **metrics})
    return pd.DataFrame(rows)

