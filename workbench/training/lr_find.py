"""The learning-rate range test (Smith 2015; fastai's ``lr_find``).

Train a copy of the model for a few steps while the learning rate grows exponentially from tiny
to huge, and watch the loss: it falls once the rate is large enough to learn, then blows up.
A good ``base_lr`` lies where the loss falls fastest, about ten times below where it is lowest.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from matplotlib.figure import Figure

from workbench._checks import check_int, check_number
from workbench.training.solver import SparseCrossentropy


@dataclasses.dataclass
class LRFinder:
    """The result of :func:`lr_find`.

    Attributes:
        lrs: the learning rate of each step.
        losses: the smoothed training loss after each step.
        suggestion: the rate where the smoothed loss falls fastest (steepest descent on a log
            axis), a good ``base_lr``.
        minimum: the rate of the lowest smoothed loss (the suggestion should be well below it).
    """

    lrs: np.ndarray
    losses: np.ndarray
    suggestion: float
    minimum: float

    def plot(self, ax=None) -> Figure:
        """Loss against learning rate (log axis), the suggestion marked."""
        if ax is None:
            figure = Figure(figsize=(6, 3.5), layout="constrained")
            ax = figure.add_subplot()
        ax.plot(self.lrs, self.losses, label="smoothed loss")
        index = int(np.argmin(np.abs(self.lrs - self.suggestion)))
        ax.plot(self.lrs[index], self.losses[index], "ro", label=f"suggested {self.suggestion:.1e}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="loss",
               title="Learning-rate range test")
        ax.legend()
        return ax.figure


def lr_find(model: keras.Model, batches, *, start_lr: float = 1e-6, end_lr: float = 10.0,
            steps: int = 100, momentum: float = 0.9, loss=None, smoothing: float = 0.9,
            diverge: float = 4.0, seed: int = 0) -> LRFinder:
    """Runs the learning-rate range test on a copy of ``model``; ``model`` is not changed.

    Args:
        model: a classifier (its layers' ``trainable`` flags are kept, so frozen layers stay
            frozen as they would in training).
        batches: a ``workbench.data.pipeline.Batches`` of training images.
        start_lr: the first learning rate.
        end_lr: the last learning rate (reached only if the loss has not diverged).
        steps: the number of steps from ``start_lr`` to ``end_lr``.
        momentum: SGD momentum.
        loss: the loss; default cross-entropy of integer labels.
        smoothing: exponential smoothing of the loss (0: none).
        diverge: stop once the smoothed loss exceeds this multiple of its minimum.
        seed: seeds the copy's training.

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
    optimizer = keras.optimizers.SGD(start_lr, momentum=momentum)
    probe.compile(optimizer=optimizer, loss=loss or SparseCrossentropy())

    factor = (end_lr / start_lr) ** (1.0 / (steps - 1))
    lrs, losses, average, best = [], [], 0.0, math.inf
    for step in range(steps):
        lr = start_lr * factor**step
        optimizer.learning_rate.assign(lr)
        x, y = batches.batch(step // batches.steps_per_epoch, step % batches.steps_per_epoch)
        value = float(np.asarray(probe.train_on_batch(x, y)))
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
    # steepest descent on the way down to the minimum; beyond it the loss is on its way up
    slopes = np.gradient(losses, np.log(lrs))[: lowest + 1]
    return LRFinder(lrs, losses, suggestion=float(lrs[int(np.argmin(slopes))]),
                    minimum=float(lrs[lowest]))


def _layers(model: keras.Model) -> list:
    return model._flatten_layers(include_self=False)
