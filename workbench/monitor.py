"""An nvidia-smi-style resource monitor: GPU, CPU and RAM sampled in a background thread.

:class:`ResourceMonitor` appends one row per sample per GPU to a CSV file (``resources.csv`` in a
run directory) and flushes every row, so a crash keeps what was measured. It is a context manager
and, through ``workbench.training.callbacks.MonitorResources``, a Keras callback that starts
at ``on_train_begin``, stops at ``on_train_end`` and records the current epoch and step::

    with ResourceMonitor("resources.csv", interval=0.5):   # any code, not only Keras
        run_something()
    summarize_resources(read_resources("resources.csv"), images=n_images)

GPU figures come from NVML (the ``pynvml`` module of nvidia-ml-py); CPU and RAM from psutil.
Without a GPU or NVML the monitor records CPU and RAM, warns once and says why in
``gpu_reason``. This module never imports Keras; NVML is imported when sampling
starts.

Columns of ``resources.csv`` (:data:`COLUMNS`; empty where a value is unknown):

* ``time``: wall-clock timestamp (ISO 8601 with UTC offset); ``elapsed_s``: seconds since this
  monitor first started (monotonic clock); ``session``: 0 for the first start of a file, +1 for
  every later start that appends to it (e.g. the second stage of a two-stage recipe, or a
  resumed run).
* ``epoch`` (Keras epoch index + 1) and ``step`` (batches finished in that epoch), set by the
  training callback; empty outside ``fit``.
* ``gpu`` (NVML index), ``gpu_name``, ``gpu_util_percent``, ``gpu_memory_used_mib``,
  ``gpu_memory_total_mib``, ``gpu_power_w``, ``gpu_power_limit_w``, ``gpu_temperature_c``,
  ``gpu_sm_clock_mhz``: one row per GPU per sample; empty when there is no GPU (one row per
  sample) or when the GPU does not support that query.
* ``process_cpu_percent`` (the monitored process, and its children for
  :func:`monitor_command`, as a percentage of all CPU cores, so on the same 0-100 scale as
  ``cpu_percent``); ``cpu_percent`` (the whole system); both empty on the first row of a
  session, which has no interval to measure over.
* ``process_rss_mib`` (resident memory of the monitored process tree), ``ram_used_mib`` (total
  minus available, as ``free`` reports it) and ``ram_total_mib``.
"""

from __future__ import annotations

import csv
import datetime
import logging
import math
import os
import subprocess
import threading
import time
import warnings
from pathlib import Path

from workbench._checks import UsageError, check_int, check_number, deprecated, one_line
from workbench._io import run_file

__all__ = ["COLUMNS", "ResourceMonitor", "monitor_command", "read_resources", "summarize_resources"]

logger = logging.getLogger(__name__)

COLUMNS = (
    "time", "elapsed_s", "session", "epoch", "step",
    "gpu", "gpu_name", "gpu_util_percent", "gpu_memory_used_mib", "gpu_memory_total_mib",
    "gpu_power_w", "gpu_power_limit_w", "gpu_temperature_c", "gpu_sm_clock_mhz",
    "process_cpu_percent", "cpu_percent", "process_rss_mib", "ram_used_mib", "ram_total_mib",
)

_MIB = 1024 * 1024
_GPU_COLUMNS = COLUMNS[5:14]
_HOST_COLUMNS = COLUMNS[14:]


# --- hardware queries: one small function each, so tests can swap in a fake ------------------

def _import_nvml():
    """Returns the NVML bindings module (``pynvml`` from nvidia-ml-py).

    Raises:
        ImportError: nvidia-ml-py is not installed.
    """
    import pynvml

    return pynvml


