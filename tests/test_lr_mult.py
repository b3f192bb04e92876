"""Tests for workbench.training.lr_mult; backend-agnostic (run also with KERAS_BACKEND=jax)."""

import math

import keras
import numpy as np
import pandas as pd
import pytest

from workbench.training.lr_mult import (
    LRMultiplierAdam,
    LRMultiplierAdamW,
    LRMultiplierSGD,
    depth_groups,
    format_lr_table,
    lr_table,
    with_lr_multipliers,
)

MULTIPLIERS = {"slow": 0.1, "fast": 10.0}


def _branches(names=("base", "slow", "fast")):
    """Identical Dense layers side by side on one input, summed: each gets the same gradient."""
    inputs = keras.Input((4,))
    layers = [keras.layers.Dense(3, name=name, bias_initializer="glorot_uniform")
              for name in names]
    outputs = keras.layers.Add()([layer(inputs) for layer in layers])
    model = keras.Model(inputs, outputs)
    for layer in layers[1:]:
        layer.set_weights(layers[0].get_weights())
    return model


def _values(model, name):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.get_layer(name).weights]


def _apply(optimizer, model, *, steps=1, grad_scale=None, zero=False):
    """Applies the same random gradient to every branch, times ``grad_scale[layer]`` if given."""
    rng = np.random.default_rng(0)
    variables = model.trainable_variables
    for _ in range(steps):
        grads = {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))}
        optimizer.apply([
            (0.0 if zero else (grad_scale or {}).get(v.path.split("/")[0], 1.0))
            * grads[v.name].astype("float32")
            for v in variables], variables)


def _deltas(optimizer, model, **apply_kwargs):
    before = {name: _values(model, name) for name in ("base", "slow", "fast")}
    _apply(optimizer, model, **apply_kwargs)
    return {name: [a - b for a, b in zip(_values(model, name), before[name])] for name in before}


def _assert_scaled(deltas, multipliers=MULTIPLIERS):
    for name, multiplier in multipliers.items():
        for delta, base in zip(deltas[name], deltas["base"]):
            # Float32 rounding of `w + step` is ~1e-7 absolute: allow 0.1% of the base step.
            np.testing.assert_allclose(delta, multiplier * base, rtol=1e-3,
                                       atol=1e-3 * np.abs(base).max())


# Several steps where the state does not depend on the weights, so the whole displacement
# scales; one step for AdamW (decay reads w) and Lamb (trust ratio reads w).
OPTIMIZERS = {
    "sgd_momentum": (lambda: keras.optimizers.SGD(0.1, momentum=0.9), 3),
    "sgd_nesterov": (lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), 3),
    "adam": (lambda: keras.optimizers.Adam(0.01), 3),
    "adamw": (lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1), 1),
    "rmsprop": (lambda: keras.optimizers.RMSprop(0.01, momentum=0.9, centered=True), 3),
    "adagrad": (lambda: keras.optimizers.Adagrad(0.1), 3),
    "adadelta": (lambda: keras.optimizers.Adadelta(1.0), 3),
    "adamax": (lambda: keras.optimizers.Adamax(0.01), 3),
    "nadam": (lambda: keras.optimizers.Nadam(0.01), 3),
    "lion": (lambda: keras.optimizers.Lion(0.01), 3),
    "lamb": (lambda: keras.optimizers.Lamb(0.01), 1),
}


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_each_layer_step_is_scaled_by_its_multiplier(kind):
    make, steps = OPTIMIZERS[kind]
    model, plain_model = _branches(), _branches()
    plain_model.set_weights(model.get_weights())
    deltas = _deltas(with_lr_multipliers(make(), model, MULTIPLIERS), model, steps=steps)
    _assert_scaled(deltas)
    # The default layer's kernel moves as under the optimizer it wraps: its settings are copied.
    plain = _deltas(make(), plain_model, steps=steps)
    np.testing.assert_allclose(deltas["base"][0], plain["base"][0], rtol=1e-5, atol=1e-7)


def test_gradient_scaling_would_fail_the_step_test_with_adam():
    # Control: scaling the gradient instead of the step leaves Adam's step unchanged, so
    # _assert_scaled tells the two apart.
    deltas = _deltas(keras.optimizers.Adam(0.01), _branches(), steps=3, grad_scale=MULTIPLIERS)
    np.testing.assert_allclose(deltas["slow"][0], deltas["base"][0], rtol=1e-2)
    with pytest.raises(AssertionError):
        _assert_scaled(deltas)


