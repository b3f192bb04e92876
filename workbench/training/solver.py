"""Solver settings as Caffe users know them, and the Keras optimizer and schedule they describe.

A :class:`SolverConfig` is plain data (JSON in, JSON out) so a run directory records exactly how a
model was trained. Step sizes (``stepsize``, ``stepvalues``, ``max_iter``, ``warmup_iters``) count
iterations, as in Caffe; ``epochs`` is used when ``max_iter`` is not given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from pathlib import Path

import keras
from keras import ops

from workbench._checks import check_choice, check_int, check_number

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop")
LR_POLICIES = ("constant", "step", "multistep", "cosine", "one_cycle")


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """How to train: optimizer, learning-rate policy, length, batch size and intervals.

    Attributes:
        optimizer: one of ``OPTIMIZERS``.
        base_lr: the learning rate of a layer with multiplier 1.
        momentum: momentum for SGD and RMSprop; beta_1 for Adam(W).
        weight_decay: decoupled weight decay, scaled per layer by its learning-rate multiplier
            (and not applied to biases and normalisation parameters by default).
        lr_policy: one of ``LR_POLICIES``.
        gamma: factor of each drop for ``step`` and ``multistep``.
        stepsize: iterations between drops for ``step``.
        stepvalues: iterations at which ``multistep`` drops.
        warmup_iters: linear warm-up from 0 over this many iterations (all policies).
        epochs: passes over the training split, unless ``max_iter`` is given.
        max_iter: total iterations (Caffe style); overrides ``epochs`` (rounded up to epochs).
        batch_size: images per step.
        label_smoothing: label smoothing of the cross-entropy loss.
        snapshot_interval: epochs between checkpoints.
        test_interval: epochs between validation passes.
        early_stopping: stop after this many validation passes without improvement (0: never).
        steps_per_execution: training steps per compiled call (larger helps small models on GPU).
    """

    optimizer: str = "sgd"
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_policy: str = "cosine"
    gamma: float = 0.1
    stepsize: int = 1000
    stepvalues: tuple[int, ...] = ()
    warmup_iters: int = 0
    epochs: int = 10
    max_iter: int | None = None
    batch_size: int = 32
    label_smoothing: float = 0.0
    snapshot_interval: int = 1
    test_interval: int = 1
    early_stopping: int = 0
    steps_per_execution: int = 1

    def __post_init__(self):
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_number("base_lr", self.base_lr, minimum=0.0, exclusive_minimum=True)
        check_number("momentum", self.momentum, minimum=0.0, maximum=0.9999)
        check_number("weight_decay", self.weight_decay, minimum=0.0)
        check_choice("lr_policy", self.lr_policy, LR_POLICIES)
        check_number("gamma", self.gamma, minimum=0.0, maximum=1.0, exclusive_minimum=True)
        check_int("stepsize", self.stepsize, minimum=1)
        object.__setattr__(self, "stepvalues", tuple(self.stepvalues))
        for value in self.stepvalues:
            check_int("stepvalues", value, minimum=1)
        if list(self.stepvalues) != sorted(set(self.stepvalues)):
            raise ValueError(f"stepvalues must be increasing, received: {self.stepvalues!r}")
        if self.lr_policy == "multistep" and not self.stepvalues:
            raise ValueError("lr_policy='multistep' needs stepvalues, received: ()")
        check_int("warmup_iters", self.warmup_iters, minimum=0)
        check_int("epochs", self.epochs, minimum=1)
        if self.max_iter is not None:
            check_int("max_iter", self.max_iter, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_number("label_smoothing", self.label_smoothing, minimum=0.0, maximum=0.5)
        check_int("snapshot_interval", self.snapshot_interval, minimum=1)
        check_int("test_interval", self.test_interval, minimum=1)
        check_int("early_stopping", self.early_stopping, minimum=0)
        check_int("steps_per_execution", self.steps_per_execution, minimum=1)

    def replace(self, **changes) -> SolverConfig:
        """Returns a copy with some fields changed (validated again)."""
        unknown = set(changes) - {field.name for field in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown solver fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def total_epochs(self, steps_per_epoch: int) -> int:
        """Epochs to train: ``epochs``, or ``max_iter`` iterations rounded up to whole epochs."""
        if self.max_iter is None:
            return self.epochs
        return max(1, math.ceil(self.max_iter / steps_per_epoch))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "stepvalues": list(self.stepvalues)}

    @classmethod
    def from_dict(cls, values: dict) -> SolverConfig:
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown solver fields: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> SolverConfig:
        """Reads a ``.json`` solver file or the common fields of a Caffe ``solver.prototxt``."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return cls.from_dict(json.loads(text))
        return cls.from_prototxt(text)

    @classmethod
    def from_prototxt(cls, text: str) -> SolverConfig:
        """Parses the common fields of a Caffe solver definition.

        Reads ``base_lr``, ``lr_policy`` (fixed, step, multistep), ``gamma``, ``stepsize``,
        ``stepvalue`` (repeated), ``max_iter``, ``momentum``, ``weight_decay`` and ``type``
        (SGD, Nesterov, Adam, RMSProp). Other fields (net, snapshot_prefix, display, solver_mode,
        ...) describe Caffe's own files and are ignored with a warning naming them.
        """
        fields, stepvalues, ignored = {}, [], []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = re.fullmatch(r"(\w+)\s*:\s*(.+)", line)
            if not match:
                raise ValueError(f"solver.prototxt line {number} is not 'key: value': {raw!r}")
            key, value = match.group(1), match.group(2).strip().strip('"')
            if key == "stepvalue":
                stepvalues.append(int(value))
            elif key in ("base_lr", "gamma", "momentum", "weight_decay"):
                fields[key] = float(value)
            elif key in ("stepsize", "max_iter"):
                fields[key] = int(value)
            elif key == "lr_policy":
                policies = {"fixed": "constant", "step": "step", "multistep": "multistep"}
                if value not in policies:
                    raise ValueError(f"lr_policy must be one of fixed, step, multistep in a "
                                     f"solver.prototxt, received: {value!r}")
                fields["lr_policy"] = policies[value]
            elif key in ("type", "solver_type"):
                types = {"sgd": "sgd", "nesterov": "nesterov", "adam": "adam", "rmsprop": "rmsprop"}
                if value.lower() not in types:
                    raise ValueError(f"type must be one of SGD, Nesterov, Adam, RMSProp in a "
                                     f"solver.prototxt, received: {value!r}")
                fields["optimizer"] = types[value.lower()]
            else:
                ignored.append(key)
        if stepvalues:
            fields["stepvalues"] = tuple(stepvalues)
        if ignored:
            warnings.warn(f"solver.prototxt fields ignored: {', '.join(sorted(set(ignored)))}",
                          stacklevel=2)
        return cls(**fields)


