"""Training on several devices, and the GPU memory setting, without a GPU.

TensorFlow: a MirroredStrategy over two logical CPU devices. JAX: ``strategy="auto"`` picks
``keras.distribution.DataParallel`` when JAX sees several devices (two host devices forced with
``XLA_FLAGS``). Devices must be configured before the backend starts, so both run in a fresh
interpreter. Memory growth is checked against a fake ``tf.config``, as a GPU would be needed to
see the real one.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import pytest

from jax_env import jax_env
from workbench import _device

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[3])
    import tiny_data
    from workbench.data.split import prepare
    from workbench.models import StartingPoint
    from workbench.training.options import Execution
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    work = sys.argv[1]
    tiny_data.write_digits(__import__("pathlib").Path(work) / "data", per_class=8)
    prepare(work + "/data", work + "/splits", counts=(4, "rest", 2), progress="none")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    run = finetune(work + "/splits", sys.argv[2], start=StartingPoint("cifar_cnn", weights=None),
                   recipe="caffe", image_size=16, solver=SolverConfig(epochs=2, batch_size=8),
                   execution=Execution(strategy=strategy), progress="none")
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, **run.metrics}))
""")

# One device against two: the same seeded finetune (sizes chosen so every batch, train and
# evaluation, splits evenly over two devices), and one SGD step with per-layer multipliers.
JAX_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax, keras, numpy as np
    sys.path.insert(0, sys.argv[2])
    import tiny_data
    from workbench.models import StartingPoint
    from workbench.training.lr_mult import with_lr_multipliers
    from workbench.training.options import Execution
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    work = Path(sys.argv[1])
    splits = tiny_data.write_splits(work, per_class=10, counts=(4, 2, 4))
    runs = {}
    for name, strategy in (("one", None), ("auto", "auto")):
        run = finetune(splits, work / name, start=StartingPoint("cifar_cnn", weights=None),
                       recipe="caffe", image_size=16, dropout=0.0, seed=1, progress="none",
                       solver=SolverConfig(epochs=3, batch_size=8),
                       execution=Execution(strategy=strategy))
        runs[name] = {"history": run.history.drop(columns="seconds").to_dict("list"),
                      "lr_table": run.lr_table.to_dict("list"),
                      "distribution": json.loads((run.path / "config.json").read_text())[
                          "distribution"]}

    def one_step(distribution, rules):
        keras.utils.set_random_seed(0)
        scope = distribution.scope() if distribution else __import__("contextlib").nullcontext()
        with scope:
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="a"),
                                      keras.layers.Dense(3, name="b")])
            before = [np.array(w) for w in model.get_weights()]
            model.compile(optimizer=with_lr_multipliers(keras.optimizers.SGD(0.1), model, rules),
                          loss="sparse_categorical_crossentropy")
            x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
            model.fit(x, np.arange(8) % 3, batch_size=8, epochs=1, verbose=0, shuffle=False)
            return [(np.array(w) - b).tolist() for w, b in zip(model.get_weights(), before)]

    data_parallel = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    steps = {"one": one_step(None, {"a": 0.0, "b": 10.0}),
             "two": one_step(data_parallel, {"a": 0.0, "b": 10.0}),
             "two_b1": one_step(data_parallel, {"a": 0.0, "b": 1.0})}
    print(json.dumps({"devices": len(jax.devices()), "runs": runs, "steps": steps}))
