"""``finetune``: train a classifier on a split folder into a run directory (see
``workbench.runs`` for the files it writes, each atomically)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from workbench import models, plots
from workbench._cluster import Cluster, barrier, joined
from workbench._device import (execution_context, gpu_count, gpu_name, replica_count,
                               resolve_strategy)
from workbench._checks import (UsageError, check_bool, check_choice, check_folder_path,
                               check_int, check_number, deprecated, short_traceback)
from workbench._progress import in_notebook, loop_progress, watched_notebook
from workbench.data import cache, pipeline
from workbench.data.augment import Augment, resolve_augment, stored_size
from workbench.data.splitdir import SplitData, SplitFolder, load_splits
from workbench.monitor import ResourceMonitor, summarize_resources
from workbench.runs import RunDir
from workbench.training import callbacks as cb
from workbench.training import checkpoint, features, lr_mult
from workbench.training.calibrate import calibrate_run
from workbench.training.recipes import Recipe, get_recipe
from workbench.training.options import Execution, Monitoring
from workbench.training.solver import SolverConfig, SparseCrossentropy, build_optimizer

PROGRESS = ("auto", "lines", "plot", "none")
MAX_IMAGE_SIZE = 4096  # larger inputs do not fit a GPU's memory with any of these backbones
CLASS_WEIGHTS = (None, "balanced")
_RESOLVED_AT_RUN_TIME = {"classes", "dtype_policy", "distribution",  # not compared on resume
                         "augment_placement", "train_stored_size", "class_weights",
                         "workers"}


class RunExists(UsageError):
    """The run directory holds a run (finished, interrupted or diverged) and the call said
    neither ``resume`` nor ``overwrite``; nothing was changed.

    Attributes:
        run_dir: the run directory.
        what: what it holds, in a few words (:meth:`RunDir.describe`).
    """

    def __init__(self, run: RunDir):
        self.run_dir, self.what = run.path, run.describe()
        super().__init__(self.advice(resume="resume=True", overwrite="overwrite=True",
                                     out="run_dir"))

    def advice(self, *, resume: str, overwrite: str, out: str) -> str:
        """The message, naming the three choices in the caller's words (``--resume``...)."""
        return (f"{self.run_dir} already holds a run ({self.what}); nothing was changed. "
                f"Use {resume} to continue it, {overwrite} to replace it once the new run "
                f"finishes, or another {out}")