def _gpu_sample(nvml, handle) -> dict:
    """Reads one GPU's figures now; a query the GPU does not support gives None.

    Args:
        nvml: the NVML bindings module.
        handle: a device handle from ``nvmlDeviceGetHandleByIndex``.

    Returns:
        The ``gpu_*`` values (without ``gpu`` and ``gpu_name``) in nvidia-smi units.
    """
    def read(query, *args):
        try:
            return query(handle, *args)
        except nvml.NVMLError:  # NOT_SUPPORTED on some boards, GPU_IS_LOST, ...
            return None

    util = read(nvml.nvmlDeviceGetUtilizationRates)
    memory = read(nvml.nvmlDeviceGetMemoryInfo)
    power = read(nvml.nvmlDeviceGetPowerUsage)              # milliwatts
    limit = read(nvml.nvmlDeviceGetEnforcedPowerLimit)      # milliwatts
    return {
        "gpu_util_percent": None if util is None else float(util.gpu),
        "gpu_memory_used_mib": None if memory is None else memory.used / _MIB,
        "gpu_memory_total_mib": None if memory is None else memory.total / _MIB,
        "gpu_power_w": None if power is None else power / 1000.0,
        "gpu_power_limit_w": None if limit is None else limit / 1000.0,
        "gpu_temperature_c": read(nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU),
        "gpu_sm_clock_mhz": read(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
    }


def _host_sample(processes: list) -> dict:
    """Reads CPU and RAM now through psutil.

    Args:
        processes: ``psutil.Process`` objects whose CPU and resident memory are summed (each
            keeps its own CPU-time baseline, so pass the same objects every time). A process
            that has exited is skipped.

    Returns:
        The ``process_*``, ``cpu_percent`` and ``ram_*`` values. CPU percentages cover the
        time since the previous call (meaningless on the first call).
    """
    import psutil

    cpu_total, rss, alive = 0.0, 0, 0
    for process in processes:
        try:
            with process.oneshot():
                cpu_total += process.cpu_percent(interval=None)
                rss += process.memory_info().rss
            alive += 1
        except psutil.NoSuchProcess:  # includes ZombieProcess: it exited between two samples
            continue
    memory = psutil.virtual_memory()
    return {
        "process_cpu_percent": cpu_total / (psutil.cpu_count() or 1) if alive else None,
        "cpu_percent": psutil.cpu_percent(interval=None),
        "process_rss_mib": rss / _MIB if alive else None,
        "ram_used_mib": (memory.total - memory.available) / _MIB,
        "ram_total_mib": memory.total / _MIB,
    }


def _start_nvml():
    """Starts NVML and opens every GPU it reports.

    Returns:
        ``(nvml, handles, names, reason)``: the module, one handle and name per GPU, and ``""``;
        or ``(None, [], [], reason)`` saying why no GPU can be read.
    """
    try:
        nvml = _import_nvml()
    except ImportError as error:
        return None, [], [], f"nvidia-ml-py is not installed ({error})"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        return None, [], [], f"NVML did not start: {error}"
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(index)
                   for index in range(nvml.nvmlDeviceGetCount())]
        names = [_gpu_name(nvml, handle) for handle in handles]
    except nvml.NVMLError as error:
        _stop_nvml(nvml)
        return None, [], [], f"NVML could not open the GPUs: {error}"
    if not handles:
        _stop_nvml(nvml)
        return None, [], [], "NVML reports 0 GPUs"
    return nvml, handles, names, ""


def _gpu_name(nvml, handle) -> str:
    try:
        name = nvml.nvmlDeviceGetName(handle)
    except nvml.NVMLError:
        return ""
    return name.decode() if isinstance(name, bytes) else str(name)


def _stop_nvml(nvml) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError as error:  # harmless: NVML is reference counted per process
        logger.debug("nvmlShutdown failed: %s", error)


# --- the recorder ------------------------------------------------------------------------------