""")


@pytest.mark.usefixtures("one_at_a_time")  # two devices on the two cores
def test_training_on_two_logical_devices(tmp_path):
    pytest.importorskip("tensorflow")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(tmp_path / "run"),
                             str(TESTS)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["replicas"] == 2 and metrics["status"] == "completed" and metrics["epochs"] == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["distribution"] == "MirroredStrategy" and config["strategy"] == "MirroredStrategy"


@pytest.mark.usefixtures("one_at_a_time")  # two devices on the two cores
@pytest.mark.slow
def test_jax_with_two_devices_trains_data_parallel_like_one_device(tmp_path):
    import numpy as np

    pytest.importorskip("jax")
    env = jax_env(tmp_path / "jax-cache", xla_flags="--xla_force_host_platform_device_count=2")
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path), str(TESTS)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    one, auto = out["runs"]["one"], out["runs"]["auto"]
    assert one["distribution"] is None and auto["distribution"] == "DataParallel"
    assert one["lr_table"] == auto["lr_table"]  # per-layer rates unchanged by distribution
    assert one["history"]["epoch"] == auto["history"]["epoch"] == [1, 2, 3]
    for column in ("loss", "accuracy", "val_loss", "lr"):
        np.testing.assert_allclose(auto["history"][column], one["history"][column],
                                   rtol=1e-4, atol=1e-5)

    steps = {name: [np.array(delta) for delta in deltas] for name, deltas in out["steps"].items()}
    a_kernel, a_bias, b_kernel, b_bias = steps["two"]
    assert not a_kernel.any() and not a_bias.any()  # multiplier 0: frozen on two devices too
    assert np.abs(b_kernel).max() > 0
    for mine, reference in zip(steps["two"], steps["one"]):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(b_kernel, 10 * steps["two_b1"][2], rtol=1e-4, atol=1e-7)


class FakeTensorFlowConfig:
    """``tf.config`` with GPUs: records memory growth, refuses it once 'initialised'."""

    def __init__(self, gpus=("GPU:0", "GPU:1"), initialised=False):
        self.gpus, self.initialised, self.growth = list(gpus), initialised, {}
        self.experimental = self

    def list_physical_devices(self, kind):
        return list(self.gpus) if kind == "GPU" else ["CPU:0"]

    def set_memory_growth(self, gpu, enable):
        if self.initialised and self.growth.get(gpu) != enable:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.growth[gpu] = enable


@pytest.fixture
def fake_tensorflow(monkeypatch):
    config = FakeTensorFlowConfig()
    monkeypatch.setattr(_device, "_tensorflow_config", lambda: config)
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    monkeypatch.setattr(_device, "_memory_configured", False)
    monkeypatch.delenv(_device.MEMORY_GROWTH_ENV, raising=False)
    return config


def test_memory_growth_is_on_by_default_once_gpus_are_counted(fake_tensorflow, monkeypatch):
    assert _device.gpu_count() == 2
    assert fake_tensorflow.growth == {"GPU:0": True, "GPU:1": True}
    fake_tensorflow.growth.clear()
    assert _device.gpu_count() == 2 and fake_tensorflow.growth == {}  # configured once only


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_the_environment_variable_turns_memory_growth_off(fake_tensorflow, monkeypatch, value):
    monkeypatch.setenv("WORKBENCH_GPU_MEMORY_GROWTH", value)
    assert _device.gpu_count() == 2
    assert fake_tensorflow.growth == {"GPU:0": False, "GPU:1": False}


def test_the_parameter_wins_over_the_environment(fake_tensorflow, monkeypatch):
    monkeypatch.setenv("WORKBENCH_GPU_MEMORY_GROWTH", "0")
    assert _device.configure_gpu_memory(True) is True
    assert fake_tensorflow.growth == {"GPU:0": True, "GPU:1": True}


def test_memory_growth_after_the_gpus_started_warns_and_changes_nothing(fake_tensorflow):
    fake_tensorflow.initialised = True
    with pytest.warns(RuntimeWarning, match="configure_gpu_memory"):
        assert _device.configure_gpu_memory(True) is None
    assert fake_tensorflow.growth == {}


def test_bad_memory_growth_settings_are_refused(fake_tensorflow, monkeypatch):
    with pytest.raises(ValueError, match="growth must be True, False or None, received: 'yes'"):
        _device.configure_gpu_memory("yes")
    monkeypatch.setenv("WORKBENCH_GPU_MEMORY_GROWTH", "maybe")
    with pytest.raises(ValueError, match="WORKBENCH_GPU_MEMORY_GROWTH must be one of"):
        _device.configure_gpu_memory()


def test_nothing_to_configure_without_gpus_or_on_jax(fake_tensorflow, monkeypatch):
    fake_tensorflow.gpus = []
    assert _device.configure_gpu_memory() is None
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _device.configure_gpu_memory(True) is None
    assert fake_tensorflow.growth == {}