class SettingsChanged(UsageError):
    """``resume=True`` found a run with other settings in the run directory; nothing was
    changed.

    Attributes:
        run_dir: the run directory.
        settings: the names of the settings that differ.
    """

    def __init__(self, run: RunDir, settings: list[str]):
        self.run_dir, self.settings = run.path, list(settings)
        super().__init__(self.advice(overwrite="overwrite=True", out="run_dir"))

    def advice(self, *, overwrite: str, out: str) -> str:
        """The message, naming the choices in the caller's words."""
        return (f"{self.run_dir} holds a run with other settings ({', '.join(self.settings)}), "
                f"so it cannot be resumed with these; nothing was changed. Use {overwrite} "
                f"(instead of resuming) to replace it, or another {out}")


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl+C, Kernel > Interrupt); what was finished is kept.

    A ``KeyboardInterrupt``, so it stops a notebook, a loop of runs or a command as one; in
    Jupyter it shows as its one-line message (see :class:`workbench._checks.UsageError`).

    Attributes:
        run_dir: the run directory.
        epoch: the epoch that was interrupted.
        epochs: the epochs of the run.
        checkpoint_epoch: the epoch of the checkpoint kept, or None when there is none.
        replaced: whether the run was to replace one in ``run_dir`` (which stays as it was).
    """

    def __init__(self, run_dir, *, epoch: int, epochs: int, checkpoint_epoch: int | None,
                 replaced: bool = False, again: str = "train again with resume=True"):
        self.run_dir, self.epoch, self.epochs = Path(run_dir), epoch, epochs
        self.checkpoint_epoch, self.replaced = checkpoint_epoch, replaced
        super().__init__(self.advice(again=again))

    def advice(self, *, again: str) -> str:
        """The message, ``again`` saying how to go on in the caller's words (``run the cell
        again``, ``run the same command with --resume``)."""
        where = f"Interrupted in epoch {self.epoch} of {self.epochs} ({self.run_dir.name})"
        if self.replaced:
            return (f"{where}; {self.run_dir} still holds the run that was there (the "
                    f"replacement was not finished): {again} to train the replacement again")
        if self.checkpoint_epoch:
            return (f"{where}; its checkpoint of epoch {self.checkpoint_epoch} is kept: "
                    f"{again} to continue from it")
        return f"{where}, before its first checkpoint: {again} to start it again"

    @property
    def _render_traceback_(self):
        return short_traceback(self)


class Run:
    """Deprecated: :func:`finetune` returns a :class:`workbench.runs.RunDir`, the one class of
    a run directory. ``Run(run_dir, ...)`` and ``Run.load(run_dir)`` warn and give
    ``RunDir(run_dir)`` (its ``metrics``, ``history`` and ``lr_table`` are properties)."""

    def __new__(cls, run_dir: str | Path, *args, **kwargs) -> RunDir:
        deprecated("workbench.training.train.Run is deprecated and will be removed in the next "
                   "release: finetune returns a workbench.runs.RunDir; use RunDir(run_dir)")
        return RunDir(run_dir)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunDir:
        """Deprecated: ``RunDir(run_dir)``."""
        deprecated("Run.load(run_dir) is deprecated and will be removed in the next release: "
                   "use workbench.runs.RunDir(run_dir)")
        return RunDir(run_dir)


def finetune(splits: str | Path | SplitData, run_dir: str | Path, *,
             start: models.StartingPoint | str | None = None,
             recipe: str = "two_stage", lr_mult_rules: dict | None = None,
             decay_mult_rules: dict | None = None,
             solver: SolverConfig | None = None, image_size: int | None = None,
             resize_mode: str = "squash", augment: Augment | str | None = "auto",
             class_weight: str | None = None, dropout: float = 0.2, seed: int = 0,
             resume: bool = False, overwrite: bool = False,
             progress: str = "auto", execution: Execution | None = None,
             monitoring: Monitoring | None = None, **deprecated) -> RunDir:
    """Fine-tunes a pretrained network on a split dataset and writes a run directory.

    A run directory that holds a run (finished, interrupted or diverged) is never changed
    unless asked: without ``resume`` or ``overwrite`` the call raises :class:`RunExists`
    before any work. With ``overwrite`` the new run is trained in a folder beside it and
    replaces it in one step only when it finishes, so a failing, diverging or killed
    replacement leaves the old run as it was.

    Args:
        splits: a split directory (see ``workbench split``), or :class:`SplitData`.
        run_dir: the run directory to write (created).
        start: what the model starts from (:class:`~workbench.models.StartingPoint`, or a
            text ``StartingPoint.parse`` reads: ``"efficientnet_b0"``, ``"source/model.keras"``);
            default ``mobilenet_v2`` with ImageNet weights. ``backbone``, ``weights``,
            ``source`` and ``cut_at`` still work for one release, with a ``DeprecationWarning``.
        recipe: one of ``recipes.RECIPES``.
        lr_mult_rules: extra ``{layer pattern: multiplier}`` rules, checked before the
            recipe's own in every stage (e.g. ``{"conv1*": 0}`` to keep conv1 frozen; a
            pattern with a ``/`` names weights, e.g. ``{"*/bias": 2}``, Caffe's convention).
        decay_mult_rules: ``{pattern: multiplier}`` of the weight decay (Caffe's
            ``decay_mult``, e.g. ``{"*/bias": 0}``); by default 2-D and larger weights are
            decayed and biases and normalisation parameters are not.
        solver: the :class:`SolverConfig`; defaults to its defaults.
        image_size: side of the square input images; default the source model's input or the
            backbone's natural size (``models.natural_image_size``).
        resize_mode: ``"squash"``, ``"crop"`` or ``"pad"``.
        augment: augmentation of the training images (``workbench.data.augment.Augment``:
            random resized crops, small rotation and colour changes, flips if asked). ``"auto"``
            turns it on when the median class has fewer than ``augment.FEW_IMAGES_PER_CLASS``
            (100) training images; None or ``"off"`` never augments; texts such as ``"on+flip"``
            are read by ``augment.augment_argument``. It runs in the model on a GPU, else in the
            pipeline (see ``Augment.placement``).
        class_weight: ``"balanced"`` weighs each training image's loss by
            ``images / (classes * images of its class)``, so every class counts alike in an
            imbalanced folder; None weighs all alike.
        dropout: dropout rate before the new head.
        seed: seeds initialisation, order, augmentation and dropout; a seeded run is
            reproducible on CPU.
        resume: continue the run in ``run_dir`` from its last checkpoint (a finished run is
            returned as is; a folder holding only a failed start, without a checkpoint,
            starts afresh). Its settings must be the run's (else :class:`SettingsChanged`).
        overwrite: train a new run that replaces the one in ``run_dir`` when it finishes.
        progress: ``"lines"`` (one line per epoch), ``"plot"`` (live curves in a notebook),
            ``"none"``, or ``"auto"`` (plot in a notebook, lines elsewhere).
        execution: precision and distribution (:class:`~workbench.training.options.Execution`;
            by default mixed float16 on a GPU, float32 on the CPU, mirrored over several GPUs;
            ``strategy="distributed"`` for one of several worker processes, of which worker 0
            writes ``run_dir`` and the others return its :class:`RunDir` once it is written).
        monitoring: what is recorded beside the history
            (:class:`~workbench.training.options.Monitoring`; by default resources and weight
            statistics, no TensorBoard).

    Returns:
        The :class:`~workbench.runs.RunDir` of ``run_dir`` (its ``metrics``, ``history``,
        ``lr_table``, model files, ...).

    Raises:
        UsageError: for a bad argument (``workbench._checks.UsageError``, a ``ValueError``),
            naming it and the value received; e.g. a ``source`` beside another backbone.
        RunExists: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        SettingsChanged: ``resume=True`` and ``run_dir`` holds a run with other settings.
        TrainingDiverged: if the loss became NaN or exploded; the last good checkpoint stays
            (with ``overwrite``, the run that was there stays instead).
        TrainingInterrupted: on Ctrl+C or Kernel > Interrupt while training (a
            ``KeyboardInterrupt``), saying in one line what is kept and how to continue.
    """
    start = models.StartingPoint.from_arguments(start, deprecated, caller="finetune")
    check_choice("progress", progress, PROGRESS)
    execution = execution or Execution()
    monitoring = monitoring or Monitoring()
    # first: several workers must start their runtime before the backend does anything else
    strategy = resolve_strategy(execution.strategy, join_timeout=execution.join_timeout)
    cluster = joined() if execution.strategy == "distributed" else None
    if cluster is not None and not cluster.chief:
        progress = "none"  # worker 0 reports
    job = _job(splits, run_dir, start=start, recipe=recipe, lr_mult_rules=lr_mult_rules,
               decay_mult_rules=decay_mult_rules, solver=solver, image_size=image_size,
               resize_mode=resize_mode, augment=augment, class_weight=class_weight,
               dropout=dropout, seed=seed, resume=resume, overwrite=overwrite,
               execution=execution)
    plan = _plan(RunDir(job.run_dir), job.config, resume=resume, overwrite=overwrite,
                 progress=progress)
    if plan.finished:  # with the same settings: nothing to do
        return plan.run
    if cluster is not None:  # every worker has read the run before worker 0 may clear it
        barrier("workbench: run directory read")
    inputs = _inputs(job, plan, strategy=strategy, cluster=cluster, progress=progress)
    _warn_if_jax_on_cpu()
    return _train_run(job, plan, inputs, strategy=strategy, cluster=cluster,
                      execution=execution, monitoring=monitoring, progress=progress)


@dataclasses.dataclass
class _Job:
    """The checked arguments of a :func:`finetune` call, and the settings it records."""

    splits: str | Path | SplitData
    run_dir: Path
    start: models.StartingPoint
    recipe: Recipe
    lr_mult_rules: dict | None
    decay_mult_rules: dict | None
    solver: SolverConfig
    image_size: int
    resize_mode: str
    augment: Augment | None
    class_weight: str | None
    dropout: float
    seed: int
    config: dict  # config.json: completed once the data is read and the precision known


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a :func:`finetune` call does with its run directory."""

    run: RunDir
    resume: bool = False        # continue the run's checkpoint
    replacing: bool = False     # train beside the run and swap it in when it finishes
    finished: bool = False      # a finished run with the same settings: returned as it is
    asked_resume: bool = False  # the caller asked to resume (a notebook rerun continues)


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What training reads: the decoded splits, the batches and the class weights."""

    data: SplitData
    train: pipeline.Batches
    val: pipeline.Batches | None
    augment: Augment | None
    class_weight: dict | None


def _job(splits, run_dir, *, start, recipe, lr_mult_rules, decay_mult_rules, solver,
         image_size, resize_mode, augment, class_weight, dropout, seed, resume, overwrite,
         execution) -> _Job:
    """Checks what :func:`finetune` can check before reading any image or building a model
    (raising ``UsageError`` naming the argument), and the settings."""
    check_bool("resume", resume)
    check_bool("overwrite", overwrite)
    if resume and overwrite:
        raise UsageError("resume and overwrite must not both be True: resume continues the "
                         "run in run_dir, overwrite replaces it")
    check_folder_path("run_dir", run_dir)  # a file in the way: said before decoding
    solver = solver or SolverConfig()
    recipe_ = get_recipe(recipe)
    if solver.max_iter is None:  # enough epochs for its stages? (else known once batched)
        recipe_.stage_epochs(solver.epochs)
    if image_size is None:
        image_size = start.image_size()
    check_int("image_size", image_size, minimum=8, maximum=MAX_IMAGE_SIZE)
    check_int("seed", seed, minimum=0)
    check_number("dropout", dropout, minimum=0.0, maximum=0.99)
    check_choice("class_weight", class_weight, CLASS_WEIGHTS)
    lr_mult.check_rules("lr_mult_rules", lr_mult_rules or {})
    if decay_mult_rules:
        lr_mult.check_rules("decay_mult_rules", decay_mult_rules)
    augment = resolve_augment(augment, splits.labels["train"] if isinstance(
        splits, SplitData) else SplitFolder(splits).labels("train"))
    config = {
        "splits": splits.splits_dir if isinstance(splits, SplitData)
        else str(Path(splits).resolve()),
        **start.settings(),
        "recipe": recipe,
        "lr_mult_rules": dict(lr_mult_rules or {}),
        "decay_mult_rules": dict(decay_mult_rules) if decay_mult_rules else None,
        "solver": solver.to_dict(),
        "image_size": image_size, "resize_mode": resize_mode,
        "augment": dataclasses.asdict(augment) if augment else None,
        "class_weight": class_weight, "dropout": dropout,
        "seed": seed, **execution.to_dict(),
        "keras_backend": keras.backend.backend(), "keras_version": keras.__version__,
    }
    return _Job(splits, Path(run_dir), start, recipe_, lr_mult_rules, decay_mult_rules, solver,
                image_size, resize_mode, augment, class_weight, dropout, seed, config)


def _plan(run: RunDir, config: dict, *, resume: bool, overwrite: bool, progress: str) -> _Plan:
    """Decides what happens to the run folder, before any work: a run there is continued
    (``resume``), replaced when the new one finishes (``overwrite``), or left alone.

    Raises:
        RunExists: the folder holds a run and neither ``resume`` nor ``overwrite`` is set.
        SettingsChanged: ``resume`` with settings other than the run's.
    """
    run.recover()  # what a killed replacement left beside the run
    if run.resumable and not (resume or overwrite):
        raise RunExists(run)
    if resume and not run.resumable and progress != "none" and run.exists:
        print(f"{run.path.name}: no checkpoint to resume from, so it starts afresh", flush=True)
    if resume and run.resumable:
        changed = _changed_settings(run, config)
        if changed:
            raise SettingsChanged(run, changed)
        return _Plan(run, resume=True, finished=run.finished, asked_resume=True)
    return _Plan(run, replacing=overwrite and run.resumable, asked_resume=resume)


def _inputs(job: _Job, plan: _Plan, *, strategy, cluster, progress: str) -> _Inputs:
    """Fetches the starting weights (offline, that fails before any image is decoded), reads
    the splits and makes the batches; completes ``job.config`` with what the data decides."""
    if job.recipe.pretrained and not plan.resume:
        job.start.fetch_weights(job.image_size)
    data = job.splits if isinstance(job.splits, SplitData) else load_splits(
        job.splits, image_size=job.image_size, resize_mode=job.resize_mode,
        progress=loop_progress(progress))
    job.config["classes"] = data.classes
    augment = job.augment
    if augment is not None:  # where it runs; a resumed run keeps where it began
        augment = dataclasses.replace(augment, placement=(
            plan.run.config.get("augment_placement") if plan.resume else None)
            or _placement(augment))
        job.config["augment_placement"] = augment.placement
    train_images = _train_images(job.splits, data, augment, job.image_size, job.resize_mode,
                                 progress)
    job.config["train_stored_size"] = int(train_images.shape[1])
    weights_by_class = balanced_class_weights(data.labels["train"], len(data.classes)) \
        if job.class_weight == "balanced" else None
    job.config["class_weights"] = list(weights_by_class.values()) if weights_by_class else None
    train, val = _batches(data, train_images, solver=job.solver, strategy=strategy,
                          cluster=cluster, seed=job.seed, augment=augment,
                          image_size=job.image_size)
    job.recipe.stage_epochs(job.solver.total_epochs(train.steps_per_epoch))  # enough epochs?
    return _Inputs(data, train, val, augment, weights_by_class)


def _train_run(job: _Job, plan: _Plan, inputs: _Inputs, *, strategy, cluster, execution,
               monitoring, progress: str) -> RunDir:
    """Trains the run and writes its folder (worker 0 only), then returns it."""
    run_dir, solver, data = job.run_dir, job.solver, inputs.data
    trained = False
    try:
        with contextlib.ExitStack() as stack:  # the folder written: closed once the run is written
            with execution_context(execution.precision, strategy) as (policy, _):
                job.config.update(dtype_policy=policy, distribution=_name(strategy))
                if cluster is not None:
                    job.config["workers"] = cluster.size
                if progress != "none":  # what a user should know before the first epoch, once
                    _announce(plan, data, recipe=job.recipe.name, policy=policy, cluster=cluster)
                model, state, resumed = _start_model(job, plan, inputs)
                out = _run_folder(stack, plan, cluster, fresh=not resumed)
                written = RunDir(out)
                written.write_config(job.config)
                written.write_labels(data.classes)
                if not resumed:  # the starting point, for comparing filters before and after
                    written.save_model(model, "initial")
                recorder = ResourceMonitor(written.resources_path).start() \
                    if monitoring.resources and (cluster is None or cluster.chief) else None
                with _interrupt_says_what_is_kept(plan, out, state, solver, inputs.train), \
                        recorder or contextlib.nullcontext():  # stops sampling even if it fails
                    problem, stopped_early = train_stages(
                        model, state, job.recipe, train=inputs.train, val=inputs.val,
                        solver=solver, run_dir=out, extra_rules=job.lr_mult_rules,
                        decay_rules=job.decay_mult_rules, seed=job.seed,
                        resumed_from=plan.run if resumed else None, progress=progress,
                        extra_callbacks=_monitor_callbacks(written, recorder),
                        tensorboard=monitoring.tensorboard, num_classes=len(data.classes),
                        class_weight=inputs.class_weight, title=run_dir.name,
                        cache_features=execution.cache_features and strategy is None
                        and cluster is None)
            # Outside the distribution: worker 0 alone evaluates and writes what the run ends
            # with, while the others wait (under it, every forward pass would need all workers).
            if cluster is not None and not cluster.chief:
                barrier("workbench: run written")
                if problem:  # worker 0 kept the checkpoint, in the run unless replacing it
                    raise cb.TrainingDiverged(
                        problem, run_dir=run_dir, epoch=state.epoch + 1, base_lr=solver.base_lr,
                        checkpoint_epoch=None if plan.replacing else plan.run.checkpoint_epoch,
                        replaced=plan.replacing)
                return plan.run
            trained = True
            _finish(out, model, data, solver, state, problem=problem, stopped_early=stopped_early,
                    resources=monitoring.resources, batch_size=inputs.train.batch_size,
                    title=run_dir.name, reuse_model=strategy is None and cluster is None)
            if problem:
                raise cb.TrainingDiverged(
                    problem, run_dir=run_dir, epoch=state.epoch + 1, base_lr=solver.base_lr,
                    checkpoint_epoch=None if plan.replacing else written.checkpoint_epoch,
                    replaced=plan.replacing)
    finally:  # once the run is in place, the other workers may read it
        if trained and cluster is not None and cluster.chief:
            barrier("workbench: run written")
    return plan.run


def _batches(data: SplitData, train_images, *, solver: SolverConfig, strategy, cluster, seed,
             augment, image_size) -> tuple[pipeline.Batches, pipeline.Batches | None]:
    """The training and validation batches: each worker feeds its part of every batch, and
    with several devices of a ``keras.distribution`` evaluation batches split evenly."""
    batch_size = min(solver.batch_size, len(data.labels["train"]))
    devices = replica_count(strategy)
    if batch_size % devices:  # each batch is split evenly between the devices
        raise UsageError(f"batch_size must be a multiple of the {devices} devices "
                         f"{_name(strategy)} trains on, received: {batch_size}")
    shard = (cluster.rank, cluster.size) if cluster else (0, 1)
    pad_to = devices if hasattr(strategy, "device_mesh") else 1  # a keras.distribution
    train = pipeline.Batches(train_images, data.labels["train"], batch_size=batch_size,
                             seed=seed, augment=augment, drop_remainder=True,
                             image_size=image_size, shard=shard)
    val = _eval_batches(data, "val", batch_size if pad_to > 1 else solver.batch_size,
                        shard=shard, pad_to=pad_to)
    return train, val


def _announce(plan: _Plan, data: SplitData, *, recipe: str, policy: str, cluster) -> None:
    """The lines a user should read before the first epoch, once."""
    name = plan.run.path.name
    doing = ", resuming" if plan.resume else ", replacing the run there" if plan.replacing else ""
    print(f"{name}: {recipe} on {_device_words(cluster)}, {policy}{doing}", flush=True)
    notes = _data_notes(data)
    if notes:
        print(f"{name}: note: {'; '.join(notes)}", flush=True)


def _start_model(job: _Job, plan: _Plan, inputs: _Inputs
                 ) -> tuple[keras.Model, cb.RunState, bool]:
    """``(model, state, resumed)``: the run's checkpoint when resuming, else the model built
    from its starting point, with every ``lr_mult``/``decay_mult`` rule checked against it in
    every stage (before anything is written)."""
    resumed = checkpoint.load_checkpoint(plan.run.path) if plan.resume else None
    if resumed is not None:
        return resumed[0], cb.RunState(**resumed[1]), True
    keras.utils.set_random_seed(job.seed)
    augment = inputs.augment
    model = build_model(job.recipe, start=job.start,
                        num_classes=len(inputs.data.classes), image_size=job.image_size,
                        dropout=job.dropout,
                        augmentation=models.RandomAugment(augment, seed=job.seed,
                                                          name="augmentation")
                        if augment is not None and augment.placement == "model" else None)
    for stage in job.recipe.stages:
        lr_mult.check_rules("lr_mult_rules", _stage_rules(model, stage, job.lr_mult_rules),
                            model=model)
    if job.decay_mult_rules:
        lr_mult.check_rules("decay_mult_rules", job.decay_mult_rules, model=model)
    return model, cb.RunState(), False


def _run_folder(stack: contextlib.ExitStack, plan: _Plan, cluster, *, fresh: bool) -> Path:
    """The folder this process writes: the run directory, a new folder beside it that replaces
    it when the block of ``stack`` succeeds (``plan.replacing``), or for a worker other than 0
    a scratch folder (worker 0 writes the run)."""
    if cluster is not None and not cluster.chief:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix=f"workbench-worker{cluster.rank}-")))
    if plan.replacing:
        out = stack.enter_context(plan.run.replacement()).path
    else:
        out = plan.run.path
        if fresh:
            plan.run.clear()  # a failed start: nothing of value (a run would need overwrite)
    RunDir(out).remove_partial_files()
    return out


@contextlib.contextmanager
def _interrupt_says_what_is_kept(plan: _Plan, out: Path, state: cb.RunState,
                                 solver: SolverConfig, train):
    """Turns Ctrl+C or Kernel > Interrupt during training into :class:`TrainingInterrupted`:
    one line saying what is kept and how to go on, not Keras's stack."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, TrainingInterrupted):
            raise
        again = "run the cell again" if in_notebook() and plan.asked_resume \
            else "train again with resume=True"
        raise TrainingInterrupted(
            plan.run.path, epoch=state.epoch + 1,
            epochs=solver.total_epochs(train.steps_per_epoch),
            checkpoint_epoch=None if plan.replacing else RunDir(out).checkpoint_epoch,
            replaced=plan.replacing, again=again) from interrupt


