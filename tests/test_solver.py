"""Solver settings, learning-rate policies, Caffe solver files and Caffe's update rules.

Backend-agnostic (run also with KERAS_BACKEND=jax). The Caffe formulas below are written from
Caffe's sources (sgd_solver.cpp GetLearningRate, Regularize, ClipGradients, Normalize and the
ComputeUpdateValue of each solver), independently of the code under test.
"""

import json
import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from workbench.training import prototxt, solver
from workbench.training.lr_mult import with_lr_multipliers
from workbench.training.prototxt import CAFFE_ONLY_FIELDS
from workbench.training.recipes import RECIPES, get_recipe
from workbench.training.solver import (
    OPTIMIZERS,
    SolverConfig,
    SolverSchedule,
    build_optimizer,
    learning_rate_schedule,
)

CAFFE_SOLVERS = sorted((Path(__file__).parent / "caffe_solvers").glob("*.prototxt"))


def lr_at(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


# ----------------------------------------------------------------- Caffe, written independently

CAFFE_DEFAULTS = {"gamma": 0.0, "power": 0.0, "momentum": 0.0, "weight_decay": 0.0,
                  "type": "SGD", "delta": 1e-8, "momentum2": 0.999, "rms_decay": 0.99}


def caffe_fields(text):
    """The solver fields these tests need, one per line outside { } blocks as in Caffe's
    files, with caffe.proto's defaults for the missing ones."""
    fields, stepvalues, seen, depth = dict(CAFFE_DEFAULTS), [], set(), 0
    for line in text.splitlines():
        line = line.split("#")[0]
        match = re.match(r"\s*(base_lr|lr_policy|gamma|power|stepsize|stepvalue|max_iter|"
                         r"momentum|momentum2|weight_decay|type|delta|rms_decay)\s*:\s*(\S+)",
                         line)
        top_level = depth == 0
        depth += line.count("{") - line.count("}")
        if match and top_level:
            name, value = match.group(1), match.group(2).strip('"')
            if name == "stepvalue":
                stepvalues.append(int(value))
            else:
                assert name not in seen, f"{name} given twice"
                seen.add(name)
                fields[name] = value if name in ("lr_policy", "type") else float(value)
    fields["stepvalue"] = stepvalues
    return fields


def caffe_rate(p, it):
    """SGDSolver::GetLearningRate at iteration ``it``."""
    policy, base = p["lr_policy"], p["base_lr"]
    if policy == "fixed":
        return base
    if policy == "step":
        return base * p["gamma"] ** (it // int(p["stepsize"]))
    if policy == "exp":
        return base * p["gamma"] ** it
    if policy == "inv":
        return base * (1 + p["gamma"] * it) ** (-p["power"])
    if policy == "multistep":  # current_step_ advances at most once per call, one call a step
        current = 0
        for i in range(it + 1):
            if current < len(p["stepvalue"]) and i >= p["stepvalue"][current]:
                current += 1
        return base * p["gamma"] ** current
    if policy == "poly":
        return base * (1 - it / p["max_iter"]) ** p["power"]
    if policy == "sigmoid":
        return base * (1 / (1 + math.exp(-p["gamma"] * (it - p["stepsize"]))))
    raise AssertionError(policy)


def iterations_to_check(p):
    last = int(p["max_iter"])
    its = {0, 1, 2, 99, 100, 101, last // 3, last // 2, last - 1}
    for value in p["stepvalue"]:
        its |= {value - 1, value, value + 1}
    if "stepsize" in p:
        size = int(p["stepsize"])
        its |= {size - 1, size, size + 1, 2 * size - 1, 2 * size}
    return sorted(it for it in its if 0 <= it < last)


def caffe_steps(kind, hp, weights, grads, rates, lr_mult, local_decay):
    """Caffe's Regularize (L2) + ComputeUpdateValue + Update for one blob over several steps."""
    w = np.array(weights, dtype="float64")
    history, history2 = np.zeros_like(w), np.zeros_like(w)
    m, delta = hp["momentum"], hp["delta"]
    for it, (g, rate) in enumerate(zip(grads, rates)):
        local_rate = rate * lr_mult
        d = g + local_decay * w
        if kind == "SGD":
            history = m * history + local_rate * d
            update = history
        elif kind == "Nesterov":
            previous = history.copy()
            history = m * history + local_rate * d
            update = (1 + m) * history - m * previous
        elif kind == "AdaGrad":
            history = history + d ** 2
            update = local_rate * d / (np.sqrt(history) + delta)
        elif kind == "RMSProp":
            decay = hp["rms_decay"]
            history = decay * history + (1 - decay) * d ** 2
            update = local_rate * d / (np.sqrt(history) + delta)
        elif kind == "AdaDelta":
            history = m * history + (1 - m) * d ** 2
            step = d * np.sqrt((history2 + delta) / (history + delta))
            history2 = m * history2 + (1 - m) * step ** 2
            update = local_rate * step
        else:  # Adam
            beta1, beta2, t = m, hp["momentum2"], it + 1
            history = beta1 * history + (1 - beta1) * d
            history2 = beta2 * history2 + (1 - beta2) * d ** 2
            correction = math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            update = local_rate * correction * history / (np.sqrt(history2) + delta)
        w = w - update
    return w


def tiny_model(kernel=((1.0,), (-2.0,)), bias=(0.5,)):
    """One Dense layer ``fc``: a 2x1 kernel and a bias, set to the given values."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="fc")(inputs))
    model.get_layer("fc").set_weights([np.array(kernel, "float32"), np.array(bias, "float32")])
    return model


def apply(optimizer, model, kernel_grad, bias_grad):
    grads = [np.array(kernel_grad, "float32").reshape(2, 1), np.array(bias_grad, "float32")]
    optimizer.apply(grads, model.trainable_variables)


def fc(model):
    kernel, bias = model.get_layer("fc").get_weights()
    return kernel.ravel().astype("float64"), bias.astype("float64")


# --------------------------------------------------------------------- the workbench's own

def test_step_and_multistep_drop_by_gamma():
    step = SolverSchedule("step", 0.1, 1000, gamma=0.5, stepsize=10)
    assert [round(lr_at(step, s), 6) for s in (0, 9, 10, 25)] == [0.1, 0.1, 0.05, 0.025]
    multi = SolverSchedule("multistep", 1.0, 1000, gamma=0.1, stepvalues=(5, 8))
    assert [round(lr_at(multi, s), 6) for s in (4, 5, 7, 8, 100)] == [1.0, 0.1, 0.1, 0.01, 0.01]


def test_cosine_and_one_cycle_shapes():
    cosine = SolverSchedule("cosine", 1.0, 100)
    assert lr_at(cosine, 0) == pytest.approx(1.0)
    assert lr_at(cosine, 50) == pytest.approx(0.5, abs=1e-6)
    assert lr_at(cosine, 100) == pytest.approx(0.0, abs=1e-6)
    cycle = SolverSchedule("one_cycle", 1.0, 100)
    values = [lr_at(cycle, s) for s in range(101)]
    assert values[0] == pytest.approx(1 / 25, rel=1e-4)
    assert int(np.argmax(values)) == 30 and max(values) == pytest.approx(1.0)
    assert values[-1] == pytest.approx(1e-4, rel=1e-3)


def test_warmup_is_linear_then_policy():
    schedule = SolverSchedule("constant", 0.2, 100, warmup_steps=4)
    assert [round(lr_at(schedule, s), 6) for s in range(6)] == [0.05, 0.1, 0.15, 0.2, 0.2, 0.2]


def test_schedule_serialises():
    schedule = SolverSchedule("poly", 0.1, 50, power=0.5, max_iter=40, iter_size=2,
                              warmup_steps=3)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert [lr_at(clone, s) for s in (0, 15, 30, 90)] == \
        [lr_at(schedule, s) for s in (0, 15, 30, 90)]
    assert clone.get_config() == schedule.get_config()


def test_config_validates_and_round_trips_json(tmp_path):
    with pytest.raises(ValueError, match=r"base_lr must be > 0.0, received: 0"):
        SolverConfig(base_lr=0)
    with pytest.raises(ValueError, match=r"lr_policy must be one of .* received: 'plateau'"):
        SolverConfig(lr_policy="plateau")
    with pytest.raises(ValueError, match="multistep"):
        SolverConfig(lr_policy="multistep")
    with pytest.raises(ValueError, match="unknown solver fields"):
        SolverConfig().replace(learning_rate=1)
    with pytest.raises(ValueError, match=r"momentum must be 0 for optimizer='adagrad'"):
        SolverConfig(optimizer="adagrad", momentum=0.9)
    with pytest.raises(ValueError, match=r"regularization must be 'decoupled' for .*'adamw'"):
        SolverConfig(optimizer="adamw", regularization="L2")
    with pytest.raises(ValueError, match=r"iter_size must be >= 1, received: 0"):
        SolverConfig(iter_size=0)
    with pytest.raises(ValueError, match=r"clip_gradients must be > 0.0, received: -1"):
        SolverConfig(clip_gradients=-1)
    config = SolverConfig(optimizer="adam", lr_policy="poly", power=0.5, iter_size=2,
                          clip_gradients=5.0, regularization="L2", test_interval_iters=100)
    path = tmp_path / "solver.json"
    path.write_text(json.dumps(config.to_dict()))
    assert SolverConfig.load(path) == config


def test_python_defaults_stay_the_workbenchs():
    config = SolverConfig()
    assert (config.optimizer, config.momentum, config.weight_decay, config.regularization,
            config.lr_policy) == ("sgd", 0.9, 5e-4, "decoupled", "cosine")
    assert SolverConfig(optimizer="adagrad").momentum == 0.0
    assert SolverConfig(optimizer="adadelta").momentum == 0.95


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_build_optimizer_uses_schedule(name):
    optimizer = build_optimizer(SolverConfig(optimizer=name, base_lr=0.5, lr_policy="constant"), 10)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.5)


def test_recipe_stage_epochs():
    assert get_recipe("two_stage").stage_epochs(10) == [3, 7]
    assert get_recipe("two_stage").stage_epochs(2) == [1, 1]
    assert get_recipe("caffe").stage_epochs(4) == [4]
    assert not RECIPES["scratch"].pretrained and RECIPES["scratch"].train_bn
    with pytest.raises(ValueError, match="recipe must be one of"):
        get_recipe("fastai")


# ------------------------------------------------------------------- Caffe's solver files

def test_all_of_caffes_solver_files_are_vendored():
    assert len(CAFFE_SOLVERS) == 25
    assert "Redistribution and use" in (CAFFE_SOLVERS[0].parent / "README.md").read_text()


@pytest.mark.parametrize("path", CAFFE_SOLVERS, ids=lambda path: path.stem)
def test_caffe_solver_file_loads_with_caffes_learning_rate_and_defaults(path):
    p = caffe_fields(path.read_text())
    config = SolverConfig.load(path)
    optimizer = build_optimizer(config, total_steps=config.total_batches(steps_per_epoch=100))
    for it in iterations_to_check(p):
        optimizer.iterations.assign(it)
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        assert rate == pytest.approx(caffe_rate(p, it), rel=1e-5, abs=1e-12), it

    # Every other setting as Caffe reads it, defaults included.
    kinds = {"SGD": "sgd", "Nesterov": "nesterov", "AdaGrad": "adagrad", "RMSProp": "rmsprop",
             "AdaDelta": "adadelta", "Adam": "adam"}
    assert config.optimizer == kinds[p["type"]]
    assert config.max_iter == p["max_iter"]
    assert (config.momentum, config.weight_decay, config.regularization) == \
        (p["momentum"], p["weight_decay"], "L2")
    assert (config.delta, config.momentum2, config.rms_decay) == \
        (p["delta"], p["momentum2"], p["rms_decay"])
    assert (config.iter_size, config.clip_gradients) == (1, None)
    settings = optimizer.get_config()
    assert settings["regularization"] == "L2"
    assert (settings["weight_decay"] or 0.0) == pytest.approx(p["weight_decay"])
    momentum_name = {"sgd": "momentum", "nesterov": "momentum", "adam": "beta_1",
                     "adadelta": "rho", "rmsprop": "momentum"}.get(config.optimizer)
    if momentum_name:
        assert settings[momentum_name] == pytest.approx(p["momentum"])


def test_missing_fields_take_caffes_defaults_so_an_adam_without_decay_does_not_decay():
    config = SolverConfig.from_prototxt('base_lr: 0.001\nlr_policy: "fixed"\ntype: "Adam"\n')
    assert (config.weight_decay, config.momentum, config.momentum2, config.delta) == \
        (0.0, 0.0, 0.999, 1e-8)
    assert (config.regularization, config.iter_size, config.clip_gradients) == ("L2", 1, None)
    model = tiny_model()
    optimizer = with_lr_multipliers(build_optimizer(config, 10), model, {})
    for _ in range(3):
        apply(optimizer, model, [0.0, 0.0], [0.0])  # no gradient and no decay: nothing moves
    np.testing.assert_array_equal(fc(model)[0], [1.0, -2.0])
    assert optimizer.beta_1 == 0.0 and optimizer.epsilon == 1e-8


@pytest.mark.parametrize("line, optimizer", [
    ("solver_type: NESTEROV", "nesterov"), ("solver_type: 2", "adagrad"),
    ("solver_type: ADADELTA", "adadelta"), ("solver_type: RMSPROP", "rmsprop"),
    ("solver_type: ADAM", "adam"), ("solver_type: SGD", "sgd"), ('type: "AdaGrad"', "adagrad"),
    ('type: "AdaDelta"', "adadelta"), ('type: "Nesterov"', "nesterov"),
])
def test_solver_types_old_enums_and_new_names(line, optimizer):
    config = SolverConfig.from_prototxt(f'base_lr: 0.1\nlr_policy: "fixed"\n{line}\n')
    assert config.optimizer == optimizer


def test_caffe_only_fields_are_accepted_without_effect():
    base = 'base_lr: 0.1\nlr_policy: "step"\nstepsize: 10\ngamma: 0.5\nmax_iter: 100\n'
    machinery = ('net: "a.prototxt"\ntrain_net: "b"\ntest_net: "c"\ntest_net: "d"\n'
                 'test_iter: 100\ntest_iter: 50\ntest_state: { stage: "x" }\n'
                 'train_state { phase: TRAIN }\nnet_param { name: "n" layer { type: "Data" } }\n'
                 'test_initialization: false\ntest_compute_loss: true\naverage_loss: 40\n'
                 'snapshot_prefix: "p"\nsnapshot_format: HDF5\nsnapshot_diff: false\n'
                 'snapshot_after_train: true\nsolver_mode: CPU\ndevice_id: 1\n'
                 'layer_wise_reduce: true\ndebug_info: false\nrandom_seed: 1701\n')
    assert SolverConfig.from_prototxt(base + machinery) == SolverConfig.from_prototxt(base)
    for name in ("net", "train_net", "test_iter", "snapshot_prefix", "solver_mode", "device_id",
                 "debug_info"):
        assert name in CAFFE_ONLY_FIELDS


def test_caffe_only_fields_moved_to_prototxt_still_import_from_solver_with_a_warning():
    with pytest.warns(DeprecationWarning, match="solver.CAFFE_ONLY_FIELDS is deprecated .*: "
                                                "import it from workbench.training.prototxt"):
        assert solver.CAFFE_ONLY_FIELDS is prototxt.CAFFE_ONLY_FIELDS


def test_intervals_and_length_count_iterations():
    config = SolverConfig.from_prototxt(
        'base_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 10\niter_size: 3\ntest_interval: 500\n'
        'snapshot: 5000\ndisplay: 0\n')
    assert (config.test_interval_iters, config.snapshot_iters, config.display_iters) == \
        (500, 5000, None)
    assert config.total_batches(steps_per_epoch=7) == 30  # 10 iterations of 3 batches
    assert config.total_epochs(steps_per_epoch=7) == 5


def test_caffe_prototxt_common_fields(tmp_path, recwarn):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train_val.prototxt"  # Caffe\n'
                    "base_lr: 0.001\nlr_policy: \"multistep\"\ngamma: 0.1\n"
                    "stepvalue: 10000\nstepvalue: 15000\nmax_iter: 20000\nmomentum: 0.9\n"
                    "weight_decay: 0.0005\nsnapshot: 5000\ntype: \"SGD\"\nsolver_mode: GPU\n")
    config = SolverConfig.load(path)
    assert not recwarn.list  # nothing is ignored with a warning any more
    assert (config.base_lr, config.lr_policy, config.stepvalues, config.max_iter) == \
        (0.001, "multistep", (10000, 15000), 20000)
    assert (config.optimizer, config.momentum, config.weight_decay) == ("sgd", 0.9, 0.0005)
    assert config.snapshot_iters == 5000
    assert config.total_epochs(steps_per_epoch=300) == math.ceil(20000 / 300)


BASE = 'base_lr: 0.01\nlr_policy: "fixed"\n'


@pytest.mark.parametrize("text, message", [
    (BASE + "max_iter: 1e4", r"line 3: max_iter must be an integer, received: '1e4'"),
    ("base_lr: abc\nlr_policy: \"fixed\"", r"line 1: base_lr must be a number, received: 'abc'"),
    (BASE + 'base_lr: 0.1', r"line 3: base_lr is given twice \(first on line 1\)"),
    ('base_lr: 0.01\nlr_policy: "plateau"', r"lr_policy must be one of fixed, step, exp, inv, "
                                             r"multistep, poly, sigmoid, received: 'plateau'"),
    (BASE + "lookahead: true", r"line 3: unknown solver field 'lookahead'"),
    (BASE + 'weights: "init.caffemodel"', r"line 3: weights is not supported"),
    (BASE + 'type: "SGD"\nsolver_type: SGD', r"solver_type \(old enum\) and type cannot both"),
    (BASE + 'type: "Adamax"', r"type must be one of SGD, .* received: 'Adamax'"),
    (BASE + "solver_type: LBFGS", r"solver_type must be one of SGD, .* received: 'LBFGS'"),
    (BASE + 'type: "AdaGrad"\nmomentum: 0.9', r"line 4: momentum must be 0 for type 'AdaGrad'"),
    (BASE + 'type: "RMSProp"\nmomentum: 0.9', r"line 4: momentum must be 0 for type 'RMSProp'"),
    (BASE + 'type: "RMSProp"\nrms_decay: 1.0', r"line 4: rms_decay must be < 1, received: 1.0"),
    (BASE + 'regularization_type: "L3"', r"regularization_type must be \"L2\" or \"L1\""),
    (BASE + "clip_gradients: 0", r"line 3: clip_gradients must be > 0 to clip, or < 0 not to"),
    (BASE + "iter_size: 0", r"line 3: iter_size must be >= 1, received: 0"),
    (BASE + "momentum: 1.5", r"line 3: momentum must be <= 0.9999, received: 1.5"),
    (BASE + "max_iter: 0", r"line 3: max_iter must be >= 1, received: 0"),
    (BASE + "test_interval: -5", r"line 3: test_interval must be >= 0, received: -5"),
    (BASE + 'base_lr: "0.1"', r"base_lr must be a number, received: '0.1'"),
    (BASE + "debug_info: maybe", r"line 3: debug_info must be true or false"),
    (BASE + "net_param {\n name: 'x'", r"line 3: the block opened here is never closed"),
    (BASE + 'net { name: "x" }', r"line 3: net must be a single value"),
    (BASE + "test_iter 100", r"line 3: expected ':' after test_iter, received: '100'"),
    ('lr_policy: "fixed"', r"base_lr is missing"),
    ("base_lr: 0.1", r"lr_policy is missing; Caffe has no default"),
    ('base_lr: 0.1\nlr_policy: "step"\ngamma: 0.1', r"lr_policy 'step' needs stepsize > 0"),
    ('base_lr: 0.1\nlr_policy: "sigmoid"\nstepsize: 0', r"'sigmoid' needs stepsize > 0"),
    ('base_lr: 0.1\nlr_policy: "poly"\npower: 0.5', r"lr_policy 'poly' needs max_iter"),
    ('base_lr: 0.1\nlr_policy: "multistep"', r"lr_policy 'multistep' needs at least one"),
    ('base_lr: 0.1\nlr_policy: "multistep"\nstepvalue: 9\nstepvalue: 3',
     r"line 3: stepvalues must be increasing"),
])
def test_malformed_or_unsupported_solver_files_are_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=message) as error:
        SolverConfig.from_prototxt(text)
    assert len(str(error.value).splitlines()) == 1
    assert str(error.value).startswith("solver.prototxt")


def test_load_names_the_file(tmp_path):
    path = tmp_path / "mine.prototxt"
    path.write_text(BASE + "max_iter: 1e4\n")
    with pytest.raises(ValueError, match=r"^mine.prototxt line 3: max_iter must be an integer"):
        SolverConfig.load(path)


def test_protobuf_text_format_forms_are_read():
    config = SolverConfig.from_prototxt(
        "base_lr: 1e-2 lr_policy: 'multistep'; gamma: 0.5f, stepvalue: [100, 200]\n"
        'type: "Nes" "terov"  # adjacent strings join\nmomentum: .9\nmax_iter: 300\n')
    assert (config.base_lr, config.gamma, config.stepvalues, config.optimizer,
            config.momentum) == (0.01, 0.5, (100, 200), "nesterov", 0.9)


# ------------------------------------------------------------------- Caffe's policies

@pytest.mark.parametrize("policy, extra", [
    ("exp", {"gamma": 0.999}),
    ("inv", {"gamma": 1e-3, "power": 0.75}),
    ("poly", {"power": 2.0, "max_iter": 500}),
    ("sigmoid", {"gamma": 0.01, "stepsize": 300}),
    ("step", {"gamma": 0.5, "stepsize": 100}),
])
def test_policies_follow_caffe_and_iter_size_counts_iterations(policy, extra):
    p = {"lr_policy": policy, "base_lr": 0.1, "stepvalue": [], **CAFFE_DEFAULTS, **extra}
    config = SolverConfig(base_lr=0.1, lr_policy=policy, **extra)
    schedule = learning_rate_schedule(config, total_steps=1000)
    for it in (0, 1, 99, 100, 101, 250, 299, 300, 301, 499):
        assert lr_at(schedule, it) == pytest.approx(caffe_rate(p, it), rel=1e-5), it
    # With iter_size 3 Keras counts every batch: the schedule divides by 3.
    accumulating = learning_rate_schedule(config.replace(iter_size=3), total_steps=3000)
    for step in (0, 2, 3, 299, 300, 1000, 1499):
        assert lr_at(accumulating, step) == pytest.approx(caffe_rate(p, step // 3), rel=1e-5)


def test_poly_is_zero_after_max_iter_instead_of_nan():
    schedule = SolverSchedule("poly", 0.1, 100, power=0.5)
    assert lr_at(schedule, 100) == 0.0 and lr_at(schedule, 150) == 0.0


# ---------------------------------------------------------- Caffe's update rules, by hand

def test_caffe_l2_decay_with_momentum_differs_from_decoupled_decay_by_hand():
    # lr 0.1, momentum 0.9, weight_decay 0.01, gradient 0.5 on both kernel entries (1, -2).
    l2 = SolverConfig(base_lr=0.1, momentum=0.9, weight_decay=0.01, lr_policy="constant",
                      regularization="L2")
    model = tiny_model()
    optimizer = with_lr_multipliers(build_optimizer(l2, 10), model, {})
    for _ in range(2):
        apply(optimizer, model, [0.5, 0.5], [0.0])
    # Caffe, w = 1: d = 0.5 + 0.01 * 1 = 0.51, h = 0.1 * 0.51 = 0.051, w = 0.949;
    #   d = 0.5 + 0.01 * 0.949 = 0.50949, h = 0.9 * 0.051 + 0.1 * 0.50949 = 0.096849,
    #   w = 0.949 - 0.096849 = 0.852151.
    # w = -2: d = 0.48, h = 0.048, w = -2.048; d = 0.47952, h = 0.0432 + 0.047952 = 0.091152,
    #   w = -2.139152.
    np.testing.assert_allclose(fc(model)[0], [0.852151, -2.139152], rtol=1e-6)

    model = tiny_model()
    optimizer = with_lr_multipliers(build_optimizer(l2.replace(regularization="decoupled"), 10),
                                    model, {})
    for _ in range(2):
        apply(optimizer, model, [0.5, 0.5], [0.0])
    # Decoupled, w = 1: w = 1 * (1 - 0.01 * 0.1) = 0.999, v = -0.05, w = 0.949;
    #   w = 0.949 * 0.999 = 0.948051, v = 0.9 * -0.05 - 0.05 = -0.095, w = 0.853051.
    # w = -2: w = -1.998 - 0.05 = -2.048; w = -2.048 * 0.999 - 0.095 = -2.140952.
    np.testing.assert_allclose(fc(model)[0], [0.853051, -2.140952], rtol=1e-6)


def test_caffe_l2_decay_composes_with_lr_mult_and_decay_mult_by_hand():
    # local_rate = 0.1 * lr_mult 2 = 0.2, local_decay = 0.01 * decay_mult 3 = 0.03, w = 1.
    config = SolverConfig(base_lr=0.1, momentum=0.9, weight_decay=0.01, lr_policy="constant",
                          regularization="L2")
    model = tiny_model()
    optimizer = with_lr_multipliers(build_optimizer(config, 10), model, {"fc": 2},
                                    decay_rules={"fc/kernel": 3})
    for _ in range(2):
        apply(optimizer, model, [0.5, 0.5], [0.0])
    # d = 0.5 + 0.03 = 0.53, h = 0.2 * 0.53 = 0.106, w = 0.894;
    # d = 0.5 + 0.03 * 0.894 = 0.52682, h = 0.9 * 0.106 + 0.2 * 0.52682 = 0.200764,
    # w = 0.894 - 0.200764 = 0.693236.
    assert fc(model)[0][0] == pytest.approx(0.693236, rel=1e-6)


def test_caffe_l1_decay_adds_the_sign_by_hand():
    config = SolverConfig(base_lr=0.1, momentum=0.0, weight_decay=0.01, lr_policy="constant",
                          regularization="L1")
    model = tiny_model()
    apply(with_lr_multipliers(build_optimizer(config, 10), model, {}), model, [0.5, 0.5], [0.0])
    # w = 1: d = 0.5 + 0.01 = 0.51, w = 0.949; w = -2: d = 0.5 - 0.01 = 0.49, w = -2.049.
    np.testing.assert_allclose(fc(model)[0], [0.949, -2.049], rtol=1e-6)


@pytest.mark.parametrize("decay_rules, bias", [
    ({"*/bias": 0, "*": 1}, 0.5),  # Caffe's decay_mult: 0 on the bias
    ({"*": 1}, 0.5 * 0.95),  # control: the same rules without it decay the bias too
])
def test_decay_mult_zero_leaves_a_bias_undecayed_under_l2(decay_rules, bias):
    config = SolverConfig(base_lr=0.1, momentum=0.0, weight_decay=0.5, lr_policy="constant",
                          regularization="L2")
    model = tiny_model()
    optimizer = with_lr_multipliers(build_optimizer(config, 10), model, {},
                                    decay_rules=decay_rules)
    apply(optimizer, model, [0.0, 0.0], [0.0])
    kernel, bias_after = fc(model)
    np.testing.assert_allclose(kernel, [0.95, -1.9], rtol=1e-6)  # w - 0.1 * 0.5 * w
    assert bias_after[0] == pytest.approx(bias, rel=1e-6)


def test_iter_size_accumulates_and_counts_iterations():
    config = SolverConfig(base_lr=0.1, momentum=0.0, weight_decay=0.0, lr_policy="step",
                          gamma=0.5, stepsize=1, iter_size=2)
    model = tiny_model()
    optimizer = with_lr_multipliers(build_optimizer(config, 8), model, {})
    apply(optimizer, model, [1.0, 2.0], [0.0])
    np.testing.assert_array_equal(fc(model)[0], [1.0, -2.0])  # only accumulated
    apply(optimizer, model, [3.0, 0.0], [0.0])
    # iteration 0, rate 0.1, gradient (1 + 3) / 2 = 2 and (2 + 0) / 2 = 1
    np.testing.assert_allclose(fc(model)[0], [0.8, -2.1], rtol=1e-6)
    apply(optimizer, model, [1.0, 1.0], [0.0])
    apply(optimizer, model, [1.0, 1.0], [0.0])
    # iteration 1, rate 0.1 * 0.5: step 0.05 * 1
    np.testing.assert_allclose(fc(model)[0], [0.75, -2.15], rtol=1e-6)
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 2


def test_clip_gradients_clips_the_global_norm_before_decay():
    # Gradients (3, 0) and (4): global norm 5. Per-variable clipping would scale them apart.
    config = SolverConfig(base_lr=0.1, momentum=0.0, weight_decay=0.1, lr_policy="constant",
                          regularization="L2", clip_gradients=1.0)
    model = tiny_model()
    apply(with_lr_multipliers(build_optimizer(config, 10), model, {}), model, [3.0, 0.0], [4.0])
    kernel, bias = fc(model)
    # kernel: clipped (0.6, 0) + decay 0.1 * (1, -2) = (0.7, -0.2), times 0.1
    np.testing.assert_allclose(kernel, [1 - 0.07, -2 + 0.02], rtol=1e-6)
    assert bias[0] == pytest.approx(0.5 - 0.1 * 0.8, rel=1e-6)  # 1-D: not decayed

    model = tiny_model()
    apply(build_optimizer(config.replace(clip_gradients=10.0), 10), model, [3.0, 0.0], [4.0])
    assert fc(model)[1][0] == pytest.approx(0.5 - 0.4, rel=1e-6)  # norm below 10: unclipped


def test_clip_gradients_measures_the_sum_of_an_accumulated_iteration():
    # Caffe clips the sum of iter_size gradients (norm 10 here) at 5, then divides by 2.
    config = SolverConfig(base_lr=0.1, momentum=0.0, weight_decay=0.0, lr_policy="constant",
                          clip_gradients=5.0, iter_size=2)
    model = tiny_model()
    optimizer = build_optimizer(config, 10)
    for _ in range(2):
        apply(optimizer, model, [3.0, 0.0], [4.0])
    kernel, bias = fc(model)
    # The sum (6, 0), (8) has norm 10: scaled by 5 / 10 to (3, 0), (4), then halved.
    np.testing.assert_allclose(kernel, [1 - 0.1 * 1.5, -2.0], rtol=1e-6)
    assert bias[0] == pytest.approx(0.5 - 0.1 * 2.0, rel=1e-6)


SOLVER_TYPES = {
    "SGD": 'type: "SGD"\nmomentum: 0.9\n',
    "Nesterov": 'type: "Nesterov"\nmomentum: 0.95\n',
    "AdaGrad": 'type: "AdaGrad"\ndelta: 0.1\n',
    "RMSProp": 'type: "RMSProp"\nrms_decay: 0.98\ndelta: 0.1\n',
    "AdaDelta": 'type: "AdaDelta"\nmomentum: 0.95\ndelta: 1e-6\n',
    "Adam": 'type: "Adam"\nmomentum: 0.9\nmomentum2: 0.99\ndelta: 0.1\n',
}


@pytest.mark.parametrize("kind", SOLVER_TYPES)
def test_each_caffe_solver_type_takes_caffes_steps(kind):
    text = ('base_lr: 0.1\nlr_policy: "step"\ngamma: 0.5\nstepsize: 2\nweight_decay: 0.01\n'
            + SOLVER_TYPES[kind])
    hp = caffe_fields(text)
    config = SolverConfig.from_prototxt(text)
    model = tiny_model()
    # lr_mult 2 on the kernel, 1 on the bias; Caffe's default decay_mult 1 on both.
    optimizer = with_lr_multipliers(build_optimizer(config, 10), model, {"fc/kernel": 2},
                                    decay_rules={"*": 1})
    rng = np.random.default_rng(0)
    kernel_grads = rng.normal(size=(4, 2)) * 0.1
    bias_grads = rng.normal(size=(4, 1)) * 0.1
    for k, b in zip(kernel_grads, bias_grads):
        apply(optimizer, model, k, b)
    rates = [caffe_rate(hp, it) for it in range(4)]
    kernel, bias = fc(model)
    np.testing.assert_allclose(
        kernel, caffe_steps(kind, hp, [1.0, -2.0], kernel_grads, rates, 2.0, 0.01),
        rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(
        bias, caffe_steps(kind, hp, [0.5], bias_grads, rates, 1.0, 0.01), rtol=2e-5, atol=1e-6)


def test_caffe_optimizers_save_and_load_with_the_model(tmp_path):
    for kind in ("RMSProp", "AdaGrad"):
        config = SolverConfig.from_prototxt(f'base_lr: 0.01\nlr_policy: "fixed"\n'
                                            f'weight_decay: 0.001\n{SOLVER_TYPES[kind]}')
        model = tiny_model()
        optimizer = with_lr_multipliers(build_optimizer(config, 10), model, {"*/bias": 2})
        model.compile(optimizer=optimizer, loss="mse")
        x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
        model.fit(x, y, batch_size=2, verbose=0)
        model.save(tmp_path / "model.keras")
        loaded = keras.models.load_model(tmp_path / "model.keras")
        assert type(loaded.optimizer) is type(optimizer)
        assert loaded.optimizer.get_config() == optimizer.get_config()
        model.fit(x, y, batch_size=2, shuffle=False, verbose=0)
        loaded.fit(x, y, batch_size=2, shuffle=False, verbose=0)
        for ours, theirs in zip(loaded.get_weights(), model.get_weights()):
            np.testing.assert_allclose(ours, theirs, rtol=1e-6)
