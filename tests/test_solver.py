"""Solver settings, learning-rate policies, Caffe prototxt reading and recipe stage lengths."""

import json
import math

import keras
import numpy as np
import pytest

from workbench.training.recipes import RECIPES, get_recipe
from workbench.training.solver import SolverConfig, SolverSchedule, build_optimizer


def lr_at(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


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
    schedule = SolverSchedule("multistep", 0.1, 50, stepvalues=(10, 20), warmup_steps=3)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert [lr_at(clone, s) for s in (0, 15, 30)] == [lr_at(schedule, s) for s in (0, 15, 30)]


def test_config_validates_and_round_trips_json(tmp_path):
    with pytest.raises(ValueError, match=r"base_lr must be > 0.0, received: 0"):
        SolverConfig(base_lr=0)
    with pytest.raises(ValueError, match=r"lr_policy must be one of .* received: 'poly'"):
        SolverConfig(lr_policy="poly")
    with pytest.raises(ValueError, match="multistep"):
        SolverConfig(lr_policy="multistep")
    with pytest.raises(ValueError, match="unknown solver fields"):
        SolverConfig().replace(learning_rate=1)
    config = SolverConfig(optimizer="adam", lr_policy="multistep", stepvalues=(100, 200))
    path = tmp_path / "solver.json"
    path.write_text(json.dumps(config.to_dict()))
    assert SolverConfig.load(path) == config


def test_caffe_prototxt_common_fields(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train_val.prototxt"  # Caffe\n'
                    "base_lr: 0.001\nlr_policy: \"multistep\"\ngamma: 0.1\n"
                    "stepvalue: 10000\nstepvalue: 15000\nmax_iter: 20000\nmomentum: 0.9\n"
                    "weight_decay: 0.0005\nsnapshot: 5000\ntype: \"SGD\"\nsolver_mode: GPU\n")
    with pytest.warns(UserWarning, match="net, snapshot, solver_mode"):
        config = SolverConfig.load(path)
    assert (config.base_lr, config.lr_policy, config.stepvalues, config.max_iter) == \
        (0.001, "multistep", (10000, 15000), 20000)
    assert (config.optimizer, config.momentum, config.weight_decay) == ("sgd", 0.9, 0.0005)
    assert config.total_epochs(steps_per_epoch=300) == math.ceil(20000 / 300)
    path.write_text("lr_policy: \"inv\"\n")
    with pytest.raises(ValueError, match="lr_policy must be one of fixed, step, multistep"):
        SolverConfig.load(path)


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "adamw", "rmsprop"])
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