def _finish(run_dir: Path, model: keras.Model, data: SplitData, solver: SolverConfig,
            state: cb.RunState, *, problem: str | None, stopped_early: bool, resources: bool,
            batch_size: int, title: str, reuse_model: bool) -> None:
    """Writes what a run ends with: ``model.keras``, ``metrics.json`` (the test numbers, and the
    time of the epochs the run kept summed over every attempt) and ``curves.png`` (its legend
    ``title``: the run's name, also when ``run_dir`` is the new folder of a replacement); for a
    diverged run only ``metrics.json`` saying so. ``reuse_model``: ``model`` lives on this
    process alone, so :func:`_final_metrics` may evaluate and calibrate it instead of loading
    the files written from it."""
    run = RunDir(run_dir)
    if problem:
        run.write_metrics({"status": "diverged", "error": problem, "epochs": state.epoch})
        return
    run.save_model(model, "final")
    metrics = _final_metrics(run_dir, data, solver.batch_size, state,
                             status="stopped_early" if stopped_early else "completed",
                             in_memory=model if reuse_model else None)
    history = run.history
    seconds = float(history["seconds"].sum())
    images = len(run.steps) * batch_size
    metrics.update({"train_seconds": round(seconds, 3),
                    "images_per_second": round(images / seconds, 1) if seconds else None})
    if resources:
        metrics.update(_resource_summary(run))
    run.write_metrics(metrics)
    run.write_figure("curves", plots.training_curves({title: history}))


