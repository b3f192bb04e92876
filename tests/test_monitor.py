"""workbench.monitor: the sampling thread, resources.csv, the summary, the dashboard, the CLI verbs.

The GPU path runs against a fake NVML module (this machine has no GPU); the no-GPU path makes the
NVML import fail. Sampling intervals are 0.05 s; waits poll the file or the row counter with a
generous deadline and never assert on time.
"""

import csv
import io
import sys
import threading
import time
import warnings
from types import SimpleNamespace

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from workbench import monitor, plots
from workbench.cli import main
from workbench.runs import RunDir

INTERVAL = 0.05
GIB = 1024 ** 3


class FakeNVML:
    """The part of pynvml the monitor uses, with scripted values (memory in bytes, power in mW)."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    class NVMLError(Exception):
        pass

    def __init__(self, gpus=2, unsupported=()):
        self.gpus, self.unsupported = gpus, set(unsupported)  # {(query name, gpu index)}
        self.inits = self.shutdowns = 0

    def _check(self, query, handle):
        if (query, handle[1]) in self.unsupported:
            raise self.NVMLError("Not Supported")

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetName(self, handle):
        name = f"Fake GPU {handle[1]}"
        return name.encode() if handle[1] else name  # older bindings return bytes

    def nvmlDeviceGetUtilizationRates(self, handle):
        self._check("util", handle)
        return SimpleNamespace(gpu=40 + 10 * handle[1], memory=7)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._check("memory", handle)
        used = (2 + handle[1]) * GIB
        return SimpleNamespace(total=16 * GIB, used=used, free=16 * GIB - used)

    def nvmlDeviceGetPowerUsage(self, handle):
        self._check("power", handle)
        return 150_000

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        self._check("limit", handle)
        return 300_000

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        self._check("temperature", handle)
        return 65

    def nvmlDeviceGetClockInfo(self, handle, clock):
        assert clock == self.NVML_CLOCK_SM
        self._check("clock", handle)
        return 1980


@pytest.fixture()
def fake_nvml(monkeypatch):
    fake = FakeNVML()
    monkeypatch.setattr(monitor, "_import_nvml", lambda: fake)
    return fake


@pytest.fixture()
def no_nvml(monkeypatch):
    def fail():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(monitor, "_import_nvml", fail)


def wait_until(condition, what, deadline=20.0):
    """Polls ``condition`` (a liveness guard, not a speed check)."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def data_lines(path):
    return path.read_text().splitlines()[1:] if path.exists() else []


def sampler_threads():
    return [t for t in threading.enumerate() if t.name.startswith("ResourceMonitor(")]


# --- recording ---------------------------------------------------------------------------------

def test_rows_are_written_while_running_with_gpu_columns_from_nvml(tmp_path, fake_nvml):
    path = tmp_path / "run" / "resources.csv"
    mon = monitor.ResourceMonitor(path, interval=INTERVAL)
    with mon:
        wait_until(lambda: len(data_lines(path)) >= 6, "three samples of two GPUs")
        frame = monitor.read_resources(path)  # read before stopping: rows were flushed
        assert mon.running and mon.gpu_reason == ""
    assert not mon.running and not sampler_threads()
    assert list(frame.columns) == list(monitor.COLUMNS)
    assert len(frame) >= 6
    assert (frame.groupby("elapsed_s")["gpu"].apply(sorted) == pd.Series(
        [[0, 1]] * frame["elapsed_s"].nunique(), index=sorted(frame["elapsed_s"].unique()))).all()
    gpu1 = frame[frame["gpu"] == 1].iloc[0]
    assert gpu1["gpu_name"] == "Fake GPU 1"
    assert gpu1["gpu_util_percent"] == 50
    assert gpu1["gpu_memory_used_mib"] == 3072 and gpu1["gpu_memory_total_mib"] == 16384
    assert gpu1["gpu_power_w"] == 150 and gpu1["gpu_power_limit_w"] == 300
    assert gpu1["gpu_temperature_c"] == 65 and gpu1["gpu_sm_clock_mhz"] == 1980
    assert frame["ram_total_mib"].gt(0).all() and frame["process_rss_mib"].gt(0).all()
    assert frame["time"].dt.tz is not None and frame["elapsed_s"].is_monotonic_increasing
    assert frame["session"].eq(0).all() and frame["epoch"].isna().all()
    first = frame["elapsed_s"] == frame["elapsed_s"].min()
    assert frame.loc[first, "cpu_percent"].isna().all()  # no interval to measure over yet
    assert frame.loc[~first, "cpu_percent"].between(0, 100).all()
    assert fake_nvml.inits == fake_nvml.shutdowns >= 1
    assert len(monitor.read_resources(path)) == mon.rows  # the final sample is in the file