def test_without_multipliers_every_branch_moves_alike():
    deltas = _deltas(keras.optimizers.Adam(0.01), _branches(), steps=2)
    np.testing.assert_array_equal(deltas["slow"][0], deltas["base"][0])


def test_schedule_rate_is_scaled_at_each_step():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    model = _branches()
    optimizer = with_lr_multipliers(keras.optimizers.SGD(schedule), model, MULTIPLIERS)
    rng = np.random.default_rng(0)
    for step in range(2):
        before = {name: _values(model, name) for name in ("base", "slow", "fast")}
        grads = {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))}
        optimizer.apply([grads[v.name].astype("float32") for v in model.trainable_variables],
                        model.trainable_variables)
        for name, multiplier in {"base": 1.0, **MULTIPLIERS}.items():
            kernel_delta = _values(model, name)[0] - before[name][0]
            np.testing.assert_allclose(kernel_delta, -multiplier * 0.1 * 0.5**step
                                       * grads["kernel"], rtol=1e-3, atol=1e-6)


def _fit_one_step(model, optimizer, **compile_kwargs):
    model.compile(optimizer=optimizer, loss="mse", **compile_kwargs)
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    before = {name: _values(model, name) for name in ("base", "slow", "fast")}
    model.fit(x, np.zeros((8, 3), "float32"), batch_size=8, epochs=1, verbose=0)
    return {name: [a - b for a, b in zip(_values(model, name), before[name])] for name in before}


def test_loss_scale_optimizer_is_wrapped_inside():
    model = _branches()
    optimizer = with_lr_multipliers(
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.9),
                                            initial_scale=8.0), model, MULTIPLIERS)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(optimizer.inner_optimizer, LRMultiplierSGD)
    assert optimizer.initial_scale == 8.0
    # fit, not apply: Keras's LossScaleOptimizer.apply cannot run eagerly on JAX.
    _assert_scaled(_fit_one_step(model, optimizer))


def test_fit_compiled_scales_steps():
    model = _branches()
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1, momentum=0.9), model, MULTIPLIERS)
    _assert_scaled(_fit_one_step(model, optimizer, jit_compile=True))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute is TF-only")
def test_fit_under_tf_distribute_scales_steps():
    import tensorflow as tf

    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = _branches()
        optimizer = with_lr_multipliers(keras.optimizers.Adam(0.01), model, MULTIPLIERS)
        deltas = _fit_one_step(model, optimizer)
    _assert_scaled(deltas)


def test_mixed_precision_fit_keeps_multipliers_and_frozen_layers():
    # The global policy, the usual way: compile then wraps the optimizer in LossScaleOptimizer.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _branches(("base", "slow", "fast", "frozen"))
    finally:
        keras.config.set_dtype_policy(previous)
    frozen_before = _values(model, "frozen")
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1), model,
                                    {**MULTIPLIERS, "frozen": 0})
    deltas = _fit_one_step(model, optimizer)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.optimizer.inner_optimizer is optimizer
    _assert_scaled(deltas)
    for after, before in zip(_values(model, "frozen"), frozen_before):
        assert after.tobytes() == before.tobytes()


def _conv_model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def test_frozen_layers_are_byte_identical_after_fit_and_have_no_slots():
    model = _conv_model()
    optimizer = with_lr_multipliers(keras.optimizers.Adam(0.01), model, {"conv1": 0, "bn1": 0})
    assert not model.get_layer("conv1").trainable and not model.get_layer("bn1").trainable
    frozen = {name: _values(model, name) for name in ("conv1", "bn1")}
    head_before = _values(model, "head")
    model.compile(optimizer=optimizer, loss="mse", jit_compile=True)
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 6, 6, 2)), rng.normal(size=(8, 2)), batch_size=4, epochs=2,
              verbose=0)

    for name, values in frozen.items():  # BN moving statistics included
        for after, before in zip(_values(model, name), values):
            assert after.tobytes() == before.tobytes(), name
    assert not np.allclose(_values(model, "head")[0], head_before[0])
    assert [v.path for v in model.trainable_variables] == ["head/kernel", "head/bias"]
    # iteration, learning_rate, then Adam's momentum and velocity for head/kernel and head/bias.
    assert len(optimizer.variables) == 2 + 2 * 2
    assert not any("conv1" in v.path or "bn1" in v.path for v in optimizer.variables)