def train_stages(model: keras.Model, state: cb.RunState, recipe: Recipe, *, train, val,
                 solver: SolverConfig, run_dir: Path, extra_rules=None, decay_rules=None,
                 seed: int = 0, resumed_from: RunDir | None = None, progress: str = "none",
                 extra_callbacks=(), tensorboard: bool = False, num_classes: int,
                 class_weight=None, title: str | None = None,
                 cache_features: bool = False) -> tuple[str | None, bool]:
    """Trains the recipe's stages from ``state.epoch`` on, writing the run's files to
    ``run_dir``: each stage is compiled with its multipliers, its rows of ``lr_table.csv``
    written, then trained with the history, best-model, early-stopping and checkpoint callbacks.

    Args:
        model: the classifier (``models.classifier``), built or resumed.
        state: the run state, updated in place (``cb.RunState()`` for a new run).
        recipe: the :class:`Recipe` whose stages are trained.
        train: the training ``pipeline.Batches``; ``val`` the validation ones or None.
        solver: the :class:`SolverConfig`.
        run_dir: the folder written.
        extra_rules: the user's ``lr_mult`` rules.
        decay_rules: the user's ``decay_mult`` rules.
        seed: seeds the random layers per epoch (``cb.ReseedRandomLayers``).
        resumed_from: the :class:`RunDir` the checkpoint came from, or None.
        progress: ``"lines"``, ``"plot"``, ``"none"`` or ``"auto"``.
        extra_callbacks: more Keras callbacks (resource monitor, weight statistics).
        tensorboard: also write TensorBoard logs to ``run_dir/logs``.
        num_classes: the number of classes (for the top-5 metric).
        class_weight: ``{class: weight}`` or None.
        title: the run's name in the live figure (default ``run_dir``'s name).
        cache_features: train a stage that trains only the head on the features of the
            frozen part, computed once (``features.head_fit``; not with ``tensorboard``, whose
            logs would describe the head's fit). Such a stage writes its checkpoint and
            ``best.keras`` when it ends (its epochs cost less than writing them), so a kill
            within it trains its epochs again.

    Returns:
        ``(problem, stopped_early)``: the divergence message or None, and whether early
        stopping ended the run.
    """
    epochs = solver.total_epochs(train.steps_per_epoch)
    total_batches = solver.total_batches(train.steps_per_epoch)  # max_iter need not fill epochs
    test_every = _epochs_between(solver.test_interval, solver.test_interval_iters, solver, train)
    save_every = _epochs_between(solver.snapshot_interval, solver.snapshot_iters, solver, train)
    if progress == "auto":
        progress = "plot" if watched_notebook() else "lines"
    live = cb.LivePlot(run_dir, title=title) if progress == "plot" else None  # one figure
    # a resumed run keeps the tables of the stages it finished before it was stopped
    counts = recipe.stage_epochs(epochs)
    done = [stage.name for stage, end in zip(recipe.stages, itertools.accumulate(counts))
            if end <= state.epoch]
    earlier = resumed_from.lr_table if resumed_from else None
    lr_tables = [earlier[earlier["stage"].isin(done)]] if earlier is not None else []
    run = RunDir(run_dir)
    stage_start = 0
    for index, (stage, count) in enumerate(zip(recipe.stages, counts)):
        stage_end = stage_start + count
        if state.epoch >= stage_end:
            stage_start = stage_end
            continue
        if not (resumed_from and state.stage == index and state.epoch > stage_start):
            compile_stage(model, stage, extra_rules, solver, train_bn=recipe.train_bn,
                          total_steps=count * train.steps_per_epoch, num_classes=num_classes,
                          decay_rules=decay_rules, weighted=bool(val and val.pad_to > 1))
        state.stage = index
        # written before the stage trains, so that a kill at any moment keeps every
        # stage's rows that a resumed run needs
        lr_tables.append(lr_mult.lr_table(model, model.optimizer, base_lr=solver.base_lr)
                         .assign(stage=stage.name))
        run.write_lr_table(pd.concat(lr_tables))
        fast = features.head_fit(model, train, val, progress=loop_progress(progress)) \
            if cache_features and not tensorboard else None  # the head on features, if exact
        guard = cb.DivergenceGuard()
        early_stop = cb.EarlyStop(state, patience=solver.early_stopping)
        interrupt = cb.StopOnInterrupt()  # first: an interrupted step writes nothing after it
        # epochs on features take less than writing the model: best.keras is kept in memory
        # and written with the checkpoint, at the end of the stage
        best = cb.BestModel(run_dir, state, guard=guard, keep=fast.changing if fast else None)
        # Every file an epoch appends to is written before that epoch's checkpoint: a kill
        # right after the checkpoint must not lose a row that a resumed run will not redo.
        callbacks = [interrupt, cb.ReseedRandomLayers(seed),
                     cb.HistoryLogger(run_dir, state, stage.name), guard, best, early_stop,
                     cb.StopAtStep(state, total_batches), *extra_callbacks,
                     cb.Checkpointer(run_dir, state, interval=stage_end if fast else save_every,
                                     stage_end=stage_end, guard=guard, best=best),
                     *_progress_callbacks(progress, live, epochs, stage.name)]
        if tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.tensorboard_dir)))
        fit_model, fit_train, fit_val = (fast.model, fast.train, fast.val) if fast \
            else (model, train, val)
        with interrupt:
            fit_model.fit(fit_train.for_keras(start_epoch=state.epoch),
                          steps_per_epoch=train.steps_per_epoch, epochs=stage_end,
                          initial_epoch=state.epoch,
                          validation_data=fit_val.for_keras() if val else None,
                          validation_steps=val.steps_per_epoch if val else None,
                          validation_freq=_validation_epochs(test_every, state.epoch, stage_end),
                          callbacks=fast.on_classifier(callbacks) if fast else callbacks,
                          shuffle=False, class_weight=class_weight, verbose=0)
        if guard.problem or early_stop.stopped:
            return guard.problem, early_stop.stopped
        stage_start = stage_end
    return None, False