@keras.saving.register_keras_serializable(package="workbench")
class SolverSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Caffe's learning-rate policies plus cosine and one-cycle, with linear warm-up.

    Args:
        policy: one of ``LR_POLICIES``.
        base_lr: peak learning rate.
        total_steps: iterations in the whole schedule (for cosine and one-cycle).
        gamma: drop factor for step and multistep.
        stepsize: iterations between drops (step).
        stepvalues: iterations of the drops (multistep).
        warmup_steps: linear warm-up iterations.
    """

    def __init__(self, policy, base_lr, total_steps, gamma=0.1, stepsize=1000, stepvalues=(),
                 warmup_steps=0):
        self.policy = check_choice("policy", policy, LR_POLICIES)
        self.base_lr = float(base_lr)
        self.total_steps = check_int("total_steps", total_steps, minimum=1)
        self.gamma = float(gamma)
        self.stepsize = int(stepsize)
        self.stepvalues = [int(v) for v in stepvalues]
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.policy == "constant":
            lr = ops.convert_to_tensor(self.base_lr, "float32")
        elif self.policy == "step":
            lr = self.base_lr * ops.power(self.gamma, ops.floor(step / self.stepsize))
        elif self.policy == "multistep":
            drops = sum(ops.cast(step >= value, "float32") for value in self.stepvalues)
            lr = self.base_lr * ops.power(self.gamma, drops)
        elif self.policy == "cosine":
            progress = ops.clip(step / self.total_steps, 0.0, 1.0)
            lr = 0.5 * self.base_lr * (1.0 + ops.cos(math.pi * progress))
        else:  # one_cycle: up for 30% of the steps, then cosine down to base_lr / 1e4
            peak = 0.3 * self.total_steps
            up = ops.clip(step / peak, 0.0, 1.0)
            down = ops.clip((step - peak) / (self.total_steps - peak), 0.0, 1.0)
            start, floor = self.base_lr / 25.0, self.base_lr / 1e4
            rising = start + (self.base_lr - start) * 0.5 * (1.0 - ops.cos(math.pi * up))
            falling = floor + (self.base_lr - floor) * 0.5 * (1.0 + ops.cos(math.pi * down))
            lr = ops.where(step < peak, rising, falling)
        if self.warmup_steps:
            lr = lr * ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return lr

    def get_config(self):
        return {"policy": self.policy, "base_lr": self.base_lr, "total_steps": self.total_steps,
                "gamma": self.gamma, "stepsize": self.stepsize, "stepvalues": self.stepvalues,
                "warmup_steps": self.warmup_steps}


def learning_rate_schedule(config: SolverConfig, total_steps: int) -> SolverSchedule:
    """The schedule ``config`` describes over ``total_steps`` iterations."""
    return SolverSchedule(config.lr_policy, config.base_lr, total_steps, gamma=config.gamma,
                          stepsize=config.stepsize, stepvalues=config.stepvalues,
                          warmup_steps=config.warmup_iters)


def build_optimizer(config: SolverConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """A Keras optimizer for ``config`` (weight decay is applied by the lr-multiplier wrapper).

    Args:
        config: the solver settings.
        total_steps: iterations the schedule spans.

    Returns:
        An optimizer with a :class:`SolverSchedule` and ``weight_decay`` set from the config.
    """
    lr = learning_rate_schedule(config, total_steps)
    decay = config.weight_decay or None
    if config.optimizer in ("sgd", "nesterov"):
        return keras.optimizers.SGD(lr, momentum=config.momentum,
                                    nesterov=config.optimizer == "nesterov", weight_decay=decay)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr, beta_1=config.momentum, weight_decay=decay)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, beta_1=config.momentum, weight_decay=decay or 0.0)
    return keras.optimizers.RMSprop(lr, momentum=config.momentum, weight_decay=decay)


@keras.saving.register_keras_serializable(package="workbench")
class SparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against probabilities, with label smoothing.

    Keras's own sparse loss has no label smoothing, so the labels are one-hot encoded here.
    """

    def __init__(self, label_smoothing: float = 0.0, name="sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        one_hot = keras.ops.one_hot(keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,)),
                                    classes)
        return keras.losses.categorical_crossentropy(one_hot, y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
