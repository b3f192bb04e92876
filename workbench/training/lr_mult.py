"""Per-layer learning rates: Caffe's ``lr_mult`` and ``decay_mult`` for Keras 3 optimizers.

Rules map glob patterns (``fnmatch``) over layer names, or over weight names, to multipliers;
the first matching rule wins and unmatched weights get ``default``::

    optimizer = with_lr_multipliers(
        keras.optimizers.SGD(0.01, momentum=0.9), model,
        {"conv1*": 0, "*/bias": 2, "block_[1-5]*": 0.1, "head*": 10},
        decay_rules={"*/bias": 0, "*": 1},
    )
    model.compile(optimizer=optimizer, loss=...)  # compile after: multiplier 0 freezes layers
    lr_table(model, optimizer)  # a DataFrame: each layer's multiplier and learning rate

How it works. Every Keras optimizer updates one variable at a time in
``update_step(gradient, variable, learning_rate)``, on every backend (TensorFlow calls it inside
``tf.distribute``'s per-variable update, JAX inside ``stateless_apply``). The ``LRMultiplier*``
classes are the built-in optimizers with that one method changed: it passes
``learning_rate * lr_mult`` for the variable, the local learning rate of Caffe. So the multiplier
scales the step, not the gradient: the same for SGD (with momentum, whose velocity then carries
the multiplier), Adam, AdamW or RMSprop, where scaling the gradient would change nothing.
The multipliers are plain floats computed once, in ``build``, from each variable's path.

Weight decay, per variable with ``local_decay = weight_decay * decay_mult``, in one of three
ways (``regularization``):

- ``"decoupled"`` (the default, as Keras and AdamW do it): ``w -= w * local_decay * lr * lr_mult``
  before the optimizer's step.
- ``"L2"`` (Caffe's ``Regularize``): ``gradient += local_decay * w`` before the optimizer's step,
  which then runs with ``lr * lr_mult``. With momentum 0.9 this acts about ten times as strongly
  as the decoupled form with the same ``weight_decay``, and Adam divides it by the gradient's
  scale like any other gradient.
- ``"L1"`` (Caffe's ``Regularize``): ``gradient += local_decay * sign(w)``.

The optimizer's own ``weight_decay`` keeps its value (and its place in the config) but Keras's
global decay pass is switched off.

Names. Keras names a weight ``"<layer>/<weight>"`` (``conv1/kernel``, ``mha/query/bias`` for a
sublayer). A pattern names layers: it matches a weight if it matches the weight's layer path or
a trailing part of it, so ``"query"`` and ``"mha*"`` both reach ``mha/query``. A pattern with a
``/`` may also name weights: it matches the weight's whole path or a trailing part of it, so
``"*/bias"`` reaches every bias and ``"head/kernel"`` one kernel (Caffe's usual ``lr_mult: 2``,
``decay_mult: 0`` for biases is ``{"*/bias": 2}`` and ``decay_rules={"*/bias": 0}``). Inside a
``Sequential`` model Keras prefixes paths with the model's name until the model is saved and
loaded; trailing-part matching makes ``"dense"`` reach ``sequential/dense`` either way, and a
pattern whose meaning depends on a model's name is rejected, so a resumed run gets the same
multipliers as the run that saved it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import pandas as pd

from workbench._checks import UsageError, check_choice, check_number, deprecated
from workbench._compat import (check_weight_decay_hook, flatten_layers, uses_weight_decay,
                               variable_index)

__all__ = [
    "REGULARIZATIONS",
    "LRMultiplierMixin",
    "LRMultiplierSGD",
    "LRMultiplierAdam",
    "LRMultiplierAdamW",
    "LRMultiplierRMSprop",
    "LRMultiplierAdagrad",
    "LRMultiplierAdadelta",
    "LRMultiplierAdamax",
    "LRMultiplierNadam",
    "LRMultiplierLion",
    "LRMultiplierLamb",
    "with_lr_multipliers",
    "depth_groups",
    "lr_table",
    "format_lr_table",
]

_TABLE_COLUMNS = ("layer", "parameters", "multiplier", "effective_lr", "trainable")

REGULARIZATIONS = ("decoupled", "L2", "L1")


# ----------------------------------------------------------------------------- rules


def _check_multiplier(name: str, value) -> float:
    value = check_number(name, value, minimum=0)
    if math.isinf(value):
        raise UsageError(f"{name} must be a finite number >= 0, received: {value!r}")
    return value


def _check_rules(name: str, rules) -> tuple[tuple[str, float], ...]:
    """Returns ``rules`` (a mapping or a sequence of pairs) as ordered ``(pattern, mult)`` pairs."""
    if isinstance(rules, Mapping):
        pairs = list(rules.items())
    elif isinstance(rules, Sequence) and not isinstance(rules, str):
        pairs = list(rules)
        for pair in pairs:
            if not (isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2):
                raise UsageError(
                    f"{name} must be a dict of pattern -> multiplier or a list of "
                    f"(pattern, multiplier) pairs, received the item: {pair!r}")
    else:
        raise UsageError(f"{name} must be a dict mapping layer-name patterns to multipliers, "
                         f"received: {rules!r}")
    checked = []
    for pattern, multiplier in pairs:
        if not isinstance(pattern, str) or not pattern:
            raise UsageError(f"{name} patterns must be non-empty strings (fnmatch globs), "
                             f"received: {pattern!r}")
        checked.append((pattern, _check_multiplier(f"{name}[{pattern!r}]", multiplier)))
    return tuple(checked)


def _trailing_paths(path: str) -> list[str]:
    """``"a/b/c"`` -> ``["a/b/c", "b/c", "c"]``: the names a pattern may match."""
    parts = path.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def _layer_path(variable_path: str) -> str:
    return variable_path.rpartition("/")[0]


def _matches(pattern: str, variable_path: str) -> bool:
    """Whether ``pattern`` names the weight at ``variable_path`` (``"layer/weight"``).

    A pattern names the weight's layer (its path or a trailing part of it); a pattern with a
    ``/`` may also name the weight itself (``"*/bias"``, ``"head/kernel"``).
    """
    names = _trailing_paths(_layer_path(variable_path))
    if "/" in pattern:
        names += _trailing_paths(variable_path)
    # fnmatchcase: layer names are case-sensitive on every platform.
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def _first_match(rules, variable_path: str, default: float) -> float:
    for pattern, value in rules:
        if _matches(pattern, variable_path):
            return value
    return default


def _default_decay_mult(variable) -> float:
    # Biases, and normalization gamma/beta, are 1-D: the usual practice is not to decay them.
    return 0.0 if len(variable.shape) <= 1 else 1.0


# ------------------------------------------------------------------------- optimizers


class LRMultiplierMixin:
    """Turns a Keras optimizer into one with per-weight learning-rate and decay multipliers.

    Put it first among the bases, before a built-in optimizer whose ``update_step`` is linear in
    the learning rate; ``with_lr_multipliers`` builds the right class for you.

    Args:
        *args: Positional arguments of the wrapped optimizer.
        lr_mult_rules: Dict of pattern -> learning-rate multiplier (or a list of pairs), first
            match wins; a pattern names layers (``"conv1*"``) or, with a ``/``, weights
            (``"*/bias"``).
        default_lr_mult: Multiplier for weights that no rule matches.
        decay_mult_rules: Dict of pattern -> weight-decay multiplier, first match wins, patterns
            as for ``lr_mult_rules``. Weights no rule matches are decayed with multiplier 1,
            except 1-D ones (biases, normalization gamma and beta), which are not decayed.
        regularization: How ``weight_decay`` acts, one of ``REGULARIZATIONS``: ``"decoupled"``
            (``w -= w * local_decay * local_lr``), ``"L2"`` (Caffe: ``local_decay * w`` added to
            the gradient) or ``"L1"`` (Caffe: ``local_decay * sign(w)`` added to the gradient),
            where ``local_decay = weight_decay * decay_mult``.
        **kwargs: Keyword arguments of the wrapped optimizer. Its ``weight_decay`` is applied
            per variable, scaled by the multipliers, as ``regularization`` says.

    Raises:
        ValueError: If a rule's pattern is not a non-empty string, a multiplier is negative,
            infinite or not a number, or ``regularization`` is not one of ``REGULARIZATIONS``
            (or not ``"decoupled"`` for AdamW, whose decay is decoupled by definition).
    """

    def __init__(self, *args, lr_mult_rules=(), default_lr_mult=1.0, decay_mult_rules=None,
                 regularization="decoupled", **kwargs):
        check_weight_decay_hook(type(self))  # update_step decays: Keras must not too
        super().__init__(*args, **kwargs)
        self.lr_mult_rules = _check_rules("lr_mult_rules", lr_mult_rules)
        self.default_lr_mult = _check_multiplier("default_lr_mult", default_lr_mult)
        self.decay_mult_rules = (None if decay_mult_rules is None
                                 else _check_rules("decay_mult_rules", decay_mult_rules))
        self.regularization = check_choice("regularization", regularization, REGULARIZATIONS)
        if regularization != "decoupled" and isinstance(self, keras.optimizers.AdamW):
            raise UsageError(f"regularization must be 'decoupled' for AdamW, whose weight decay "
                             f"is decoupled by definition (use Adam for {regularization}), "
                             f"received: {regularization!r}")

    def lr_multiplier(self, weight_path: str) -> float:
        """Returns the learning-rate multiplier of the weight at ``weight_path`` (layer/weight)."""
        return _first_match(self.lr_mult_rules, weight_path, self.default_lr_mult)

    def _decay_multiplier(self, variable) -> float:
        if not self.weight_decay or not uses_weight_decay(self, variable):
            return 0.0  # honours Keras's exclude_from_weight_decay()
        return _first_match(self.decay_mult_rules or (), variable.path,
                            _default_decay_mult(variable))

    def build(self, variables):
        if self.built:
            return
        for variable in variables:
            if getattr(variable, "path", None) is None:
                raise UsageError(f"{type(self).__name__} needs Keras variables, which have a "
                                 f"`path`; received: {variable!r}")
        # Indexed like the slots, by position in `variables`; `update_step` finds the index with
        # `_compat.variable_index`, which also maps TF's underlying (and distributed) variables.
        self._lr_mults = tuple(self.lr_multiplier(v.path) for v in variables)
        self._decay_mults = tuple(self._decay_multiplier(v) for v in variables)
        super().build(variables)

    def update_step(self, gradient, variable, learning_rate):
        index = variable_index(self, variable)
        lr_mult, decay_mult = self._lr_mults[index], self._decay_mults[index]
        if lr_mult != 1.0:  # leaves default layers bit-identical to the wrapped optimizer
            learning_rate = keras.ops.multiply(learning_rate, lr_mult)
        if decay_mult and self.regularization == "decoupled":
            rate = keras.ops.multiply(keras.ops.cast(learning_rate, variable.dtype),
                                      keras.ops.cast(self.weight_decay * decay_mult,
                                                     variable.dtype))
            self.assign_sub(variable, keras.ops.multiply(variable, rate))
        elif decay_mult:  # Caffe's Regularize: the decay term joins the gradient
            gradient = keras.ops.cast(gradient, variable.dtype)
            weights = keras.ops.cast(variable, variable.dtype)
            term = weights if self.regularization == "L2" else keras.ops.sign(weights)
            gradient = keras.ops.add(gradient, keras.ops.multiply(
                keras.ops.cast(self.weight_decay * decay_mult, variable.dtype), term))
        super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        """Skips Keras's decay with the global rate: ``update_step`` decays each variable
        (``_compat.check_weight_decay_hook`` checks that Keras still calls this)."""

    def get_config(self):
        config = super().get_config()
        config.update({
            "lr_mult_rules": [list(rule) for rule in self.lr_mult_rules],
            "default_lr_mult": self.default_lr_mult,
            "decay_mult_rules": (None if self.decay_mult_rules is None
                                 else [list(rule) for rule in self.decay_mult_rules]),
            "regularization": self.regularization,
        })
        return config


def _register(cls):
    return keras.saving.register_keras_serializable(package="workbench")(cls)


# Only optimizers whose step is proportional to the learning rate given to update_step, so that
# the multiplier scales the step. Not Ftrl, Adafactor, ScheduleFreeAdamW (lr enters non-linearly)
# nor Muon (its own per-variable rates).
@_register
class LRMultiplierSGD(LRMultiplierMixin, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with per-layer multipliers; see ``LRMultiplierMixin``."""