class ResourceMonitor:
    """Samples GPU, CPU and RAM into a CSV file in a background thread; a context manager.

    Every ``interval`` seconds (and once more when stopped) the thread appends one row per GPU
    (one row without GPU values when there is none) to ``path`` and flushes it, so the file
    holds everything measured even if the process dies. See the module docstring for the
    columns. ``epoch`` and ``step`` are recorded from the attributes of the same names, which
    the training callback (``workbench.training.callbacks.MonitorResources``) sets.

    Starting a running monitor, or stopping a stopped one, does nothing; a stopped monitor
    started again appends the next ``session`` to the same file.

    Args:
        path: the CSV file (a run's: ``RunDir(run_dir).resources_path``); appended to if it exists,
            created with its folder if not.
        interval: seconds between samples, > 0 (default 1.0; 0.1 is fine for short runs).
        pid: the process to record (default this one).
        include_children: also count the processes ``pid`` starts.

    Attributes:
        gpu_reason: once started, why no GPU is recorded ("" when one is).
        rows: rows written so far by this monitor.
        error: the exception that stopped the sampling thread early, or None.

    Raises:
        ValueError: ``path`` is not a path, or ``interval`` is not a number > 0.
    """

    def __init__(self, path, *, interval: float = 1.0, pid: int | None = None,
                 include_children: bool = False):
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"path must be a file path (str or os.PathLike), received: {path!r}")
        self.path = Path(path)
        self.interval = check_number("interval", interval, minimum=0.0, exclusive_minimum=True)
        self.pid = None if pid is None else check_int("pid", pid, minimum=1)
        self.include_children = bool(include_children)
        self.epoch: int | None = None
        self.step: int | None = None
        self.rows = 0                      # rows written by this monitor, over all sessions
        self.error: Exception | None = None
        self.gpu_reason = ""
        self._gpu_available: bool | None = None
        self._warned = False
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._t0: float | None = None
        self._processes: dict[int, object] = {}

    # -- public surface ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the sampling thread is running."""
        return self._thread is not None

    @property
    def gpu_available(self) -> bool:
        """Whether NVML found at least one GPU (probed once, at the first start or here).

        Deprecated, and gone in the next release: nothing uses it; once started, the monitor
        says why it records no GPU in ``gpu_reason`` ("" when it records one).
        """
        deprecated("ResourceMonitor.gpu_available is deprecated and will be removed in the "
                   "next release: read gpu_reason once the monitor has started (\"\" when a "
                   "GPU is recorded)")
        if self._gpu_available is None:
            nvml, handles, _, self.gpu_reason = _start_nvml()
            self._gpu_available = bool(handles)
            if nvml is not None:
                _stop_nvml(nvml)
        return self._gpu_available

    def start(self):
        """Starts sampling, appending to the file (the header is written if it is new).

        Starting a monitor that is already running does nothing. A stopped monitor can be
        started again; its rows go on in the same file with the next ``session`` number.

        Returns:
            The monitor itself.

        Raises:
            ValueError: the file exists with a header other than :data:`COLUMNS`.
            OSError: the file cannot be written.
        """
        with self._lock:
            if self._thread is not None:
                return self
            session = self._next_session()
            self._open_process()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = open(self.path, "a", newline="", encoding="utf-8")
            try:
                writer = csv.writer(file)
                if file.tell() == 0:
                    writer.writerow(COLUMNS)
                elif not _ends_with_newline(self.path):
                    file.write("\n")  # end a row cut short by a killed process
                file.flush()
                nvml, handles, names, reason = _start_nvml()
            except BaseException:
                file.close()
                raise
            self._gpu_available, self.gpu_reason = bool(handles), reason
            if not handles and not self._warned:
                self._warned = True
                warnings.warn(f"ResourceMonitor: no GPU found ({reason}); recording CPU and "
                              f"RAM only", RuntimeWarning, stacklevel=2)
            if self._t0 is None:
                self._t0 = time.monotonic()
            self.error = None
            self._stop_event = threading.Event()  # a fresh one: a thread never sees a restart
            self._thread = threading.Thread(
                target=self._run, args=(file, writer, session, nvml, list(zip(handles, names)),
                                        self._stop_event),
                name=f"ResourceMonitor({self.path.name})", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        """Takes a last sample, stops the thread and closes the file; does nothing if stopped.

        Returns:
            The monitor itself.
        """
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return self
            self._stop_event.set()
            thread.join(timeout=max(10.0, 2 * self.interval))
            if thread.is_alive():
                warnings.warn(f"ResourceMonitor: the sampling thread did not stop within "
                              f"{max(10.0, 2 * self.interval):g} s; {self.path} may miss its "
                              f"last row", RuntimeWarning, stacklevel=2)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, traceback):
        self.stop()
        return False  # an exception inside the with-block propagates

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"{type(self).__name__}({str(self.path)!r}, interval={self.interval:g}) "
                f"[{state}, {self.rows} rows]")

    # -- internals --------------------------------------------------------------------------

    def _next_session(self) -> int:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return 0
        with open(self.path, newline="", encoding="utf-8") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None:
                return 0
            if tuple(header) != COLUMNS:
                raise UsageError(f"path must be a resources.csv written by ResourceMonitor (or a "
                                 f"new file); its header differs, received: {str(self.path)!r} "
                                 f"with columns {header}")
            index = COLUMNS.index("session")
            sessions = [int(row[index]) for row in reader
                        if len(row) > index and row[index].isdigit()]
        return max(sessions, default=-1) + 1

    def _open_process(self) -> None:
        """Opens the monitored process now, before a child that exits at once is reaped."""
        import psutil

        if not self._processes:
            try:
                root = psutil.Process(self.pid)  # pid None: this process
            except psutil.NoSuchProcess:
                return
            self._processes[root.pid] = root

    def _monitored_processes(self) -> list:
        import psutil

        if not self._processes:
            return []
        root = next(iter(self._processes.values()))
        if not self.include_children:
            return [root]
        try:
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return [root]
        for child in children:  # reuse known objects: they hold the CPU-time baseline
            self._processes.setdefault(child.pid, child)
        alive = {root.pid} | {child.pid for child in children}
        for pid in [pid for pid in self._processes if pid not in alive]:
            del self._processes[pid]
        return list(self._processes.values())

    def _run(self, file, writer, session, nvml, gpus, stop_event) -> None:
        try:
            first, next_time = True, time.monotonic()
            while True:
                stopping = stop_event.is_set()
                self._write_sample(writer, session, nvml, gpus, cpu_valid=not first)
                file.flush()
                first = False
                if stopping:
                    break
                next_time += self.interval
                now = time.monotonic()
                if next_time < now:  # a slow sample: skip the missed ticks, keep the phase
                    next_time += math.ceil((now - next_time) / self.interval) * self.interval
                stop_event.wait(next_time - now)
        except Exception as error:  # disk full, psutil failure: keep training, say so once
            self.error = error
            warnings.warn(f"ResourceMonitor stopped recording to {self.path} after "
                          f"{self.rows} rows: {type(error).__name__}: {error}", RuntimeWarning)
        finally:
            file.close()
            if nvml is not None:
                _stop_nvml(nvml)

    def _write_sample(self, writer, session, nvml, gpus, *, cpu_valid: bool) -> None:
        now = time.monotonic()
        host = _host_sample(self._monitored_processes())
        if not cpu_valid:
            host["process_cpu_percent"] = host["cpu_percent"] = None
        common = {
            "time": datetime.datetime.now().astimezone().isoformat(timespec="milliseconds"),
            "elapsed_s": f"{now - self._t0:.6f}", "session": session,  # µs: unique per sample
            "epoch": self.epoch, "step": self.step, **host,
        }
        if not gpus:
            rows = [common]
        else:
            rows = [{**common, "gpu": index, "gpu_name": name, **_gpu_sample(nvml, handle)}
                    for index, (handle, name) in enumerate(gpus)]
        writer.writerows([_format(row.get(column)) for column in COLUMNS] for row in rows)
        self.rows += len(rows)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else str(round(value, 3))
    return str(value)


