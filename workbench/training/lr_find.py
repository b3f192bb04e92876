"""The learning-rate range test (Smith 2015; fastai's ``lr_find``).

Train a copy of the model for a few steps while the learning rate grows exponentially from tiny
to huge, and watch the loss: it falls once the rate is large enough to learn, then blows up.
A good ``base_lr`` lies where the loss falls fastest, about ten times below where it is lowest.

The rule: the rate of the steepest descent of the smoothed loss (on a log axis), taken on the
way down to the lowest loss, after the first tenth of the rates; when that descent is at an end
of the curve (the loss fell fastest at the first rates looked at, or only at the minimum itself:
no valley to read) or within 10x of the lowest loss (already too fast), the rate of the lowest
loss divided by 10 instead, but never below the first rate tried. :attr:`LRFinder.rule` says which.

Its limits: it is one short run from one starting point, so it suggests an order of magnitude,
not a value to three digits; the smoothed loss of a few images per class is noisy (run it again
with another ``seed`` to see how much the suggestion moves); and it measures one stage of a
recipe: :func:`range_test` takes the first (for ``two_stage`` the new head alone on a frozen
backbone), so the whole-network stage that follows at multipliers of ``base_lr`` is not measured.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from matplotlib.figure import Figure

from workbench import models
from workbench._checks import UsageError, check_int, check_number
from workbench._compat import flatten_layers
from workbench.data import pipeline
from workbench.data.splitdir import load_splits
from workbench.training.recipes import get_recipe
from workbench.training.solver import SolverConfig, SparseCrossentropy
from workbench.training.train import build_model, compile_stage

STEEPEST = "steepest descent of the smoothed loss"
MINIMUM_TENTH = ("the rate of the lowest loss / 10 (the steepest descent was at an end of the "
                 "curve or within 10x of the lowest loss)")
FIRST = ("the first rate tried (the loss was lowest within 10x of it: try a lower --start-lr "
         "/ start_lr)")


@dataclasses.dataclass
class LRFinder:
    """The result of :func:`lr_find`.

    Attributes:
        lrs: the learning rate of each step.
        losses: the smoothed training loss after each step.
        suggestion: a good ``base_lr``: the rate where the smoothed loss falls fastest
            (steepest descent on a log axis), or ``minimum / 10`` (see :attr:`rule`).
        minimum: the rate of the lowest smoothed loss (the suggestion should be well below it).
        rule: which rule gave the suggestion (:data:`STEEPEST`, :data:`MINIMUM_TENTH` or
            :data:`FIRST`: see :func:`suggest_rate`).
        stage: for :func:`range_test`, the recipe and stage measured (``"two_stage, stage
            head"``); None otherwise.
    """

    lrs: np.ndarray
    losses: np.ndarray
    suggestion: float
    minimum: float
    rule: str = STEEPEST
    stage: str | None = None

    def describe(self) -> str:
        """One line: the suggestion, the rule and the range tried."""
        stage = f"; {self.stage}" if self.stage else ""
        return (f"suggested base_lr: {self.suggestion:.2g} ({self.rule}; tried "
                f"{self.lrs[0]:.2g} to {self.lrs[-1]:.2g} in {len(self.lrs)} steps, lowest "
                f"loss at {self.minimum:.2g}{stage})")

    def plot(self, ax=None) -> Figure:
        """Loss against learning rate (log axis), the suggestion marked."""
        if ax is None:
            figure = Figure(figsize=(6, 3.5), layout="constrained")
            ax = figure.add_subplot()
        ax.plot(self.lrs, self.losses, label="smoothed loss")
        # the suggestion need not be a rate tried (minimum / 10): its loss read off the curve
        loss = np.interp(np.log(self.suggestion), np.log(self.lrs), self.losses)
        ax.plot([self.suggestion], [loss], "ro", label=f"suggested {self.suggestion:.1e}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="loss",
               title="Learning-rate range test")
        ax.legend()
        return ax.figure


def lr_find(model: keras.Model, batches, *, start_lr: float = 1e-6, end_lr: float = 10.0,
            steps: int = 100, momentum: float = 0.9, loss=None, smoothing: float = 0.9,
            diverge: float = 4.0, seed: int = 0, optimizer=None) -> LRFinder:
    """Runs the learning-rate range test on a copy of ``model``; ``model`` is not changed.

    Args:
        model: a classifier (its layers' ``trainable`` flags are kept, so frozen layers stay
            frozen as they would in training).
        batches: a ``workbench.data.pipeline.Batches`` of training images.
        start_lr: the first learning rate.
        end_lr: the last learning rate (reached only if the loss has not diverged).
        steps: the number of steps from ``start_lr`` to ``end_lr``.
        momentum: SGD momentum (of the default optimizer).
        loss: the loss; default cross-entropy of integer labels.
        smoothing: exponential smoothing of the loss (0: none).
        diverge: stop once the smoothed loss exceeds this multiple of its minimum.
        seed: seeds the copy's training.
        optimizer: the optimizer to test, fresh, with a plain number as its learning rate
            (which the test sets at each step; e.g. one with learning-rate multipliers, whose
            rules name the model's layers); default SGD with ``momentum``.

    Returns:
        An :class:`LRFinder` with the curve and the suggested learning rate.
    """
    check_number("start_lr", start_lr, minimum=0.0, exclusive_minimum=True)
    check_number("end_lr", end_lr, minimum=start_lr, exclusive_minimum=True)
    check_int("steps", steps, minimum=5)
    check_number("smoothing", smoothing, minimum=0.0, maximum=0.999)
    check_number("diverge", diverge, minimum=1.0, exclusive_minimum=True)
    keras.utils.set_random_seed(seed)
    probe = keras.models.clone_model(model)
    probe.set_weights(model.get_weights())
    for original, copy in zip(_layers(model), _layers(probe)):
        copy.trainable = original.trainable
    optimizer = optimizer or keras.optimizers.SGD(start_lr, momentum=momentum)
    probe.compile(optimizer=optimizer, loss=loss or SparseCrossentropy())

    factor = (end_lr / start_lr) ** (1.0 / (steps - 1))
    lrs, losses, average, best = [], [], 0.0, math.inf
    for step in range(steps):
        lr = start_lr * factor**step
        optimizer.learning_rate.assign(lr)
        x, y = batches.batch(step // batches.steps_per_epoch, step % batches.steps_per_epoch)
        # by name: a copy of a compiled model can keep its metrics beside the loss
        value = float(np.asarray(probe.train_on_batch(x, y, return_dict=True)["loss"]))
        average = smoothing * average + (1 - smoothing) * value
        smoothed = average / (1 - smoothing ** (step + 1))  # bias-corrected, as in Adam
        if not math.isfinite(smoothed) or (step > 0 and smoothed > diverge * best):
            break
        best = min(best, smoothed)
        lrs.append(lr)
        losses.append(smoothed)
    if len(lrs) < 3:
        raise ValueError(f"the loss diverged within {len(lrs) + 1} steps; lower start_lr, "
                         f"received: {start_lr}")
    lrs, losses = np.array(lrs), np.array(losses)
    lowest = int(np.argmin(losses))
    suggestion, rule = suggest_rate(lrs, losses)
    return LRFinder(lrs, losses, suggestion=suggestion, minimum=float(lrs[lowest]), rule=rule)


def suggest_rate(lrs, losses) -> tuple[float, str]:
    """The suggested ``base_lr`` of a range test's curve, and the rule that gave it.

    Args:
        lrs: the increasing learning rates tried (at least 3).
        losses: the smoothed loss at each.

    Returns:
        ``(rate, rule)``: the rate of the steepest descent of the loss (on a log axis) on the
        way down to its minimum, strictly between the first tenth of the rates (skipped: the
        smoothed loss still moves with the first batches there) and the minimum's, and at most
        the minimum's rate / 10 (:data:`STEEPEST`); otherwise the minimum's rate / 10 (:data:`MINIMUM_TENTH`), but never
        below the first rate tried (:data:`FIRST`): the suggestion is always a rate the test
        tried or passed through.
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if lrs.ndim != 1 or lrs.shape != losses.shape or len(lrs) < 3 or np.any(np.diff(lrs) <= 0):
        raise UsageError(f"lrs must be at least 3 increasing rates, one per loss, received: "
                         f"{len(lrs)} rates and {len(losses)} losses")
    lowest = int(np.argmin(losses))
    # steepest descent on the way down to the minimum; beyond it the loss is on its way up.
    # The first tenth is skipped: there the smoothed loss still moves with the first batches.
    skip = max(1, len(lrs) // 10)
    slopes = np.gradient(losses, np.log(lrs))
    if lowest > skip + 1:
        steepest = skip + int(np.argmin(slopes[skip: lowest + 1]))
        # within 10x of the minimum is already too fast (Smith's caution; fastai's minimum / 10)
        if skip < steepest < lowest and lrs[steepest] <= lrs[lowest] / 10:
            return float(lrs[steepest]), STEEPEST
    if lrs[lowest] / 10 < lrs[0]:
        return float(lrs[0]), FIRST
    return float(lrs[lowest] / 10), MINIMUM_TENTH


def range_test(splits, *, start: models.StartingPoint | str | None = None,
               recipe: str = "two_stage",
               lr_mult_rules: dict | None = None, decay_mult_rules: dict | None = None,
               solver: SolverConfig | None = None, image_size: int | None = None,
               resize_mode: str = "squash", dropout: float = 0.2, seed: int = 0,
               start_lr: float = 1e-6, end_lr: float = 10.0, steps: int = 100,
               progress: str = "none", **deprecated) -> LRFinder:
    """The range test of the model ``finetune`` would train with these settings; writes no run.

    The model is built as ``finetune`` builds it and set up for the recipe's first stage (its
    frozen layers and learning-rate multipliers, the solver's optimizer, weight decay and
    clipping); a copy of it then trains on the training split without augmentation while the
    rate grows (see :func:`lr_find`). The suggestion is a ``base_lr``: each layer's rate is it
    times the layer's multiplier, as in training. Nothing is written but the image cache of the
    split folder that training uses too.

    Args:
        splits: a split folder (``workbench split``).
        start: as for ``finetune`` (a :class:`~workbench.models.StartingPoint` or its text;
            ``backbone``, ``weights``, ``source`` and ``cut_at`` still work for one release,
            with a ``DeprecationWarning``), and so are ``recipe``, ``lr_mult_rules``,
            ``decay_mult_rules``, ``solver``, ``image_size``, ``resize_mode``, ``dropout``
            and ``seed`` (the solver's learning rate policy and ``base_lr`` play no part: the
            test sets the rate).
        start_lr: the first rate tried.
        end_lr: the last rate tried, unless the loss diverges first.
        steps: batches from ``start_lr`` to ``end_lr``.
        progress: while decoding the images: ``"none"`` (the default), ``"auto"`` (a bar where
            someone watches, plain lines headless) or ``"lines"``.

    Returns:
        An :class:`LRFinder` whose ``stage`` names the recipe and stage measured.
    """
    start = models.StartingPoint.from_arguments(start, deprecated, caller="range_test")
    recipe_ = get_recipe(recipe)
    solver = solver or SolverConfig()
    if image_size is None:
        image_size = start.image_size()
    check_int("image_size", image_size, minimum=8)
    data = load_splits(splits, image_size=image_size, resize_mode=resize_mode,
                       progress=progress)
    labels = data.labels["train"]
    train = pipeline.Batches(data.images["train"], labels,
                             batch_size=min(solver.batch_size, len(labels)), seed=seed,
                             drop_remainder=True)
    keras.utils.set_random_seed(seed)
    model = build_model(recipe_, start=start, num_classes=len(data.classes),
                        image_size=image_size, dropout=dropout)
    stage = recipe_.stages[0]
    compile_stage(model, stage, lr_mult_rules, solver, train_bn=recipe_.train_bn,
                  total_steps=steps, num_classes=len(data.classes), decay_rules=decay_mult_rules)
    finder = lr_find(model, train, start_lr=start_lr, end_lr=end_lr, steps=steps, seed=seed,
                     loss=SparseCrossentropy(solver.label_smoothing),
                     optimizer=_at_a_plain_rate(model.optimizer, start_lr))
    count = len(recipe_.stages)
    finder.stage = f"{recipe_.name}, stage {stage.name}" + (
        f" (1 of {count}: the later ones are not measured)" if count > 1 else "")
    return finder


def _at_a_plain_rate(optimizer, rate: float):
    """A fresh copy of a compiled stage's optimizer (its kind, multipliers, decay, clipping)
    whose learning rate is a number the range test can set, instead of the solver's schedule."""
    config = optimizer.get_config()
    config["learning_rate"] = rate
    return type(optimizer).from_config(config)


def _layers(model: keras.Model) -> list:
    return flatten_layers(model, include_self=False)