JAX_ON_CPU = ("Keras runs on JAX and no GPU is visible: on a CPU, JAX trains MobileNetV2 14-18x "
              "slower than TensorFlow (16 against 221 images/s at 96 px on 2 cores); set "
              "KERAS_BACKEND=tensorflow before Python starts to train on the CPU")
_WARNED = set()  # what this process has already been told, so that it is said once


def _warn_if_jax_on_cpu() -> None:
    """Warns, once per process, when training would run on JAX without a GPU."""
    if keras.backend.backend() != "jax" or "jax_on_cpu" in _WARNED or gpu_count():
        return
    _WARNED.add("jax_on_cpu")
    warnings.warn(JAX_ON_CPU, RuntimeWarning, stacklevel=3)


def _device_words(cluster: Cluster | None = None) -> str:
    """``"1 GPU (NVIDIA H200)"``, ``"the CPU (no GPU found)"``, or for several workers
    ``"4 workers, 8 GPUs (NVIDIA H200)"`` (JAX counts every worker's GPUs)."""
    gpus = gpu_count()
    words = f"{gpus} GPU{'s' if gpus > 1 else ''} ({gpu_name()})" if gpus \
        else "the CPU (no GPU found)"
    return f"{cluster.size} workers, {words}" if cluster else words


def _name(strategy) -> str | None:
    """A strategy's class name as ``config.json`` records it, None for one device."""
    return type(strategy).__name__ if strategy is not None else None


