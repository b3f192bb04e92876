"""Training under a tf.distribute strategy, on two logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so the run happens in a fresh
interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[3])
    import tiny_data
    from workbench.data.split import prepare
    from workbench.training.solver import SolverConfig
    from workbench.training.options import Execution
    from workbench.training.train import finetune

    work = sys.argv[1]
    tiny_data.write_digits(__import__("pathlib").Path(work) / "data", per_class=8)
    prepare(work + "/data", work + "/splits", counts=(4, "rest", 2), progress=False)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    run = finetune(work + "/splits", sys.argv[2], backbone="cifar_cnn", weights=None,
                   recipe="caffe", image_size=16, solver=SolverConfig(epochs=2, batch_size=8),
                   execution=Execution(strategy=strategy), progress="none")
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, **run.metrics}))
""")


def test_training_on_two_logical_devices(tmp_path):
    pytest.importorskip("tensorflow")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    tests = Path(__file__).parent
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(tmp_path / "run"),
                             str(tests)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["replicas"] == 2 and metrics["status"] == "completed" and metrics["epochs"] == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["distribution"] == "MirroredStrategy" and config["strategy"] == "MirroredStrategy"