def test_weight_decay_is_scaled_by_lr_mult_and_decay_mult_and_skips_biases_by_default():
    model = _branches()
    start = {name: _values(model, name) for name in ("base", "slow", "fast")}
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1, weight_decay=0.5), model,
                                    MULTIPLIERS, decay_rules={"fast/kernel": 3})
    _apply(optimizer, model, zero=True)  # zero gradients: only decay moves the weights
    for name, lr_mult, decay_mult in (("base", 1, 1), ("slow", 0.1, 1), ("fast", 10, 3)):
        kernel, bias = _values(model, name)
        np.testing.assert_allclose(
            kernel, start[name][0] * (1 - 0.5 * 0.1 * lr_mult * decay_mult), rtol=1e-6)
        np.testing.assert_array_equal(bias, start[name][1])


def test_decay_rules_can_name_biases():
    model = _branches()
    start = _values(model, "slow")[1]
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1, weight_decay=0.5), model,
                                    MULTIPLIERS, decay_rules={"*/bias": 2})
    _apply(optimizer, model, zero=True)
    np.testing.assert_allclose(_values(model, "slow")[1], start * (1 - 0.5 * 0.1 * 0.1 * 2),
                               rtol=1e-6)


def test_decay_everywhere_at_multiplier_one_matches_keras_adamw():
    model, plain_model = _branches(), _branches()
    plain_model.set_weights(model.get_weights())
    optimizer = with_lr_multipliers(keras.optimizers.AdamW(0.01, weight_decay=0.5), model, {},
                                    decay_rules={"*": 1})
    _apply(optimizer, model, steps=3)
    _apply(keras.optimizers.AdamW(0.01, weight_decay=0.5), plain_model, steps=3)
    for ours, theirs in zip(model.get_weights(), plain_model.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def _sequential():
    return keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(5, name="d0"),
        keras.layers.Dense(5, name="d1"),
        keras.layers.Dense(2, name="d2"),
    ])


def test_save_and_load_resumes_exactly(tmp_path):
    # A Sequential model: its weight paths carry "sequential/" until saved and loaded.
    model = _sequential()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5)
    optimizer = with_lr_multipliers(keras.optimizers.AdamW(schedule, weight_decay=0.1), model,
                                    {"d0": 0, "d1": 0.1, "d2": 10}, decay_rules={"*/bias": 0.5})
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 2))
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.models.load_model(path)  # safe mode, no custom_objects
    assert isinstance(loaded.optimizer, LRMultiplierAdamW)
    assert loaded.optimizer.get_config() == optimizer.get_config()
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 2
    assert not loaded.get_layer("d0").trainable
    for ours, theirs in zip(loaded.optimizer.variables, optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours),
                                      keras.ops.convert_to_numpy(theirs))

    model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    for ours, theirs in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_lr_table_and_format():
    model = _branches(("base", "slow", "fast", "frozen"))
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.01), model,
                                    {**MULTIPLIERS, "frozen": 0})
    table = lr_table(model, optimizer)
    assert list(table.columns) == ["layer", "parameters", "multiplier", "effective_lr",
                                   "trainable"]
    assert table["layer"].tolist() == ["base", "slow", "fast", "frozen"]
    assert table["parameters"].tolist() == [15, 15, 15, 15]
    assert table["multiplier"].tolist() == [1.0, 0.1, 10.0, 0.0]
    np.testing.assert_allclose(table["effective_lr"], [0.01, 0.001, 0.1, 0.0], rtol=1e-6)
    assert table["trainable"].tolist() == [True, True, True, False]

    with pytest.warns(DeprecationWarning, match="format_lr_table is deprecated"):
        text = format_lr_table(table)
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].split() == list(table.columns)
    assert lines[2].split() == ["slow", "15", "0.1", "0.001", "yes"]
    assert lines[4].split()[-1] == "frozen"

    plain = lr_table(model, keras.optimizers.Adam(0.5))
    assert plain["multiplier"].tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="df must be a DataFrame"), \
            pytest.warns(DeprecationWarning):
        format_lr_table(pd.DataFrame({"layer": ["x"]}))