def _monitor_callbacks(run: RunDir, recorder) -> list:
    """The resource monitor's hooks and the per-layer weight statistics."""
    if recorder is None:
        return []
    return [cb.MonitorResources(recorder), cb.WeightStats(run.weight_stats_path)]


def _resource_summary(run: RunDir) -> dict:
    """The monitor's summary as flat ``resources_*`` entries of ``metrics.json``."""
    frame = run.resources
    if frame is None:  # the monitor never wrote its file
        return {}
    summary = summarize_resources(frame)
    return {f"resources_{name}": value for name, value in summary.items()
            if value is not None and name != "images_per_second"}


def _changed_settings(run: RunDir, config: dict) -> list[str]:
    """Names of the settings in which ``config`` differs from the run's ``config.json``."""
    saved = run.config
    now = json.loads(json.dumps(config))
    return sorted(key for key in set(saved) | set(now)
                  if key not in _RESOLVED_AT_RUN_TIME and saved.get(key) != now.get(key))


def _data_notes(data: SplitData) -> list[str]:
    """What the split cannot tell, said before the first epoch (training goes on): without a
    val split nothing measures the model while it trains; a class with one training image is
    too few to learn, or to see whether it was learnt."""
    counts = np.bincount(data.labels["train"], minlength=len(data.classes))
    single = [data.classes[index] for index in np.flatnonzero(counts == 1)]
    notes = []
    if "val" not in data.images:
        notes.append("there is no val split, so nothing measures the model while it trains, "
                     "no best checkpoint is kept and the probabilities stay uncalibrated")
    if single:
        shown = ", ".join(repr(name) for name in single[:5]) + (
            f" and {len(single) - 5} more" if len(single) > 5 else "")
        notes.append(f"class{'es' if len(single) > 1 else ''} {shown} "
                     f"{'have' if len(single) > 1 else 'has'} a single training image: too few "
                     "to learn, or to tell whether it was learnt; add images or split again "
                     "with a min_per_class of at least 2 to drop "
                     f"{'them' if len(single) > 1 else 'it'}")
    return notes


