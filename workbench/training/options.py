"""The settings of a training run beside its solver: where and in which precision it runs, and
what it records. ``finetune`` takes one of each (defaults when None)."""

from __future__ import annotations

import dataclasses

from workbench._checks import check_bool, check_choice, check_number
from workbench._cluster import DEFAULT_JOIN_TIMEOUT
from workbench._device import PRECISIONS

MAX_JOIN_TIMEOUT = 24 * 3600.0  # a queue may start the workers hours apart, not days


@dataclasses.dataclass(frozen=True)
class Execution:
    """How a run executes.

    Attributes:
        precision: ``"float32"``, ``"mixed_float16"``, ``"mixed_bfloat16"``, or ``"auto"``
            (mixed float16 when a GPU is visible, float32 on CPU). The head stays float32.
        strategy: a ``tf.distribute.Strategy`` (TensorFlow backend) or a
            ``keras.distribution.Distribution`` (JAX backend) to train on several devices, None
            for one device, or ``"auto"``: MirroredStrategy over all GPUs on TensorFlow,
            ``DataParallel`` over all local devices on JAX, when there are several; or
            ``"distributed"`` (JAX backend): this process is one of several workers, on one
            machine or many, started by ``srun`` or a torchrun-style launcher (see
            ``workbench._cluster``), training ``DataParallel`` over every worker's devices.
            Worker 0 writes the run directory, which every worker must see (a shared
            filesystem) to resume. With several devices each batch is split between them, so
            the batch size must be a multiple of their number.
        join_timeout: with ``"distributed"``, seconds the workers wait for each other to start
            before giving up, naming the missing ones (not recorded: it changes no result).
        cache_features: a stage that trains only the head (``feature_extraction``, the first
            stage of ``two_stage``) without augmentation, on one device, computes the frozen
            backbone's features of the training and validation images once, keeps them beside
            the image cache and trains the head on them (``workbench.training.features``): the
            same results, many epochs for the price of about one. False trains the whole model
            in every epoch (not recorded: it changes no result).
    """

    precision: str = "auto"
    strategy: object = "auto"
    join_timeout: float = DEFAULT_JOIN_TIMEOUT
    cache_features: bool = True

    def __post_init__(self):
        check_choice("precision", self.precision, PRECISIONS)
        if isinstance(self.strategy, str):
            check_choice("strategy", self.strategy, ("auto", "distributed"))
        check_number("join_timeout", self.join_timeout, minimum=0.0, exclusive_minimum=True,
                     maximum=MAX_JOIN_TIMEOUT)
        check_bool("cache_features", self.cache_features)

    def to_dict(self) -> dict:
        """The settings as ``config.json`` records them (a strategy object by its class name)."""
        strategy = self.strategy
        return {"precision": self.precision,
                "strategy": strategy if strategy is None or isinstance(strategy, str)
                else type(strategy).__name__}


@dataclasses.dataclass(frozen=True)
class Monitoring:
    """What a run records beside its history.

    Attributes:
        resources: GPU, CPU and RAM use to ``resources.csv`` (summary in ``metrics.json``),
            and each layer's mean |w| and update-to-weight ratio per epoch to
            ``weight_stats.csv``.
        tensorboard: also write TensorBoard logs to ``run_dir/logs``.
    """

    resources: bool = True
    tensorboard: bool = False

    def __post_init__(self):
        check_bool("resources", self.resources)
        check_bool("tensorboard", self.tensorboard)