@_register
class LRMultiplierAdam(LRMultiplierMixin, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with per-layer multipliers; see ``LRMultiplierMixin``."""


@_register
class LRMultiplierAdamW(LRMultiplierMixin, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with per-layer multipliers; see ``LRMultiplierMixin``."""


@_register
class LRMultiplierRMSprop(LRMultiplierMixin, keras.optimizers.RMSprop):
    """``keras.optimizers.RMSprop`` with per-layer multipliers; see ``LRMultiplierMixin``."""


@_register
class LRMultiplierAdagrad(LRMultiplierMixin, keras.optimizers.Adagrad):
    """``keras.optimizers.Adagrad`` with per-layer multipliers; see ``LRMultiplierMixin``."""


@_register
class LRMultiplierAdadelta(LRMultiplierMixin, keras.optimizers.Adadelta):
    """``keras.optimizers.Adadelta`` with per-layer multipliers; see ``LRMultiplierMixin``."""


@_register
class LRMultiplierAdamax(LRMultiplierMixin, keras.optimizers.Adamax):
    """``keras.optimizers.Adamax`` with per-layer multipliers; see ``LRMultiplierMixin``."""


@_register
class LRMultiplierNadam(LRMultiplierMixin, keras.optimizers.Nadam):
    """``keras.optimizers.Nadam`` with per-layer multipliers; see ``LRMultiplierMixin``."""


@_register
class LRMultiplierLion(LRMultiplierMixin, keras.optimizers.Lion):
    """``keras.optimizers.Lion`` with per-layer multipliers; see ``LRMultiplierMixin``."""


@_register
class LRMultiplierLamb(LRMultiplierMixin, keras.optimizers.Lamb):
    """``keras.optimizers.Lamb`` with per-layer multipliers; see ``LRMultiplierMixin``."""


_WRAPPERS = {cls.__bases__[1]: cls for cls in (
    LRMultiplierSGD, LRMultiplierAdam, LRMultiplierAdamW, LRMultiplierRMSprop,
    LRMultiplierAdagrad, LRMultiplierAdadelta, LRMultiplierAdamax, LRMultiplierNadam,
    LRMultiplierLion, LRMultiplierLamb)}


def _wrapper_class(optimizer) -> type:
    kind = type(optimizer)
    if issubclass(kind, LRMultiplierMixin):  # re-wrapping replaces the rules
        return kind
    if kind in _WRAPPERS:
        return _WRAPPERS[kind]
    allowed = ", ".join(base.__name__ for base in _WRAPPERS)
    raise UsageError(
        f"optimizer must be a Keras {allowed} (or a LossScaleOptimizer around one), whose step "
        f"is proportional to the learning rate; received: {kind.__name__}")


# ----------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class _WeightedLayer:
    path: str  # the weights' path without the weight name, as the optimizer sees it now
    stable_path: str  # the same without enclosing models' names, as after load_model
    layer: keras.layers.Layer
    variables: tuple


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise UsageError(f"model must be a keras.Model, received: {type(model).__name__}")


def _weighted_layers(model) -> list[_WeightedLayer]:
    """Returns the layers that own weights, in the order of ``model.weights``."""
    # The only way to reach sublayers such as MultiHeadAttention's; it lists a layer before its
    # sublayers, so the innermost layer holding a weight ends up its owner.
    sublayers = flatten_layers(model)
    owner = {id(v): layer for layer in sublayers for v in layer.weights}
    model_names = {layer.name for layer in sublayers if isinstance(layer, keras.Model)}
    grouped: dict[str, list] = {}
    for variable in model.weights:
        grouped.setdefault(_layer_path(variable.path), []).append(variable)
    result = []
    for path, variables in grouped.items():
        stable = "/".join(part for part in path.split("/") if part not in model_names)
        result.append(_WeightedLayer(path, stable, owner[id(variables[0])], tuple(variables)))
    return result


def _stable_variable_path(layer: _WeightedLayer, variable) -> str:
    weight_name = variable.path.rpartition("/")[2]
    return f"{layer.stable_path}/{weight_name}" if layer.stable_path else weight_name


def _check_patterns_match(name, rules, model, layers) -> None:
    """Rejects a pattern that matches no weight, or whose matches depend on a model's name."""
    paths = [(v.path, _stable_variable_path(layer, v))
             for layer in layers for v in layer.variables]
    for pattern, _ in rules:
        now = [_matches(pattern, path) for path, _ in paths]
        after_load = [_matches(pattern, stable) for _, stable in paths]
        if not any(now) and not any(after_load):
            known = [layer.stable_path for layer in layers]
            shown = (", ".join(known[:12]) + (", ..." if len(known) > 12 else "") if known
                     else "none yet: build the model first")
            hint = ("" if "/" in pattern
                    else " (a weight is named with a '/': '*/bias', 'head/kernel')")
            raise UsageError(f"{name} pattern {pattern!r} matches no layer with weights in model "
                             f"{model.name!r}{hint}; its layers are: {shown}")
        if now != after_load:
            raise UsageError(
                f"{name} pattern {pattern!r} depends on the name of a model inside "
                f"{model.name!r}, which Keras drops from weight paths when the model is saved "
                "and loaded; name the layers themselves instead")


# ------------------------------------------------------------------------- public API


def check_rules(name: str, rules, *, model=None) -> None:
    """Checks ``{pattern: multiplier}`` rules without changing anything: patterns are
    non-empty strings and multipliers finite numbers >= 0, and with ``model``, each pattern
    names a weight of it (as :func:`with_lr_multipliers` requires).

    Raises:
        ValueError: naming ``name``, the pattern or value, and the model's layers.
    """
    checked = _check_rules(name, rules)
    if model is not None:
        _check_model(model)
        _check_patterns_match(name, checked, model, _weighted_layers(model))


def with_lr_multipliers(optimizer, model, rules, *, default=1.0, decay_rules=None):
    """Returns a copy of ``optimizer`` that scales each weight's update step by its multiplier.

    Caffe's ``lr_mult``: a weight's step is the one the optimizer would take with learning rate
    ``lr * multiplier``, where ``lr`` is the optimizer's (or its schedule's) rate at that step.
    This scales the step, not the gradient, so it means the same for SGD with momentum and for
    Adam. Weight decay (the optimizer's ``weight_decay``) is applied per weight with
    ``local_decay = weight_decay * decay_mult``, as the optimizer's ``regularization`` says
    (see ``LRMultiplierMixin``): decoupled, ``w -= w * local_decay * lr * multiplier``, or
    Caffe's ``"L2"``/``"L1"``, ``local_decay * w`` (or ``* sign(w)``) added to the gradient.

    A layer all of whose weights have multiplier 0 is frozen: this sets
    ``layer.trainable = False`` on it (so a BatchNormalization layer also stops updating its
    statistics) and it gets no optimizer slots. A weight with multiplier 0 in a layer that keeps
    learning takes steps of 0. Compile the model after calling this. Layers are never unfrozen
    here.

    Args:
        optimizer: A fresh Keras SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Adamax, Nadam,
            Lion or Lamb (or a LossScaleOptimizer around one, or an optimizer returned by this
            function or by ``solver.build_optimizer``, whose rules are replaced). Its settings
            are copied, not its state.
        model: The ``keras.Model`` whose layers the rules name.
        rules: Dict of glob pattern -> multiplier >= 0, e.g.
            ``{"conv1*": 0, "*/bias": 2, "block_[1-5]*": 0.1, "head*": 10}``; the first
            matching pattern wins. A pattern matches a weight's layer path (``conv1``,
            ``mha/query``) or a trailing part of it; a pattern with a ``/`` also matches the
            weight's path (``conv1/bias``) or a trailing part of it.
        default: Multiplier of the weights no rule matches.
        decay_rules: Dict of pattern -> weight-decay multiplier (Caffe's ``decay_mult``) >= 0,
            first match wins, patterns as in ``rules`` (``{"*/bias": 0, "*": 1}``). Weights no
            rule matches are decayed with multiplier 1, except 1-D ones (biases, normalization
            gamma and beta), which are not decayed.

    Returns:
        An ``LRMultiplier<Kind>`` optimizer with the same settings (wrapped in a
        LossScaleOptimizer if ``optimizer`` was one). It saves and loads with the model,
        rules and state included, once this module is imported.

    Raises:
        ValueError: If the optimizer cannot be wrapped, ``model`` is not a Keras model, a pattern
            is not a non-empty string or matches no weight (or depends on the name of a nested
            model), or a multiplier is negative, infinite or not a number.
    """
    _check_model(model)
    rules = _check_rules("rules", rules)
    default = _check_multiplier("default", default)
    if decay_rules is not None:
        decay_rules = _check_rules("decay_rules", decay_rules)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        inner = with_lr_multipliers(optimizer.inner_optimizer, model, rules, default=default,
                                    decay_rules=decay_rules)
        config = optimizer.get_config()
        del config["inner_optimizer"]
        return keras.optimizers.LossScaleOptimizer(inner, **config)
    wrapper = _wrapper_class(optimizer)

    layers = _weighted_layers(model)
    _check_patterns_match("rules", rules, model, layers)
    if decay_rules is not None:
        _check_patterns_match("decay_rules", decay_rules, model, layers)

    config = optimizer.get_config()
    config.update({
        "lr_mult_rules": [list(rule) for rule in rules],
        "default_lr_mult": default,
        "decay_mult_rules": None if decay_rules is None else [list(r) for r in decay_rules],
    })
    wrapped = wrapper.from_config(config)
    for layer in layers:
        if all(wrapped.lr_multiplier(v.path) == 0.0 for v in layer.variables):
            layer.layer.trainable = False
    return wrapped


def depth_groups(model, *, multipliers=(0.1, 0.3, 1.0)) -> dict:
    """Returns rules giving the first, middle and last thirds of the layers their multipliers.

    Layers with weights are taken in the order of ``model.weights`` (input to output for a
    functional model) and split into ``len(multipliers)`` contiguous groups of near-equal size,
    the last groups taking any remainder. Pass the result to ``with_lr_multipliers``.

    Args:
        model: A ``keras.Model``.
        multipliers: One multiplier >= 0 per group, from the input side to the output side.

    Returns:
        Dict of exact layer-name pattern -> multiplier, one entry per layer with weights.

    Raises:
        ValueError: If ``model`` is not a Keras model, ``multipliers`` is empty or holds a
            negative or non-finite number, or the model has fewer weighted layers than groups.
    """
    _check_model(model)
    if not isinstance(multipliers, Sequence) or isinstance(multipliers, str) or not multipliers:
        raise UsageError(f"multipliers must be a non-empty sequence of numbers, "
                         f"received: {multipliers!r}")
    multipliers = [_check_multiplier(f"multipliers[{i}]", m) for i, m in enumerate(multipliers)]
    layers = _weighted_layers(model)
    count, groups = len(layers), len(multipliers)
    if count < groups:
        raise UsageError(f"multipliers has {groups} groups but model {model.name!r} has only "
                         f"{count} layers with weights, received: {multipliers!r}")
    rules = {}
    for group, multiplier in enumerate(multipliers):
        for layer in layers[group * count // groups:(group + 1) * count // groups]:
            # Escape glob characters so each rule names exactly one layer.
            rules[re.sub(r"([*?[])", r"[\1]", layer.stable_path)] = multiplier
    return rules


def lr_table(model, optimizer, *, base_lr: float | None = None) -> pd.DataFrame:
    """Returns each weighted layer's multiplier and effective learning rate.

    Args:
        model: The ``keras.Model`` the optimizer trains.
        optimizer: An optimizer from ``with_lr_multipliers`` (or any Keras optimizer, shown
            with multiplier 1 everywhere).
        base_lr: the learning rate the multipliers scale; by default the optimizer's current
            one (which a schedule moves: pass the solver's ``base_lr`` for a table that does
            not depend on the iteration it is made at, as a resumed run needs).

    Returns:
        One row per layer with weights, in model order, with columns ``layer`` (its name as
        rules match it), ``parameters`` (all its weights, trainable or not), ``multiplier``,
        ``effective_lr`` (``base_lr`` times the multiplier; 0 for a
        frozen layer) and ``trainable``. A layer whose weights have different multipliers
        (a rule such as ``"*/bias"``) gets one row per weight instead, named ``layer/weight``.

    Raises:
        ValueError: If ``model`` is not a Keras model or ``optimizer`` not a Keras optimizer.
    """
    _check_model(model)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise UsageError(f"optimizer must be a Keras optimizer, "
                         f"received: {type(optimizer).__name__}")
    learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate)) \
        if base_lr is None else float(base_lr)
    trainable_ids = {id(v) for v in model.trainable_variables}

    def row(name, variables, multiplier):
        trainable = any(id(v) in trainable_ids for v in variables)
        return {"layer": name,
                "parameters": sum(int(np.prod(v.shape)) for v in variables),
                "multiplier": multiplier,
                "effective_lr": learning_rate * multiplier if trainable else 0.0,
                "trainable": trainable}

    rows = []
    for layer in _weighted_layers(model):
        multipliers = [optimizer.lr_multiplier(v.path)
                       if isinstance(optimizer, LRMultiplierMixin) else 1.0
                       for v in layer.variables]
        if len(set(multipliers)) == 1:
            rows.append(row(layer.stable_path, layer.variables, multipliers[0]))
        else:
            rows.extend(row(_stable_variable_path(layer, v), [v], multiplier)
                        for v, multiplier in zip(layer.variables, multipliers))
    return pd.DataFrame(rows, columns=list(_TABLE_COLUMNS))