def test_an_unsupported_nvml_query_leaves_only_its_column_empty(tmp_path, monkeypatch):
    fake = FakeNVML(gpus=1, unsupported={("power", 0), ("temperature", 0)})
    monkeypatch.setattr(monitor, "_import_nvml", lambda: fake)
    path = tmp_path / "resources.csv"
    with monitor.ResourceMonitor(path, interval=INTERVAL):
        wait_until(lambda: len(data_lines(path)) >= 2, "two samples")
    frame = monitor.read_resources(path)
    assert frame["gpu_power_w"].isna().all() and frame["gpu_temperature_c"].isna().all()
    assert frame["gpu_power_limit_w"].eq(300).all() and frame["gpu_util_percent"].eq(40).all()


def test_the_file_is_intact_after_an_exception_inside_the_context(tmp_path, fake_nvml):
    path = tmp_path / "resources.csv"
    mon = monitor.ResourceMonitor(path, interval=INTERVAL)
    with pytest.raises(KeyError, match="boom"):
        with mon:
            wait_until(lambda: len(data_lines(path)) >= 4, "two samples")
            raise KeyError("boom")
    assert not mon.running and not sampler_threads() and mon.error is None
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == list(monitor.COLUMNS)
    assert all(len(row) == len(monitor.COLUMNS) for row in rows)
    assert len(rows) - 1 == mon.rows
    assert fake_nvml.inits == fake_nvml.shutdowns


def test_without_a_gpu_it_records_cpu_and_ram_and_warns_once(tmp_path, no_nvml):
    path = tmp_path / "resources.csv"
    mon = monitor.ResourceMonitor(path, interval=INTERVAL)
    with pytest.warns(RuntimeWarning, match="no GPU found .*pynvml.*CPU and RAM only"):
        mon.start()
    wait_until(lambda: len(data_lines(path)) >= 3, "three samples")
    mon.stop()
    assert "pynvml" in mon.gpu_reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: a second start stays quiet
        mon.start().stop()
    frame = monitor.read_resources(path)
    assert frame["gpu"].isna().all() and frame["gpu_util_percent"].isna().all()
    assert not frame.duplicated(["session", "elapsed_s"]).any()  # one row per sample
    assert frame["ram_used_mib"].gt(0).all() and frame["process_rss_mib"].gt(0).all()
    assert set(frame["session"]) == {0, 1}


def test_nvml_that_fails_to_start_or_finds_no_gpu_is_the_no_gpu_path(tmp_path, monkeypatch):
    class Broken(FakeNVML):
        def nvmlInit(self):
            raise self.NVMLError("Driver Not Loaded")

    for fake, reason in ((Broken(), "Driver Not Loaded"), (FakeNVML(gpus=0), "0 GPUs")):
        monkeypatch.setattr(monitor, "_import_nvml", lambda fake=fake: fake)
        mon = monitor.ResourceMonitor(tmp_path / "r.csv", interval=INTERVAL)
        with pytest.warns(DeprecationWarning, match="gpu_available is deprecated"):
            assert mon.gpu_available is False and reason in mon.gpu_reason
    assert fake.inits == fake.shutdowns == 1  # NVML started for zero GPUs is shut down again


def test_starting_twice_and_stopping_without_start(tmp_path, fake_nvml):
    path = tmp_path / "resources.csv"
    mon = monitor.ResourceMonitor(path, interval=INTERVAL)
    assert mon.stop() is mon and not path.exists()  # stop before start: nothing happens
    mon.start()
    assert mon.start() is mon and len(sampler_threads()) == 1
    wait_until(lambda: len(data_lines(path)) >= 2, "a sample")
    mon.stop()
    mon.stop()
    assert not sampler_threads()
    with mon:  # a stopped monitor starts again and appends the next session
        wait_until(lambda: monitor.read_resources(path)["session"].max() == 1, "session 1")
    text = path.read_text()
    assert text.count("time,elapsed_s") == 1
    frame = monitor.read_resources(path)
    assert frame["elapsed_s"].is_monotonic_increasing  # elapsed_s runs on over restarts
    assert monitor.ResourceMonitor(path)._next_session() == 2  # a new monitor appends session 2


@pytest.mark.parametrize("interval", [0, -1, "1", None, float("nan")])
def test_a_bad_interval_names_itself(tmp_path, interval):
    with pytest.raises(ValueError, match=r"interval must be .*received: "):
        monitor.ResourceMonitor(tmp_path / "r.csv", interval=interval)


