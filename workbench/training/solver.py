"""Solver settings as Caffe users know them, and the Keras optimizer and schedule they describe.

A :class:`SolverConfig` is plain data (JSON in, JSON out) so a run directory records exactly how a
model was trained. Step sizes (``stepsize``, ``stepvalues``, ``max_iter``, ``warmup_iters``) count
iterations, as in Caffe: one iteration is one update of the weights, from ``iter_size`` batches.
``epochs`` is used when ``max_iter`` is not given.

A Caffe ``solver.prototxt`` (:meth:`SolverConfig.from_prototxt`) means what it means in Caffe:
a field it leaves out takes Caffe's default (``weight_decay`` 0, ``momentum`` 0, ``delta`` 1e-8,
``regularization_type`` "L2", ...), not the workbench's, and ``weight_decay`` is Caffe's L2 (or
L1) term added to the gradient. A field that would change training is either honoured or the
file is refused with one line naming it; fields that only drive Caffe's own machinery are listed
in ``workbench.training.prototxt.CAFFE_ONLY_FIELDS`` and accepted without effect.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import keras
from keras import ops

from workbench._checks import (MissingPath, UsageError, check_choice, check_int, check_number,
                               moved_names)
from workbench._compat import adagrad_accumulator, rmsprop_slots
from workbench.training.lr_mult import (
    REGULARIZATIONS,
    LRMultiplierAdadelta,
    LRMultiplierAdam,
    LRMultiplierAdamW,
    LRMultiplierMixin,
    LRMultiplierSGD,
)
from workbench.training.prototxt import config_from_prototxt

# Moved to workbench.training.prototxt; the old name warns for one release.
__getattr__ = moved_names(__name__, {"CAFFE_ONLY_FIELDS": "workbench.training.prototxt"})

# Upper bounds that refuse a typo before hours of work start: far beyond any real schedule
# (Caffe's own solvers reach 10 million iterations) and any batch that fits a GPU.
MAX_EPOCHS = 100_000
MAX_ITER = 100_000_000
MAX_BATCH_SIZE = 65_536
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "adadelta")
LR_POLICIES = ("constant", "step", "exp", "inv", "multistep", "poly", "sigmoid", "cosine",
               "one_cycle")
# momentum=None means this, per optimizer (AdaDelta's momentum is the decay of its averages).
_DEFAULT_MOMENTUM = {"sgd": 0.9, "nesterov": 0.9, "adam": 0.9, "adamw": 0.9, "rmsprop": 0.9,
                     "adagrad": 0.0, "adadelta": 0.95}


def _check_finite(name: str, value, **bounds) -> float:
    value = check_number(name, value, **bounds)
    if math.isinf(value):
        raise UsageError(f"{name} must be a finite number, received: {value!r}")
    return value


def _check_optional_int(name: str, value, minimum: int) -> int | None:
    return None if value is None else check_int(name, value, minimum=minimum)


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """How to train: optimizer, learning-rate policy, length, batch size and intervals.

    Attributes:
        optimizer: one of ``OPTIMIZERS``; each follows Caffe's update rule of the same name
            (``rmsprop`` and ``adagrad`` put ``delta`` outside the square root, as Caffe does;
            ``adamw`` is Adam with decoupled weight decay, which Caffe does not have).
        base_lr: the learning rate of a layer with multiplier 1.
        momentum: momentum for SGD, Nesterov and RMSprop; beta_1 for Adam(W); the decay of
            AdaDelta's running averages; must be 0 for AdaGrad. None: 0.9, or 0.95 for
            AdaDelta and 0 for AdaGrad.
        weight_decay: weight decay, scaled per weight by its decay multiplier (biases and
            normalisation parameters are not decayed by default), applied as ``regularization``
            says.
        regularization: one of ``REGULARIZATIONS``: ``"decoupled"`` (``w -= w * decay * lr``,
            scaled by the layer's learning-rate multiplier, as AdamW does), or Caffe's ``"L2"``
            (``decay * w`` added to the gradient) or ``"L1"`` (``decay * sign(w)`` added).
        lr_policy: one of ``LR_POLICIES``; ``constant`` is Caffe's ``fixed``.
        gamma: factor of each drop for ``step`` and ``multistep``; rate of ``exp``, ``inv`` and
            ``sigmoid``.
        power: exponent of ``inv`` and ``poly``.
        stepsize: iterations between drops for ``step``; centre of ``sigmoid``.
        stepvalues: iterations at which ``multistep`` drops.
        warmup_iters: linear warm-up from 0 over this many iterations (all policies).
        epochs: passes over the training split, unless ``max_iter`` is given.
        max_iter: total iterations (Caffe style); overrides ``epochs``; ``poly`` reaches 0 there
            (it uses the schedule's length when ``max_iter`` is None).
        iter_size: batches whose gradients are averaged into one iteration (Caffe's gradient
            accumulation): an iteration sees ``iter_size * batch_size`` images.
        clip_gradients: if set, the global L2 norm of the gradients of one iteration is scaled
            down to this value when larger (Caffe's ``clip_gradients``, which measures the sum
            of the ``iter_size`` batch gradients, before weight decay is added).
        momentum2: beta_2 of Adam(W).
        rms_decay: decay of RMSprop's mean square.
        delta: the small constant of RMSprop, AdaGrad, AdaDelta and Adam(W) (Keras's epsilon).
        batch_size: images per batch.
        label_smoothing: label smoothing of the cross-entropy loss.
        snapshot_interval: epochs between checkpoints.
        test_interval: epochs between validation passes; the last epoch of every stage is
            validated too, so a run shorter than the interval still has a best model.
        snapshot_iters: if set, iterations between checkpoints (Caffe's ``snapshot``); replaces
            ``snapshot_interval``.
        test_interval_iters: if set, iterations between validation passes (Caffe's
            ``test_interval``); replaces ``test_interval``.
        display_iters: if set, iterations between progress lines (Caffe's ``display``).
        early_stopping: stop after this many validation passes without improvement (0: never).
        steps_per_execution: training steps per compiled call (larger helps small models on GPU).
    """

    optimizer: str = "sgd"
    base_lr: float = 0.01
    momentum: float | None = None
    weight_decay: float = 5e-4
    regularization: str = "decoupled"
    lr_policy: str = "cosine"
    gamma: float = 0.1
    power: float = 1.0
    stepsize: int = 1000
    stepvalues: tuple[int, ...] = ()
    warmup_iters: int = 0
    epochs: int = 10
    max_iter: int | None = None
    iter_size: int = 1
    clip_gradients: float | None = None
    momentum2: float = 0.999
    rms_decay: float = 0.9
    delta: float = 1e-7
    batch_size: int = 32
    label_smoothing: float = 0.0
    snapshot_interval: int = 1
    test_interval: int = 1
    snapshot_iters: int | None = None
    test_interval_iters: int | None = None
    display_iters: int | None = None
    early_stopping: int = 0
    steps_per_execution: int = 1

    def __post_init__(self):
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_finite("base_lr", self.base_lr, minimum=0.0, exclusive_minimum=True)
        if self.momentum is None:
            object.__setattr__(self, "momentum", _DEFAULT_MOMENTUM[self.optimizer])
        check_number("momentum", self.momentum, minimum=0.0, maximum=0.9999)
        if self.optimizer == "adagrad" and self.momentum != 0:
            raise UsageError(f"momentum must be 0 for optimizer='adagrad' (AdaGrad has no "
                             f"momentum), received: {self.momentum!r}")
        _check_finite("weight_decay", self.weight_decay, minimum=0.0)
        check_choice("regularization", self.regularization, REGULARIZATIONS)
        if self.optimizer == "adamw" and self.regularization != "decoupled":
            raise UsageError(f"regularization must be 'decoupled' for optimizer='adamw' (use "
                             f"'adam' for Caffe's L2 or L1), received: {self.regularization!r}")
        check_choice("lr_policy", self.lr_policy, LR_POLICIES)
        _check_finite("gamma", self.gamma, minimum=0.0)
        _check_finite("power", self.power)
        check_int("stepsize", self.stepsize, minimum=1)
        object.__setattr__(self, "stepvalues", tuple(self.stepvalues))
        for value in self.stepvalues:
            check_int("stepvalues", value, minimum=1)
        if list(self.stepvalues) != sorted(set(self.stepvalues)):
            raise UsageError(f"stepvalues must be increasing, received: {self.stepvalues!r}")
        if self.lr_policy == "multistep" and not self.stepvalues:
            raise UsageError("lr_policy='multistep' needs stepvalues, received: ()")
        check_int("warmup_iters", self.warmup_iters, minimum=0)
        check_int("epochs", self.epochs, minimum=1, maximum=MAX_EPOCHS)
        if self.max_iter is not None:
            check_int("max_iter", self.max_iter, minimum=1, maximum=MAX_ITER)
        check_int("iter_size", self.iter_size, minimum=1)
        if self.clip_gradients is not None:
            _check_finite("clip_gradients", self.clip_gradients, minimum=0.0,
                          exclusive_minimum=True)
        _check_finite("momentum2", self.momentum2, minimum=0.0)
        if self.momentum2 >= 1:
            raise UsageError(f"momentum2 must be < 1, received: {self.momentum2!r}")
        _check_finite("rms_decay", self.rms_decay, minimum=0.0)
        if self.rms_decay >= 1:
            raise UsageError(f"rms_decay must be < 1, received: {self.rms_decay!r}")
        _check_finite("delta", self.delta, minimum=0.0, exclusive_minimum=True)
        check_int("batch_size", self.batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
        check_number("label_smoothing", self.label_smoothing, minimum=0.0, maximum=0.5)
        check_int("snapshot_interval", self.snapshot_interval, minimum=1)
        check_int("test_interval", self.test_interval, minimum=1)
        _check_optional_int("snapshot_iters", self.snapshot_iters, minimum=1)
        _check_optional_int("test_interval_iters", self.test_interval_iters, minimum=1)
        _check_optional_int("display_iters", self.display_iters, minimum=1)
        check_int("early_stopping", self.early_stopping, minimum=0)
        check_int("steps_per_execution", self.steps_per_execution, minimum=1)

    def replace(self, **changes) -> SolverConfig:
        """Returns a copy with some fields changed (validated again)."""
        unknown = set(changes) - {field.name for field in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"unknown solver fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def total_batches(self, steps_per_epoch: int) -> int:
        """Batches to train on: ``max_iter * iter_size``, or ``epochs`` whole epochs."""
        check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        if self.max_iter is None:
            return self.epochs * steps_per_epoch
        return self.max_iter * self.iter_size

    def total_epochs(self, steps_per_epoch: int) -> int:
        """Epochs to train: ``epochs``, or ``total_batches`` rounded up to whole epochs."""
        return max(1, math.ceil(self.total_batches(steps_per_epoch) / steps_per_epoch))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "stepvalues": list(self.stepvalues)}

    @classmethod
    def from_dict(cls, values: dict) -> SolverConfig:
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise UsageError(f"unknown solver fields: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> SolverConfig:
        """Reads a ``.json`` solver file or a Caffe ``solver.prototxt`` (see ``from_prototxt``).

        Raises:
            FileNotFoundError: when there is no file at ``path``.
            ValueError: naming the file when it is not JSON holding an object of solver fields.
        """
        path = Path(path)
        if not path.is_file():
            raise MissingPath(f"solver file not found, received: {str(path)!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{path} is not a solver file: it is not text") from None
        if path.suffix != ".json":
            return cls.from_prototxt(text, source=path.name)
        try:
            values = json.loads(text)
        except ValueError as error:  # the line and column of the first mistake
            raise UsageError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(values, dict):
            raise UsageError(f"{path} must hold a JSON object of solver fields, such as "
                             f'{{"base_lr": 0.01}}, received: {type(values).__name__}')
        return cls.from_dict(values)

    @classmethod
    def from_prototxt(cls, text: str, *, source: str = "solver.prototxt") -> SolverConfig:
        """Reads a Caffe solver definition (protobuf text format) with Caffe's meaning.

        Fields that set training: ``base_lr``, ``lr_policy`` (fixed, step, exp, inv,
        multistep, poly, sigmoid), ``gamma``, ``power``, ``stepsize``, ``stepvalue``,
        ``max_iter``, ``iter_size``, ``momentum``, ``momentum2``, ``weight_decay``,
        ``regularization_type`` (L2, L1), ``clip_gradients``, ``delta``, ``rms_decay``, ``type``
        (SGD, Nesterov, Adam, RMSProp, AdaGrad, AdaDelta) or the old ``solver_type`` enum, and
        the intervals ``test_interval``, ``snapshot`` and ``display`` (in iterations). Missing
        fields take Caffe's defaults. The fields of ``prototxt.CAFFE_ONLY_FIELDS`` are checked and
        ignored; any other field is refused.

        Args:
            text: the contents of the ``solver.prototxt``.
            source: the name used in error messages.

        Returns:
            The equivalent :class:`SolverConfig`.

        Raises:
            ValueError: one line naming the field (and line) and the value, for a malformed
                value (``max_iter: 1e4``), an unknown field, a field given twice, a value Caffe
                would reject or a setting the workbench cannot reproduce.
        """
        return config_from_prototxt(cls, text, source)


# ----------------------------------------------------------------------------- schedule


@keras.saving.register_keras_serializable(package="workbench")
class SolverSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Caffe's learning-rate policies plus cosine and one-cycle, with linear warm-up.

    The rate at iteration ``it`` (Caffe's ``GetLearningRate``): ``constant`` (Caffe's fixed)
    ``base_lr``; ``step`` ``base_lr * gamma ^ floor(it / stepsize)``; ``exp``
    ``base_lr * gamma ^ it``; ``inv`` ``base_lr * (1 + gamma * it) ^ (-power)``; ``multistep``
    ``base_lr * gamma ^ (number of stepvalues <= it)``; ``poly``
    ``base_lr * (1 - it / max_iter) ^ power`` (0 from ``max_iter`` on); ``sigmoid``
    ``base_lr / (1 + exp(-gamma * (it - stepsize)))``.

    Args:
        policy: one of ``LR_POLICIES``.
        base_lr: peak learning rate.
        total_steps: iterations in the whole schedule (for cosine and one-cycle, and for poly
            when ``max_iter`` is None).
        gamma: drop factor for step and multistep; rate of exp, inv and sigmoid.
        stepsize: iterations between drops (step); centre of sigmoid.
        stepvalues: iterations of the drops (multistep).
        warmup_steps: linear warm-up iterations.
        power: exponent of inv and poly.
        max_iter: the iteration where poly reaches 0 (default ``total_steps``).
        iter_size: optimizer steps per iteration. Keras calls a schedule with its count of
            optimizer steps, which counts every batch when it accumulates gradients over
            ``iter_size`` batches; the iteration is that count // ``iter_size``.
    """

    def __init__(self, policy, base_lr, total_steps, gamma=0.1, stepsize=1000, stepvalues=(),
                 warmup_steps=0, power=1.0, max_iter=None, iter_size=1):
        self.policy = check_choice("policy", policy, LR_POLICIES)
        self.base_lr = float(base_lr)
        self.total_steps = check_int("total_steps", total_steps, minimum=1)
        self.gamma = float(gamma)
        self.stepsize = int(stepsize)
        self.stepvalues = [int(v) for v in stepvalues]
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.max_iter = check_int("max_iter", total_steps if max_iter is None else max_iter,
                                  minimum=1)
        self.iter_size = check_int("iter_size", iter_size, minimum=1)

    def __call__(self, step):
        iteration = ops.convert_to_tensor(step)
        if self.iter_size > 1:
            iteration = ops.floor_divide(iteration, self.iter_size)
        it = ops.cast(iteration, "float32")
        if self.policy == "constant":
            lr = ops.convert_to_tensor(self.base_lr, "float32")
        elif self.policy == "step":
            drops = ops.cast(ops.floor_divide(iteration, self.stepsize), "float32")
            lr = self.base_lr * ops.power(self.gamma, drops)
        elif self.policy == "exp":
            lr = self.base_lr * ops.power(self.gamma, it)
        elif self.policy == "inv":
            lr = self.base_lr * ops.power(1.0 + self.gamma * it, -self.power)
        elif self.policy == "multistep":
            drops = sum(ops.cast(iteration >= value, "float32") for value in self.stepvalues)
            lr = self.base_lr * ops.power(self.gamma, drops)
        elif self.policy == "poly":
            # (max_iter - it) first: exact in float32, where 1 - it / max_iter loses digits.
            left = ops.maximum(0.0, (self.max_iter - it) / self.max_iter)
            lr = self.base_lr * ops.power(left, self.power)
        elif self.policy == "sigmoid":
            lr = self.base_lr / (1.0 + ops.exp(-self.gamma * (it - self.stepsize)))
        elif self.policy == "cosine":
            progress = ops.clip(it / self.total_steps, 0.0, 1.0)
            lr = 0.5 * self.base_lr * (1.0 + ops.cos(math.pi * progress))
        else:  # one_cycle: up for 30% of the steps, then cosine down to base_lr / 1e4
            peak = 0.3 * self.total_steps
            up = ops.clip(it / peak, 0.0, 1.0)
            down = ops.clip((it - peak) / (self.total_steps - peak), 0.0, 1.0)
            start, floor = self.base_lr / 25.0, self.base_lr / 1e4
            rising = start + (self.base_lr - start) * 0.5 * (1.0 - ops.cos(math.pi * up))
            falling = floor + (self.base_lr - floor) * 0.5 * (1.0 + ops.cos(math.pi * down))
            lr = ops.where(it < peak, rising, falling)
        if self.warmup_steps:
            lr = lr * ops.minimum(1.0, (it + 1.0) / self.warmup_steps)
        return lr

    def get_config(self):
        return {"policy": self.policy, "base_lr": self.base_lr, "total_steps": self.total_steps,
                "gamma": self.gamma, "stepsize": self.stepsize, "stepvalues": self.stepvalues,
                "warmup_steps": self.warmup_steps, "power": self.power,
                "max_iter": self.max_iter, "iter_size": self.iter_size}


def learning_rate_schedule(config: SolverConfig, total_steps: int) -> SolverSchedule:
    """The schedule ``config`` describes over ``total_steps`` batches (optimizer steps).

    With ``iter_size`` > 1 that is ``total_steps // iter_size`` iterations; ``poly`` ends at
    ``config.max_iter`` when it is set.
    """
    if not isinstance(config, SolverConfig):
        raise UsageError(f"config must be a SolverConfig, received: {type(config).__name__}")
    check_int("total_steps", total_steps, minimum=1)
    iterations = max(1, total_steps // config.iter_size)
    return SolverSchedule(config.lr_policy, config.base_lr, iterations, gamma=config.gamma,
                          stepsize=config.stepsize, stepvalues=config.stepvalues,
                          warmup_steps=config.warmup_iters, power=config.power,
                          max_iter=config.max_iter, iter_size=config.iter_size)


# ---------------------------------------------------------------------------- optimizers


class _CaffeRMSpropStep(keras.optimizers.RMSprop):
    """Keras's RMSprop with Caffe's step: ``lr * g / (sqrt(mean_square) + delta)``.

    Keras divides by ``sqrt(mean_square + epsilon)`` instead, a different step wherever the
    gradients are small. Momentum, if any, accumulates the steps as Keras's does.
    """

    def __init__(self, learning_rate=0.01, rho=0.99, momentum=0.0, epsilon=1e-8, centered=False,
                 **kwargs):
        if centered:
            raise UsageError("centered must be False (Caffe's RMSProp is not centered), "
                             f"received: {centered!r}")
        super().__init__(learning_rate, rho=rho, momentum=momentum, epsilon=epsilon,
                         centered=False, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        mean_square, momentum = rmsprop_slots(self, variable)
        self.assign(mean_square, ops.add(ops.multiply(self.rho, mean_square),
                                         ops.multiply(1 - self.rho, ops.square(gradient))))
        step = ops.divide(ops.multiply(lr, gradient),
                          ops.add(ops.sqrt(mean_square), self.epsilon))
        if momentum is not None:
            self.assign(momentum, ops.add(ops.multiply(self.momentum, momentum), step))
            step = momentum
        self.assign_sub(variable, step)


class _CaffeAdagradStep(keras.optimizers.Adagrad):
    """Keras's Adagrad with Caffe's step: the sum of squares starts at 0 (Keras: 0.1) and the
    step is ``lr * g / (sqrt(sum) + delta)`` (Keras: ``sqrt(sum + epsilon)``)."""

    def __init__(self, learning_rate=0.01, epsilon=1e-8, initial_accumulator_value=0.0,
                 **kwargs):
        if initial_accumulator_value != 0:
            raise UsageError("initial_accumulator_value must be 0 (Caffe's AdaGrad starts from "
                             f"0), received: {initial_accumulator_value!r}")
        super().__init__(learning_rate, initial_accumulator_value=0.0, epsilon=epsilon,
                         **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        squares = adagrad_accumulator(self, variable)
        self.assign_add(squares, ops.square(gradient))
        self.assign_sub(variable, ops.divide(ops.multiply(lr, gradient),
                                             ops.add(ops.sqrt(squares), self.epsilon)))


@keras.saving.register_keras_serializable(package="workbench")
class CaffeRMSprop(LRMultiplierMixin, _CaffeRMSpropStep):
    """Caffe's RMSProp (``rho`` is its ``rms_decay``, ``epsilon`` its ``delta``), with the
    per-weight multipliers and regularization of ``lr_mult.LRMultiplierMixin``."""


@keras.saving.register_keras_serializable(package="workbench")
class CaffeAdagrad(LRMultiplierMixin, _CaffeAdagradStep):
    """Caffe's AdaGrad (``epsilon`` is its ``delta``), with the per-weight multipliers and
    regularization of ``lr_mult.LRMultiplierMixin``."""


def build_optimizer(config: SolverConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """A Keras optimizer that trains as ``config`` says.

    Every optimizer follows the Caffe solver of its name (SGD, Nesterov, Adam, RMSProp,
    AdaGrad, AdaDelta; AdamW is Adam with decoupled decay). It is an ``LRMultiplier*``
    optimizer (see ``lr_mult``) without rules, which applies ``weight_decay`` as
    ``config.regularization`` says; pass it to ``lr_mult.with_lr_multipliers`` for per-layer
    ``lr_mult`` and ``decay_mult``. ``iter_size`` > 1 accumulates gradients over that many
    batches (Keras's ``gradient_accumulation_steps``, whose average is Caffe's normalised
    sum), and ``clip_gradients`` clips their global norm (Keras's ``global_clipnorm``, on the
    average, so at ``clip_gradients / iter_size`` to match Caffe's clipping of the sum).

    Args:
        config: the solver settings.
        total_steps: batches (optimizer steps) the schedule spans.

    Returns:
        The optimizer, with a :class:`SolverSchedule` as its learning rate.

    Raises:
        ValueError: if ``config`` is not a SolverConfig or ``total_steps`` < 1.
    """
    lr = learning_rate_schedule(config, total_steps)
    steps = config.iter_size
    common = {
        "weight_decay": config.weight_decay or None,
        "regularization": config.regularization,
        "global_clipnorm": (None if config.clip_gradients is None
                            else config.clip_gradients / steps),
        "gradient_accumulation_steps": steps if steps > 1 else None,
    }
    momentum = config.momentum
    if config.optimizer in ("sgd", "nesterov"):
        return LRMultiplierSGD(lr, momentum=momentum, nesterov=config.optimizer == "nesterov",
                               **common)
    if config.optimizer == "adam":
        return LRMultiplierAdam(lr, beta_1=momentum, beta_2=config.momentum2,
                                epsilon=config.delta, **common)
    if config.optimizer == "adamw":
        return LRMultiplierAdamW(lr, beta_1=momentum, beta_2=config.momentum2,
                                 epsilon=config.delta,
                                 **{**common, "weight_decay": config.weight_decay})
    if config.optimizer == "rmsprop":
        return CaffeRMSprop(lr, rho=config.rms_decay, momentum=momentum, epsilon=config.delta,
                            **common)
    if config.optimizer == "adagrad":
        return CaffeAdagrad(lr, epsilon=config.delta, **common)
    return LRMultiplierAdadelta(lr, rho=momentum, epsilon=config.delta, **common)


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