def format_lr_table(df) -> str:
    """Returns ``lr_table``'s result as an aligned text table for printing.

    Deprecated, and gone in the next release: nothing uses it; a notebook shows the DataFrame
    of :func:`lr_table` as a table, and ``print(table.to_string(index=False))`` prints it.

    Args:
        df: A DataFrame returned by ``lr_table``.

    Returns:
        The table as a string, one line per layer under a header line.

    Raises:
        ValueError: If ``df`` is not a DataFrame with ``lr_table``'s columns.
    """
    deprecated("format_lr_table is deprecated and will be removed in the next release: "
               "show lr_table()'s DataFrame, or print its to_string(index=False)")
    if not isinstance(df, pd.DataFrame) or not set(_TABLE_COLUMNS) <= set(df.columns):
        received = list(df.columns) if isinstance(df, pd.DataFrame) else type(df).__name__
        raise UsageError(f"df must be a DataFrame with columns {list(_TABLE_COLUMNS)}, "
                         f"received: {received}")
    return df.to_string(index=False, columns=list(_TABLE_COLUMNS), formatters={
        "parameters": "{:,}".format,
        "multiplier": "{:g}".format,
        "effective_lr": "{:.4g}".format,
        "trainable": lambda trainable: "yes" if trainable else "frozen",
    })