def test_rules_reach_nested_backbones_and_sublayers_first_match_wins():
    backbone = _conv_model()
    inputs = keras.Input((6, 6, 2))
    features = keras.layers.Reshape((1, 2))(backbone(inputs))
    attended = keras.layers.MultiHeadAttention(1, 2, name="mha")(features, features)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(attended))
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1), model,
                                    {"query": 3, "mha*": 2, "conv*": 0.5, "*": 7}, default=1)
    table = lr_table(model, optimizer)
    multipliers = dict(zip(table["layer"], table["multiplier"]))
    assert multipliers == {"conv1": 0.5, "bn1": 7, "head": 7, "mha/query": 3, "mha/key": 2,
                           "mha/value": 2, "mha/attention_output": 2, "out": 7}


def test_depth_groups_split_weighted_layers_into_thirds():
    inputs = keras.Input((3,))
    x = inputs
    for name in ("a", "b", "c", "d", "e", "f[1]", "g"):
        x = keras.layers.Dense(2, name=name)(x)
        if name == "b":
            x = keras.layers.ReLU()(x)  # no weights: not counted
    model = keras.Model(inputs, x)
    rules = depth_groups(model)
    assert rules == {"a": 0.1, "b": 0.1, "c": 0.3, "d": 0.3, "e": 1.0, "f[[]1]": 1.0, "g": 1.0}
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1), model, rules)
    assert lr_table(model, optimizer)["multiplier"].tolist() == [0.1, 0.1, 0.3, 0.3, 1, 1, 1]
    assert depth_groups(model, multipliers=(0, 1)) == {
        "a": 0, "b": 0, "c": 0, "d": 1, "e": 1, "f[[]1]": 1, "g": 1}
    with pytest.raises(ValueError, match=r"multipliers\[1\] must be >= 0, received: -1"):
        depth_groups(model, multipliers=(1, -1))
    with pytest.raises(ValueError, match="only 7 layers"):
        depth_groups(model, multipliers=(1,) * 8)


@pytest.mark.parametrize("rules, message", [
    ({1: 0.5}, r"rules patterns must be non-empty strings .*received: 1"),
    ({"": 0.5}, r"rules patterns must be non-empty strings .*received: ''"),
    ({"slow": -1}, r"rules\['slow'\] must be >= 0, received: -1"),
    ({"slow": math.nan}, r"rules\['slow'\] must be a number, received: nan"),
    ({"slow": math.inf}, r"rules\['slow'\] must be a finite number >= 0, received: inf"),
    ({"slow": "fast"}, r"rules\['slow'\] must be a number, received: 'fast'"),
    ({"slwo*": 0.1}, r"rules pattern 'slwo\*' matches no layer .*base, slow, fast"),
    ("slow", r"rules must be a dict .*received: 'slow'"),
])
def test_bad_rules_are_named(rules, message):
    with pytest.raises(ValueError, match=message):
        with_lr_multipliers(keras.optimizers.SGD(), _branches(), rules)


def test_bad_arguments_are_named():
    model = _branches()
    with pytest.raises(ValueError, match=r"default must be >= 0, received: -0.5"):
        with_lr_multipliers(keras.optimizers.SGD(), model, {}, default=-0.5)
    with pytest.raises(ValueError, match=r"decay_rules pattern 'nothing' matches no layer"):
        with_lr_multipliers(keras.optimizers.SGD(), model, {}, decay_rules={"nothing": 0})
    with pytest.raises(ValueError, match=r"optimizer must be a Keras SGD.*received: Ftrl"):
        with_lr_multipliers(keras.optimizers.Ftrl(), model, {})
    with pytest.raises(ValueError, match=r"model must be a keras.Model, received: Dense"):
        with_lr_multipliers(keras.optimizers.SGD(), keras.layers.Dense(2), {})
    with pytest.raises(ValueError, match=r"lr_mult_rules\['x'\] must be >= 0"):
        LRMultiplierAdam(lr_mult_rules={"x": -1})


def test_pattern_depending_on_a_sequential_name_is_rejected():
    # Keras drops "sequential/" from the paths on load: the rule would change meaning on resume.
    model = _sequential()
    with pytest.raises(ValueError, match=r"'sequential\*' depends on the name of a model"):
        with_lr_multipliers(keras.optimizers.SGD(), model, {"sequential*": 0.1})
    assert all(layer.trainable for layer in model.layers)  # nothing frozen on error