def test_bad_paths_and_foreign_files_are_refused(tmp_path, fake_nvml):
    with pytest.raises(ValueError, match="path must be a file path .*received: 3"):
        monitor.ResourceMonitor(3)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header differs.*other.csv"):
        monitor.ResourceMonitor(other).start()
    assert other.read_text() == "a,b\n1,2\n" and not sampler_threads()


def test_importing_the_module_does_not_import_keras():
    import subprocess

    code = ("import sys, workbench.monitor as m; assert 'keras' not in sys.modules; "
            "assert 'pynvml' not in sys.modules; m.ResourceMonitor(sys.argv[0]); assert 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_epoch_and_step_come_from_the_keras_hooks_over_two_fits(tmp_path, no_nvml):
    import keras

    from workbench.training.callbacks import MonitorResources

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    path = tmp_path / "resources.csv"
    mon = monitor.ResourceMonitor(path, interval=INTERVAL)
    hooks = MonitorResources(mon)

    class WaitForSamples(keras.callbacks.Callback):
        """Holds each batch until two more rows are written, so each step is sampled."""

        def on_train_batch_end(self, batch, logs=None):
            rows = mon.rows
            wait_until(lambda: mon.rows >= rows + 2, "two samples after a batch")

    with pytest.warns(RuntimeWarning, match="no GPU found"):
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[hooks, WaitForSamples()])
    assert not mon.running and mon.epoch is None
    model.fit(x, y, batch_size=8, initial_epoch=2, epochs=3, verbose=0,
              callbacks=[hooks, WaitForSamples()])  # stage two: appended
    frame = monitor.read_resources(path)
    seen = set(zip(frame["session"], frame["epoch"], frame["step"]))
    expected = {(0, e, s) for e in (1, 2) for s in (1, 2, 3, 4)} | {(1, 3, s) for s in range(1, 5)}
    assert expected <= {(int(a), int(b), int(c)) for a, b, c in seen if not pd.isna(b)}
    assert frame["epoch"].dropna().isin([1, 2, 3]).all()
    assert path.read_text().count("time,elapsed_s") == 1
    last = frame[frame["session"] == 0].iloc[-1]
    assert (last["epoch"], last["step"]) == (2, 4)  # the final sample is taken at on_train_end


# --- reading and summarising -------------------------------------------------------------------

