"""Training on several machines: the launcher's environment, each worker's part of every batch,
and two real worker processes on 127.0.0.1 (JAX on the CPU) against one process."""

import json
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import tiny_data
from jax_env import jax_env
from workbench import _cluster
from workbench.data.pipeline import Batches
from workbench.data.split import prepare

TRAIN = ["--backbone", "cifar_cnn", "--weights", "none", "--recipe", "caffe", "--image-size",
         "16", "--epochs", "3", "--batch-size", "8", "--seed", "1", "--augment", "off"]


def test_a_torchrun_style_launch_is_read():
    env = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "node7", "MASTER_PORT": "1234"}
    cluster = _cluster.from_environment(env)
    assert cluster == _cluster.Cluster(1, 4, "node7:1234", "torchrun") and not cluster.chief
    assert _cluster.from_environment({**env, "RANK": "0", "MASTER_PORT": ""}).coordinator == \
        f"node7:{_cluster.DEFAULT_PORT}"


def test_a_slurm_launch_is_read_with_its_compact_node_list():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_STEP_NODELIST": "gpu[07-09,12]"}
    cluster = _cluster.from_environment(env)
    assert cluster == _cluster.Cluster(0, 8, f"gpu07:{_cluster.DEFAULT_PORT}", "slurm")
    assert cluster.chief
    assert _cluster.expand_nodelist("a[1-3],login,b[08-10]") == \
        ["a1", "a2", "a3", "login", "b08", "b09", "b10"]