# --- running a command -------------------------------------------------------------------------

def monitor_command(command, path, *, interval: float = 1.0) -> int:
    """Runs a command while recording its resources (and the GPUs and system) to ``path``.

    The process columns cover the command and every process it starts. Does not import Keras.

    Args:
        command: the program and its arguments, e.g. ``["python", "train.py"]``.
        path: the CSV file to append to (see :class:`ResourceMonitor`).
        interval: seconds between samples, > 0.

    Returns:
        The command's exit status; 128 + N when a signal N ended it, 130 when interrupted.

    Raises:
        ValueError: ``command`` is empty or not a list of strings, or ``interval`` is not > 0.
        FileNotFoundError: the program does not exist.
    """
    if isinstance(command, (str, bytes)) or not command or \
            not all(isinstance(part, (str, os.PathLike)) for part in command):
        raise UsageError(f"command must be a non-empty list of strings (program, arguments), "
                         f"received: {command!r}")
    check_number("interval", interval, minimum=0.0, exclusive_minimum=True)
    child = subprocess.Popen([os.fspath(part) for part in command])
    recorder = ResourceMonitor(path, interval=interval, pid=child.pid, include_children=True)
    try:
        with recorder:
            try:
                status = child.wait()
            except KeyboardInterrupt:  # the terminal sent SIGINT to the child too
                child.wait()
                return 130
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return 128 - status if status < 0 else status