@pytest.mark.parametrize("kind", ["sgd_momentum", "adam"])
def test_a_weight_pattern_doubles_the_bias_step(kind):
    # Caffe's usual `lr_mult: 2` on biases, for SGD with momentum and for Adam (which would
    # ignore a doubled gradient): the bias moves twice as far, the kernel as without the rule.
    make, steps = OPTIMIZERS[kind]
    model, plain_model = _branches(), _branches()
    plain_model.set_weights(model.get_weights())
    deltas = _deltas(with_lr_multipliers(make(), model, {"*/bias": 2}), model, steps=steps)
    plain = _deltas(make(), plain_model, steps=steps)
    for name in ("base", "slow", "fast"):
        kernel, bias = deltas[name]
        np.testing.assert_allclose(kernel, plain[name][0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(bias, 2 * plain[name][1], rtol=1e-3,
                                   atol=1e-3 * np.abs(plain[name][1]).max())


def test_weight_patterns_need_a_slash_and_first_match_wins_per_weight():
    model = _branches()
    with pytest.raises(ValueError, match=r"'bias' matches no layer .*named with a '/': '\*/bias'"):
        with_lr_multipliers(keras.optimizers.SGD(0.1), model, {"bias": 2})
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1), model,
                                    {"fast/kernel": 5, "*/bias": 2, "fast": 3})
    table = lr_table(model, optimizer)
    assert dict(zip(table["layer"], table["multiplier"])) == {
        "base/kernel": 1.0, "base/bias": 2.0, "slow/kernel": 1.0, "slow/bias": 2.0,
        "fast/kernel": 5.0, "fast/bias": 2.0}
    assert table["parameters"].tolist() == [12, 3] * 3


def test_a_layer_freezes_only_when_all_its_weights_have_multiplier_zero():
    model = _branches()
    before = {name: _values(model, name) for name in ("slow", "fast")}
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1, momentum=0.9), model,
                                    {"slow/kernel": 0, "fast/*": 0})
    assert model.get_layer("slow").trainable and not model.get_layer("fast").trainable
    _apply(optimizer, model, steps=2)
    slow_kernel, slow_bias = _values(model, "slow")
    np.testing.assert_array_equal(slow_kernel, before["slow"][0])  # steps of 0
    assert not np.allclose(slow_bias, before["slow"][1])
    for after, start in zip(_values(model, "fast"), before["fast"]):
        np.testing.assert_array_equal(after, start)


@pytest.mark.parametrize("regularization", ["L2", "L1"])
def test_caffe_regularization_adds_decay_to_the_gradient_scaled_by_lr_mult(regularization):
    # Zero gradient, SGD without momentum: w -= lr * lr_mult * weight_decay * decay_mult * term.
    model = _branches()
    start = {name: _values(model, name) for name in ("base", "slow", "fast")}
    optimizer = with_lr_multipliers(
        keras.optimizers.SGD(0.1, weight_decay=0.5), model, MULTIPLIERS,
        decay_rules={"fast/kernel": 3, "*": 1})
    optimizer = type(optimizer).from_config({**optimizer.get_config(),
                                             "regularization": regularization})
    _apply(optimizer, model, zero=True)
    for name, lr_mult, decay_mults in (("base", 1, (1, 1)), ("slow", 0.1, (1, 1)),
                                       ("fast", 10, (3, 1))):
        for after, before, decay_mult in zip(_values(model, name), start[name], decay_mults):
            term = before if regularization == "L2" else np.sign(before)
            np.testing.assert_allclose(after, before - 0.1 * lr_mult * 0.5 * decay_mult * term,
                                       rtol=1e-5, atol=1e-6)


def test_regularization_is_checked_and_kept():
    with pytest.raises(ValueError, match=r"regularization must be one of .* received: 'L3'"):
        LRMultiplierSGD(0.1, regularization="L3")
    with pytest.raises(ValueError, match=r"regularization must be 'decoupled' for AdamW"):
        LRMultiplierAdamW(0.1, regularization="L2")
    model = _branches()
    optimizer = with_lr_multipliers(LRMultiplierSGD(0.1, weight_decay=0.1, regularization="L1"),
                                    model, {"*/bias": 2})
    assert optimizer.regularization == "L1"
    assert optimizer.get_config()["regularization"] == "L1"