def _eval_batches(data: SplitData, split: str, batch_size: int, *, shard=(0, 1),
                  pad_to: int = 1) -> pipeline.Batches | None:
    if split not in data.images:
        return None
    return pipeline.Batches(data.images[split], data.labels[split], batch_size=batch_size,
                            shuffle=False, shard=shard, pad_to=pad_to)


def _placement(augment: Augment) -> str:
    """Where ``augment`` runs: as asked, or for ``"auto"`` in the model on a GPU (no host
    work beyond a window copy) and in the pipeline on the CPU (no change to the model)."""
    if augment.placement != "auto":
        return augment.placement
    return "model" if gpu_count() else "pipeline"


def _train_images(splits, data: SplitData, augment, image_size: int, resize_mode: str,
                  progress: str):
    """The training images, cached ``augment.margin`` times larger when augmenting (at most
    as large as the median original image: see ``augment.stored_size``)."""
    folder = Path(splits.splits_dir if isinstance(splits, SplitData) else splits)
    if augment is None or augment.margin == 1 or not (folder / "splits.csv").is_file():
        return data.images["train"]  # (SplitData made in memory: no originals to read)
    folder = SplitFolder(folder)
    table = folder.table[folder.table["split"] == "train"]
    short_sides = np.minimum(table["width"], table["height"]) \
        if {"width", "height"} <= set(table.columns) else None
    side = stored_size(image_size, augment.margin, short_sides)
    if side == image_size:
        return data.images["train"]
    return cache.build_cache(folder.paths("train"), root=folder.data_root, image_size=side,
                             resize_mode=resize_mode, cache_dir=folder.cache_dir,
                             progress=loop_progress(progress))


def balanced_class_weights(labels, num_classes: int) -> dict:
    """The weights of ``class_weight="balanced"``, as scikit-learn's ``"balanced"``.

    Args:
        labels: the class index of each training image.
        num_classes: how many classes the model has.

    Returns:
        ``{class: images / (classes present * images of the class)}``, 1.0 for a class
        without images.
    """
    labels = np.asarray(labels)
    check_int("num_classes", num_classes, minimum=1)
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise UsageError(f"labels must be class indices below num_classes={num_classes}, "
                         f"received: {labels!r}")
    counts = np.bincount(labels, minlength=num_classes)
    present = np.count_nonzero(counts)
    return {index: float(len(labels) / (present * count)) if count else 1.0
            for index, count in enumerate(counts)}