def hand_made(seconds=range(0, 37, 4), power=100.0, gpus=(0,), session=0, epoch_every=None):
    rows = []
    for t in seconds:
        for gpu in gpus or (pd.NA,):  # no GPUs: one row per sample
            rows.append({"time": pd.Timestamp("2025-01-01T00:00:00Z") + pd.Timedelta(seconds=t),
                         "elapsed_s": float(t), "session": session,
                         "epoch": (t // epoch_every + 1) if epoch_every else pd.NA, "step": pd.NA,
                         "gpu": gpu, "gpu_name": f"G{gpu}",
                         "gpu_util_percent": 50.0 + 10 * (gpu if gpus else 0),
                         "gpu_memory_used_mib": 1000.0 + t, "gpu_memory_total_mib": 8000.0,
                         "gpu_power_w": power, "gpu_power_limit_w": 250.0,
                         "gpu_temperature_c": 60.0 + t / 10, "gpu_sm_clock_mhz": 1500.0,
                         "process_cpu_percent": 20.0, "cpu_percent": 40.0 + t % 8,
                         "process_rss_mib": 500.0 + t, "ram_used_mib": 4000.0 + t,
                         "ram_total_mib": 16000.0})
    frame = pd.DataFrame(rows, columns=monitor.COLUMNS)
    if not gpus:
        gpu_columns = [c for c in monitor.COLUMNS if c.startswith("gpu")]
        frame[gpu_columns] = np.nan
    return frame


def test_summary_energy_of_100_w_for_36_s_is_one_wh():
    summary = monitor.summarize_resources(hand_made(), images=720)
    assert summary["gpu_energy_wh"] == pytest.approx(1.0)
    assert summary["duration_s"] == 36 and summary["samples"] == 10
    assert summary["images_per_second"] == pytest.approx(20.0)
    assert summary["gpu_memory_peak_mib"] == 1036 and summary["gpu_memory_total_mib"] == 8000
    assert summary["gpu_util_mean_percent"] == 50 and summary["gpu_power_mean_w"] == 100
    assert summary["process_rss_peak_mib"] == 536 and summary["ram_used_peak_mib"] == 4036
    assert summary["cpu_mean_percent"] == pytest.approx(np.mean([40 + t % 8 for t in
                                                                  range(0, 37, 4)]))
    assert summary["gpus"] == 1 and summary["gpu_temperature_max_c"] == pytest.approx(63.6)


def test_summary_sums_gpus_and_sessions_without_bridging_the_gap():
    frame = pd.concat([hand_made(gpus=(0, 1)),
                       hand_made(seconds=range(100, 137, 4), gpus=(0, 1), session=1)],
                      ignore_index=True)
    summary = monitor.summarize_resources(frame)
    assert summary["gpu_energy_wh"] == pytest.approx(4.0)  # 2 GPUs x 2 sessions x 1 Wh
    assert summary["duration_s"] == 72 and summary["samples"] == 20 and summary["gpus"] == 2
    assert summary["gpu_util_mean_percent"] == 55 and "images_per_second" not in summary


def test_summary_without_gpu_and_bad_arguments():
    summary = monitor.summarize_resources(hand_made(gpus=()))
    assert summary["gpus"] == 0 and summary["gpu_energy_wh"] is None
    assert summary["gpu_memory_peak_mib"] is None and summary["ram_used_peak_mib"] == 4036
    with pytest.raises(ValueError, match="images must be >= 0, received: -1"):
        monitor.summarize_resources(hand_made(), images=-1)
    with pytest.raises(ValueError, match="frame must be a DataFrame .*received: list"):
        monitor.summarize_resources([1, 2])


def test_read_resources_drops_a_cut_line_and_names_a_missing_file(tmp_path, fake_nvml):
    path = tmp_path / "resources.csv"
    with monitor.ResourceMonitor(path, interval=INTERVAL) as mon:
        wait_until(lambda: len(data_lines(path)) >= 2, "a sample")
    with open(path, "a") as file:
        file.write("2025-01-01T00:00:00.000+00:00,9.5,0,,,0,Fake")  # killed mid-row
    with pytest.warns(DeprecationWarning, match="RunDir"):  # a folder: for one more release
        frame = monitor.read_resources(tmp_path)
    assert len(frame) == mon.rows
    with mon:  # a resumed run appends after the cut row, not onto it
        wait_until(lambda: mon.rows > len(frame), "a sample")
    assert len(monitor.read_resources(path)) == mon.rows
    assert set(monitor.read_resources(path)["session"]) == {0, 1}
    with pytest.raises(FileNotFoundError, match="received: .*nowhere"):
        monitor.read_resources(tmp_path / "nowhere")


# --- dashboard ---------------------------------------------------------------------------------

def visible(ax):
    return [line for line in ax.lines if not line.get_label().startswith("_")]


def epoch_lines(ax):
    return [line for line in ax.lines if line.get_label().startswith("_epoch")]


def test_dashboard_with_two_gpus_two_sessions_and_epochs():
    frame = pd.concat([hand_made(gpus=(0, 1), epoch_every=16),
                       hand_made(seconds=range(60, 97, 4), gpus=(0, 1), session=1,
                                 epoch_every=1000)], ignore_index=True)
    figure = plots.resource_dashboard(frame)
    axes = figure.axes
    assert len(axes) == 5
    assert [ax.get_ylabel() for ax in axes] == ["GPU util %", "MiB", "W", "CPU %", "MiB"]
    assert [ax.get_title() for ax in axes] == ["GPU utilisation", "GPU memory", "GPU power",
                                               "CPU (% of all cores)", "Host memory (RAM)"]
    util, memory, power, cpu, ram = axes
    assert [l.get_label() for l in visible(util)] == ["GPU 0 G0", "GPU 1 G1"]
    assert len(visible(memory)) == 4 and len(visible(power)) == 4
    assert [l.get_linestyle() for l in visible(memory)] == ["-", "--", "-", "--"]
    assert "GPU 0 G0 limit" in [l.get_label() for l in visible(power)]
    assert [l.get_label() for l in visible(cpu)] == ["system", "process"]
    assert [l.get_label() for l in visible(ram)] == ["system used", "system total",
                                                      "process RSS"]
    # epochs 1, 2, 3 start at 0 s, 16 s, 32 s; session 1 starts epoch 1 again at 60 s
    assert all(len(epoch_lines(ax)) == 4 for ax in axes)
    assert [l.get_xdata()[0] for l in epoch_lines(util)] == [0, 16, 32, 60]
    assert np.isnan(visible(util)[0].get_xdata()).sum() == 1  # no line across the gap
    assert all(ax.get_shared_x_axes().joined(axes[0], ax) for ax in axes)
    assert "2 GPU" in figure.get_suptitle()
    figure.savefig(io.BytesIO(), format="png")  # draws under Agg


def test_dashboard_without_gpu_and_with_history(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.0, 0.6, 0.4],
                            "val_loss": [1.1, 0.8, 0.7], "accuracy": [0.5, 0.7, 0.8],
                            "val_accuracy": [0.4, 0.6, 0.65]})
    figure = plots.resource_dashboard(hand_made(gpus=()), history=history)
    assert len(figure.axes) == 4
    cpu, ram, loss, accuracy = figure.axes
    assert cpu.get_ylabel() == "CPU %" and ram.get_ylabel() == "MiB"
    assert "no GPU" in figure.get_suptitle()
    assert [l.get_label() for l in loss.lines] == ["train", "val"]
    assert list(accuracy.lines[1].get_ydata()) == [0.4, 0.6, 0.65]
    assert accuracy.get_xlabel() == "epoch" and loss.get_title() == "Training loss"
    frame = hand_made()
    frame.astype({"time": str}).to_csv(tmp_path / "resources.csv", index=False)
    assert len(plots.resource_dashboard(monitor.read_resources(
        tmp_path / "resources.csv")).axes) == 5
    with pytest.raises(ValueError, match="history must be .*without \\['accuracy'\\]"):
        plots.resource_dashboard(frame, history=history.drop(columns="accuracy"))
    with pytest.raises(ValueError, match="frame must hold rows .*0 rows"):
        plots.resource_dashboard(frame.iloc[:0])