@pytest.mark.parametrize("env, message", [
    ({}, "--distributed needs a launcher: start one process per worker with srun"),
    ({"RANK": "4", "WORLD_SIZE": "4", "MASTER_ADDR": "h"}, "rank must be in [0, 4) for 4 "
                                                          "workers, received: 4"),
    ({"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "RANK must be an integer"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST)"),
])
def test_a_launch_that_cannot_work_is_named(env, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        _cluster.from_environment(env)


def test_tensorflow_says_it_trains_on_one_machine_only():
    with pytest.raises(ValueError, match=r"runs on the JAX backend .*tensorflow/tensorflow#72388"):
        _cluster.start("tensorflow", _cluster.Cluster(0, 2, "h:1", "torchrun"))


def test_the_shards_of_a_batch_are_the_batch():
    images = np.arange(11 * 2 * 2 * 3, dtype=np.uint8).reshape(11, 2, 2, 3)
    labels = np.arange(11)
    whole = Batches(images, labels, batch_size=4, seed=3, drop_remainder=True)
    parts = [Batches(images, labels, batch_size=4, seed=3, drop_remainder=True, shard=(k, 2))
             for k in range(2)]
    for index in range(whole.steps_per_epoch):
        x, y = whole.batch(1, index)
        (x0, y0), (x1, y1) = (part.batch(1, index) for part in parts)
        assert len(y0) == len(y1) == 2
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
        np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
    with pytest.raises(ValueError, match="batch_size must be a multiple of the 3 shards"):
        Batches(images, labels, batch_size=4, drop_remainder=True, shard=(0, 3))
    with pytest.raises(ValueError, match="shard must be"):
        Batches(images, labels, batch_size=4, drop_remainder=True, shard=(2, 2))


def test_padded_evaluation_batches_average_to_the_real_images():
    images, labels = np.zeros((11, 2, 2, 3), np.uint8), np.arange(11)  # label = image index
    parts = [Batches(images, labels, batch_size=4, shuffle=False, pad_to=4, shard=(k, 2))
             for k in range(2)]
    batches = [[np.concatenate(a) for a in zip(*(part.batch(0, i) for part in parts))][1:]
               for i in range(3)]  # (labels, weights) of each whole batch
    assert [len(y) for y, _ in batches] == [4, 4, 4]  # the last of 3 images padded with 1
    np.testing.assert_array_equal(batches[2][0], [8, 9, 10, 8])
    np.testing.assert_allclose(batches[2][1], [12 / 11] * 3 + [0])
    # Keras averages each batch's weighted sum / batch size, weighted by the batch size: with
    # the real images weighing 12/11 that is the plain mean over the 11 images
    values = np.random.default_rng(0).normal(size=11)
    averaged = sum(np.sum(w * values[y]) for y, w in batches) / sum(len(y) for y, _ in batches)
    assert averaged == pytest.approx(values.mean())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.usefixtures("one_at_a_time")  # ports and timeouts
@pytest.mark.slow
def test_two_workers_train_like_one_process(tmp_path):
    pytest.importorskip("jax")
    tiny_data.write_digits(tmp_path / "data", per_class=10)
    next((tmp_path / "data" / "0").iterdir()).unlink()  # 39 validation images: padded batches
    prepare(tmp_path / "data", tmp_path / "splits", counts=(4, "rest", 2), progress="none")
    env = jax_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    command = [sys.executable, "-m", "workbench.cli", "train", "--splits",
               str(tmp_path / "splits"), *TRAIN]
    scratch = tmp_path / "scratch"  # worker 1's temporary folder
    scratch.mkdir()
    workers = [subprocess.Popen([*command, "--run-dir", str(tmp_path / "two"), "--distributed"],
                                env={**env, "RANK": str(rank), "TMPDIR": str(scratch)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for rank in (0, 1)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][1][-3000:]
    assert "status completed" in outputs[0][0] and "2 workers" in outputs[0][0]
    assert "status" not in outputs[1][0] and "Run directory" not in outputs[1][0]  # one report
    one = subprocess.run([*command, "--run-dir", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    two_run, one_run = tmp_path / "two", tmp_path / "one"
    config = json.loads((two_run / "config.json").read_text())
    assert (config["strategy"], config["distribution"], config["workers"]) == \
        ("distributed", "DataParallel", 2)
    two, one = (pd.read_csv(run / "history.csv") for run in (two_run, one_run))
    assert list(two["epoch"]) == [1, 2, 3]
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "val_top5", "lr"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-4, atol=1e-5)
    pd.testing.assert_frame_equal(pd.read_csv(two_run / "lr_table.csv"),
                                  pd.read_csv(one_run / "lr_table.csv"))
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (two_run, one_run)]
    assert metrics[0]["val_accuracy"] == pytest.approx(metrics[1]["val_accuracy"], abs=1e-6)
    assert metrics[0]["val_images"] == 39
    assert not list(scratch.glob("workbench-worker*"))  # worker 1 wrote only to scratch, gone


def _worker_command(tmp_path, port, size, rank, *extra):
    env = jax_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(size),
                  RANK=str(rank), TMPDIR=str(tmp_path))
    return [sys.executable, "-m", "workbench.cli", "train", "--splits", str(tmp_path / "splits"),
            "--run-dir", str(tmp_path / "run"), *TRAIN, "--distributed", *extra], env


@pytest.mark.usefixtures("one_at_a_time")  # ports and timeouts
def test_workers_meet_at_worker_0_and_a_wrong_one_is_refused():
    import threading

    port = _free_port()
    results = {}

    def chief():
        results[0] = _cluster._meet(_cluster.Cluster(0, 2, f"127.0.0.1:{port}", "torchrun"),
                                    "127.0.0.1", port, 20)

    thread = threading.Thread(target=chief)
    thread.start()
    with pytest.raises(_cluster.ClusterError, match="started for 3 workers, worker 0 for 2"):
        _cluster._meet(_cluster.Cluster(1, 3, f"127.0.0.1:{port}", "torchrun"), "127.0.0.1",
                       port, 20)
    peers, runtime_port = _cluster._meet(_cluster.Cluster(1, 2, f"127.0.0.1:{port}",
                                                          "torchrun"), "127.0.0.1", port, 20)
    thread.join(timeout=30)
    assert list(peers) == [0] and list(results[0][0]) == [1]
    assert results[0][1] == runtime_port != port  # JAX's service gets a port of its own
    for sock in [*peers.values(), *results[0][0].values()]:
        sock.close()


@pytest.mark.usefixtures("one_at_a_time")  # ports and timeouts
def test_a_lone_worker_says_whom_it_waits_for_and_gives_up_after_the_join_timeout(tmp_path):
    pytest.importorskip("jax")
    command, env = _worker_command(tmp_path, _free_port(), 2, 0, "--join-timeout", "5")
    tiny_data.write_splits(tmp_path, per_class=4, counts=(2, 1, 1))
    worker = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    first = worker.stdout.readline()
    assert worker.poll() is None  # said while waiting, not on the way out
    assert first.startswith("waiting for worker 1 of 2 at 127.0.0.1:") and "5 s" in first
    _, stderr = worker.communicate(timeout=180)
    assert worker.returncode == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: worker 1 of 2 did not join at "
                                                   "127.0.0.1:"), stderr


@pytest.mark.usefixtures("one_at_a_time")  # ports and timeouts
@pytest.mark.slow
def test_a_survivor_leaves_at_once_with_the_resume_command_when_a_worker_is_killed(tmp_path):
    pytest.importorskip("jax")
    import re
    import signal
    import time

    tiny_data.write_splits(tmp_path, per_class=10, counts=(4, 2, 4))
    port = _free_port()
    workers = []
    for rank in (0, 1):
        command, env = _worker_command(tmp_path, port, 2, rank)
        command[command.index("--epochs") + 1] = "500"  # the run must outlast the kill
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 480
        lines = []
        while not any(line.startswith("epoch 1/") for line in lines) \
                and time.monotonic() < deadline and workers[0].poll() is None:
            lines.append(workers[0].stdout.readline())
        assert any(line.startswith("epoch 1/") for line in lines), lines
        workers[1].send_signal(signal.SIGKILL)
        _, stderr = workers[0].communicate(timeout=60)  # JAX alone would take 100 s and abort
    finally:
        for worker in workers:
            worker.kill()
    assert workers[0].returncode == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: worker 1 of 2 stopped during the "
                                                     "run"), stderr[-3000:]
    assert errors[0].endswith("--distributed --resume")
    assert not [line for line in stderr.splitlines() if re.match(r"[EF]\d{4} ", line)]
    assert list((tmp_path / "run").glob("checkpoint-*.keras"))  # the last checkpoint is kept