# --- reading and summarising -------------------------------------------------------------------

# The file that read_resources looks for in a folder, a deprecated form (the name of a run's
# file is workbench.runs.RunDir's to know: RunDir(path).resources); removed in the next release.
_DEPRECATED_FOLDER_FILE = "resources.csv"


def _csv_path(path) -> Path:
    if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
        deprecated("read_resources(a folder) is deprecated and will be removed in the next "
                   "release: use workbench.runs.RunDir(folder).resources, or read_resources "
                   "of the CSV file")
    return run_file(path, _DEPRECATED_FOLDER_FILE)


def read_resources(path):
    """Reads a ``resources.csv`` written by :class:`ResourceMonitor`.

    A last line cut short by a killed process is dropped.

    Args:
        path: the CSV file (a run's is ``workbench.runs.RunDir(run_dir).resources``). A
            folder holding ``resources.csv`` is deprecated.

    Returns:
        A ``pandas.DataFrame`` with the :data:`COLUMNS`: ``time`` as timezone-aware UTC
        datetimes, ``session``/``epoch``/``step``/``gpu`` as nullable integers (``Int64``),
        ``gpu_name`` as text, the rest as floats (NaN where unknown).

    Raises:
        ValueError: ``path`` is not a path, or the file lacks the monitor's columns.
        FileNotFoundError: no such file.
    """
    import pandas as pd

    path = _csv_path(path)
    try:
        frame = pd.read_csv(path, dtype={"gpu_name": str}, keep_default_na=False,
                            na_values=[""], on_bad_lines="skip")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UsageError(f"path must be a resources.csv written by ResourceMonitor, received: "
                         f"{str(path)!r}, which is not readable CSV ({one_line(error)})") from None
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise UsageError(f"path must be a resources.csv written by ResourceMonitor, received: "
                         f"{str(path)!r} without columns {missing}")
    frame = frame[list(COLUMNS)].dropna(subset=["elapsed_s", "ram_total_mib"]).reset_index(
        drop=True)  # a row cut short by a kill lacks its last fields
    frame["time"] = pd.to_datetime(frame["time"], format="ISO8601", utc=True)
    for column in ("session", "epoch", "step", "gpu"):
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    frame["gpu_name"] = frame["gpu_name"].fillna("").astype(str)
    numeric = [c for c in COLUMNS if c not in ("time", "session", "epoch", "step", "gpu",
                                                 "gpu_name")]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    return frame