def build_model(recipe: Recipe, *, start: models.StartingPoint | str | None = None,
                num_classes, image_size, dropout, augmentation=None,
                **deprecated) -> keras.Model:
    """The classifier a recipe starts from: pretrained features, or the same net at random
    (``finetune``'s, and ``lr_find.range_test``'s).

    Args:
        recipe: the :class:`~workbench.training.recipes.Recipe` (``pretrained`` or not).
        start: the :class:`~workbench.models.StartingPoint` (``backbone``, ``weights``,
            ``source`` and ``cut_at`` still work for one release, with a warning).
        num_classes: classes of the new head.
        image_size: side of the square input.
        dropout: dropout rate before the new head.
        augmentation: a layer applied to the raw pixels in training, or None.
    """
    start = models.StartingPoint.from_arguments(start, deprecated, caller="build_model")
    features = start.features(image_size, pretrained=recipe.pretrained)
    return models.classifier(features, num_classes, dropout=dropout, train_bn=recipe.train_bn,
                             augmentation=augmentation)


def compile_stage(model: keras.Model, stage, extra_rules, solver: SolverConfig, *,
                  train_bn: bool, total_steps: int, num_classes: int,
                  decay_rules: dict | None = None, weighted: bool = False) -> None:
    """Sets the stage's learning-rate and weight-decay multipliers (freezing multiplier 0) and
    compiles. ``total_steps`` counts batches (``build_optimizer`` divides by ``iter_size``).
    ``weighted``: the accuracies count sample weights (Keras's ``weighted_metrics``), as the
    padded evaluation batches of several JAX devices need (padding weighs 0); with a
    ``class_weight`` the training accuracies are then class-weighted too."""
    models.set_trainable(model, train_bn=train_bn)  # undoes the previous stage's freezing
    rules = _stage_rules(model, stage, extra_rules)
    optimizer = lr_mult.with_lr_multipliers(build_optimizer(solver, total_steps), model, rules,
                                            default=stage.default, decay_rules=decay_rules)
    metrics = _metrics(num_classes)
    model.compile(optimizer=optimizer, loss=SparseCrossentropy(solver.label_smoothing),
                  metrics=None if weighted else metrics,
                  weighted_metrics=metrics if weighted else None,
                  steps_per_execution=solver.steps_per_execution)


def _stage_rules(model: keras.Model, stage, extra_rules) -> dict:
    """The learning-rate multipliers of a stage: the user's rules, then the stage's own, then
    for a discriminative stage the backbone's thirds."""
    rules = {**(extra_rules or {}), **stage.rules}
    if stage.backbone_thirds is not None:
        features = model.get_layer("backbone")
        thirds = lr_mult.depth_groups(features, multipliers=stage.backbone_thirds)
        for pattern, value in thirds.items():
            rules.setdefault(pattern, value)
    return rules


def _epochs_between(epochs: int, iterations: int | None, solver: SolverConfig, train) -> int:
    """An interval in epochs: ``epochs``, or Caffe's interval in iterations (``iter_size``
    batches each) rounded to the nearest whole epoch, as validation and checkpoints run at the
    end of an epoch."""
    if iterations is None:
        return epochs
    return max(1, round(iterations * solver.iter_size / train.steps_per_epoch))


def _validation_epochs(interval: int, start: int, end: int) -> list[int]:
    """The epochs (counted from 1) in ``start + 1 .. end`` that end with a validation pass:
    every ``interval``-th and the last, so that a stage (or a run) shorter than the interval
    is validated too and has a best model."""
    return sorted({epoch for epoch in range(start + 1, end + 1) if epoch % interval == 0}
                  | {end})


def _metrics(num_classes: int) -> list:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5")]


def _progress_callbacks(progress: str, live, epochs: int, stage_name: str) -> list:
    if live is not None:
        return [live]
    if progress == "lines":
        return [cb.EpochLines(epochs, stage_name)]
    return []


def _final_metrics(run_dir: Path, data: SplitData, batch_size: int, state: cb.RunState, *,
                   status: str, in_memory: keras.Model | None = None) -> dict:
    """Evaluates the best model (or the final one) on the validation and test splits.

    ``in_memory``, the trained model (whose weights ``model.keras`` was just written from), is
    calibrated as the final model, and evaluated as it is when its weights are the best model's
    too (the last epoch was the best, or the run kept no best model): the same numbers as the
    files' without loading them again (a second or more per run)."""
    run = RunDir(run_dir)
    path = run.model_path("best")
    same = in_memory is not None and in_memory.compiled and (
        state.best_epoch == state.epoch or path == run.model_file("final"))
    model = in_memory if same else checkpoint.load_compiled(path)
    metrics = {"status": status, "epochs": state.epoch, "best_epoch": state.best_epoch,
               "classes": len(data.classes), "train_images": int(len(data.labels["train"]))}
    for split in ("val", "test"):
        batches = _eval_batches(data, split, batch_size)
        if batches is None:
            continue
        values = model.evaluate(batches.for_keras(), steps=batches.steps_per_epoch,
                                return_dict=True, verbose=0)
        metrics.update({f"{split}_{name}": round(float(value), 6)
                        for name, value in values.items()})
        metrics[f"{split}_images"] = int(len(data.labels[split]))
    # one temperature per model file, fitted on val (calibration.json): predictions use it
    loaded = {path.name: model}
    if in_memory is not None:
        loaded.setdefault(run.model_file("final").name, in_memory)
    fitted = calibrate_run(run_dir, data.images.get("val"), data.labels.get("val"),
                           batch_size=batch_size, loaded=loaded)
    best = fitted["models"][path.name]
    metrics.update({"temperature": fitted["temperature"],
                    **{f"val_{k}": best[k] for k in ("ece_raw", "ece") if k in best}})
    return metrics