# --- command line ------------------------------------------------------------------------------

def test_cli_monitor_records_a_command_and_returns_its_status(tmp_path, no_nvml, capsys):
    out = tmp_path / "mon"
    code = "import time; time.sleep(0.3)"
    with pytest.warns(RuntimeWarning, match="no GPU found"):
        assert main(["monitor", "--out", str(out), "--interval", str(INTERVAL), "--",
                     sys.executable, "-c", code]) == 0
    frame = monitor.read_resources(out / "resources.csv")
    assert len(frame) >= 3 and frame["process_rss_mib"].notna().any()
    assert "exit status 0" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning):
        assert main(["monitor", "--out", str(out), "--interval", str(INTERVAL), "--",
                     sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    assert set(RunDir(out).resources["session"]) == {0, 1}


def test_cli_monitor_errors(tmp_path, no_nvml, capsys):
    out = str(tmp_path / "mon")
    assert main(["monitor", "--out", out]) == 2
    assert "a command to run is required" in capsys.readouterr().err
    assert main(["monitor", "--out", out, "--interval", "0", "--", "true"]) == 2
    assert "must be > 0, received: '0'" in capsys.readouterr().err
    assert main(["monitor", "--out", out, "--", str(tmp_path / "no-such-program")]) == 127
    assert "command not found" in capsys.readouterr().err


def test_cli_plot_resources_draws_next_to_history(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    hand_made(epoch_every=12).astype({"time": str}).to_csv(run / "resources.csv", index=False)
    pd.DataFrame({"epoch": [1, 2, 3], "stage": "head", "loss": [1.0, 0.7, 0.5],
                  "accuracy": [0.5, 0.6, 0.7], "val_loss": [1.1, 0.9, 0.8],
                  "val_accuracy": [0.4, 0.5, 0.6]}).to_csv(run / "history.csv", index=False)
    drawn = []
    real = plots.resource_dashboard
    monkeypatch.setattr(plots, "resource_dashboard",
                        lambda frame, **kw: drawn.append(real(frame, **kw)) or drawn[-1])
    assert main(["plot-resources", str(run)]) == 0
    assert (run / "resources.png").read_bytes()[:4] == b"\x89PNG"
    assert len(drawn[0].axes) == 7  # five resource panels and the two training curves
    assert "gpu_energy_wh 1.0" in capsys.readouterr().out
    # where --out puts the figure: a one-axes stand-in for the dashboard, whose seven panels
    # were drawn and checked above
    small = matplotlib.figure.Figure(figsize=(1, 1))
    small.add_subplot()
    monkeypatch.setattr(plots, "resource_dashboard",
                        lambda frame, **kw: drawn.append(frame) or small)
    assert main(["plot-resources", str(run), "--out", str(tmp_path / "x" / "d.png")]) == 0
    assert (tmp_path / "x" / "d.png").read_bytes()[:4] == b"\x89PNG" and len(drawn) == 2
    assert main(["plot-resources", str(tmp_path / "empty")]) == 2
    assert "RUN_DIR must hold resources.csv" in capsys.readouterr().err