def summarize_resources(frame, *, images: int | None = None) -> dict:
    """Peak memory, mean utilisation, energy and throughput of a recorded run.

    Args:
        frame: rows of a ``resources.csv`` (from :func:`read_resources`, or any frame with
            ``elapsed_s`` and whichever other :data:`COLUMNS` it has).
        images: images processed during the recording (e.g. epochs x training images); adds
            ``images_per_second``.

    Returns:
        A dict of plain numbers (None where the recording has no such values):
        ``duration_s`` (sum over sessions of last minus first sample), ``samples``, ``gpus``,
        ``gpu_util_mean_percent`` (over samples and GPUs), ``gpu_memory_peak_mib`` (the
        highest of any GPU), ``gpu_memory_total_mib``, ``gpu_power_mean_w``, ``gpu_energy_wh``
        (power integrated over time with the trapezoid rule, per GPU and session, summed),
        ``gpu_temperature_max_c``, ``cpu_mean_percent`` (system), ``process_cpu_mean_percent``,
        ``process_rss_peak_mib``, ``ram_used_peak_mib``, and ``images_per_second``.

    Raises:
        ValueError: ``frame`` is not a DataFrame with an ``elapsed_s`` column, or ``images``
            is not an integer >= 0.
    """
    import numpy as np
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or "elapsed_s" not in frame.columns:
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise UsageError(f"frame must be a DataFrame with an 'elapsed_s' column (from "
                         f"read_resources), received: {got}")
    if images is not None:
        images = check_int("images", images, minimum=0)
    frame = frame.copy()
    frame["session"] = frame["session"] if "session" in frame.columns else 0
    frame["gpu"] = frame["gpu"] if "gpu" in frame.columns else pd.NA

    def column(name) -> pd.Series:
        return pd.to_numeric(frame[name], errors="coerce").astype(float) \
            if name in frame.columns else pd.Series(np.nan, index=frame.index)

    def stat(values: pd.Series, how: str):
        values = values.dropna()
        return None if values.empty else float(getattr(values, how)())

    elapsed = column("elapsed_s")
    by_session = elapsed.groupby(frame["session"].fillna(0))
    duration = float((by_session.max() - by_session.min()).sum()) if len(frame) else 0.0
    gpu_rows = frame[frame["gpu"].notna()]
    energy = None
    power = column("gpu_power_w")
    if power.notna().any():
        energy = 0.0
        for _, rows in gpu_rows.groupby(["session", "gpu"]):
            watts = power[rows.index].dropna()
            seconds = elapsed[watts.index].to_numpy()
            order = np.argsort(seconds, kind="stable")
            watts, seconds = watts.to_numpy()[order], seconds[order]
            joules = float(np.sum((watts[1:] + watts[:-1]) / 2 * np.diff(seconds)))
            energy += joules / 3600.0
    # one host sample per timestamp: rows of the other GPUs repeat it
    host = frame.drop_duplicates(subset=["session", "elapsed_s"])
    summary = {
        "duration_s": duration,
        "samples": int(len(host)),
        "gpus": int(gpu_rows["gpu"].nunique()),
        "gpu_util_mean_percent": stat(column("gpu_util_percent"), "mean"),
        "gpu_memory_peak_mib": stat(column("gpu_memory_used_mib"), "max"),
        "gpu_memory_total_mib": stat(column("gpu_memory_total_mib"), "max"),
        "gpu_power_mean_w": stat(power, "mean"),
        "gpu_energy_wh": energy,
        "gpu_temperature_max_c": stat(column("gpu_temperature_c"), "max"),
        "cpu_mean_percent": stat(column("cpu_percent")[host.index], "mean"),
        "process_cpu_mean_percent": stat(column("process_cpu_percent")[host.index], "mean"),
        "process_rss_peak_mib": stat(column("process_rss_mib"), "max"),
        "ram_used_peak_mib": stat(column("ram_used_mib"), "max"),
    }
    if images is not None:
        summary["images_per_second"] = images / duration if duration > 0 else None
    return summary
