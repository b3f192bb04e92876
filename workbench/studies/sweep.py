"""Running one parameterised notebook once per combination of parameter values.

``sweep`` runs the notebook headless (papermill), locally in worker processes or on a Dask
cluster, and collects the ``metrics.json`` each run writes into ``results.csv``::

    result = sweep("02_pretrain_source.ipynb", "../runs/bs", {"batch_size": [16, 32, 64]})
    result.table            # one row per combination: parameters, status, error, seconds, metrics
    result.plot(metric="test_accuracy")

Comparing training recipes lives in :mod:`workbench.studies.recipes`, the batch-size study's
table in :mod:`workbench.studies.batch_size`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workbench import plots
from workbench._checks import MissingPath, UsageError, check_choice, check_int, one_line
from workbench._cluster import check_dask_cluster, dask_client
from workbench._io import write_json, write_text
from workbench._progress import progress as progress_bar
from workbench._progress import progress_argument
from workbench.runs import RunDir

RESULTS_FILE = "results.csv"
SWEEP_FILE = "sweep.json"
MODES = ("grid", "zip")
STATUSES = ("ok", "failed")
_RESERVED = ("name", "status", "error", "seconds")  # columns of results.csv besides the parameters
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_MAX_NAME = 120
_KEY_METRICS = ("test_accuracy", "val_accuracy", "accuracy")


def combinations(params: dict, *, mode: str = "grid") -> list[dict]:
    """The parameter combinations of a sweep, in a stable order.

    Args:
        params: ``{parameter name: list of values}``.
        mode: ``"grid"`` (every combination; the last parameter varies fastest) or ``"zip"``
            (the i-th values of every list together; the lists must be equally long).

    Returns:
        A list of ``{parameter name: value}`` dicts.

    Raises:
        ValueError: ``params`` is not a non-empty dict of identifiers to non-empty lists, the
            lists differ in length with ``mode="zip"``, or two combinations are the same.
    """
    check_choice("mode", mode, MODES)
    if not isinstance(params, dict) or not params:
        raise UsageError(f"params must be a non-empty dict of parameter name -> list of values, "
                         f"received: {params!r}")
    values = {}
    for name, options in params.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UsageError(f"params keys must be parameter names, received: {name!r}")
        if isinstance(options, (str, bytes, dict)) or not isinstance(options, (list, tuple,
                                                                              range)):
            raise UsageError(f"params[{name!r}] must be a list of values, received: {options!r}")
        if not options:
            raise UsageError(f"params[{name!r}] must not be empty, received: {options!r}")
        values[name] = list(options)
    if mode == "zip":
        lengths = {name: len(options) for name, options in values.items()}
        if len(set(lengths.values())) > 1:
            raise UsageError(f"mode='zip' needs value lists of equal length, received lengths: "
                             f"{lengths}")
        rows = zip(*values.values())
    else:
        rows = itertools.product(*values.values())
    result = [dict(zip(values, row)) for row in rows]
    names = [combination_name(combination) for combination in result]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"params must not repeat a combination, received repeats of: {repeated}")
    return result


def combination_name(combination: dict) -> str:
    """A stable, filesystem-safe name for one combination, e.g. ``batch_size=16,epochs=2``.

    Parameters are sorted by name, so the order they were given in does not matter. A value
    with characters other than letters, digits and ``._+-`` (a path, a list, a string with a
    comma) has them replaced by ``_`` and the name ends with a short hash of the exact values,
    so different combinations never share a name; so does a name longer than 120 characters.

    Raises:
        ValueError: ``combination`` is not a non-empty dict.
    """
    if not isinstance(combination, dict) or not combination:
        raise UsageError(f"combination must be a non-empty dict, received: {combination!r}")
    parts, changed = [], False
    for key in sorted(combination):
        text = _value_text(combination[key])
        safe = _UNSAFE.sub("_", text)
        changed = changed or safe != text or not text
        parts.append(f"{key}={safe}")
    name = ",".join(parts)
    if changed or len(name) > _MAX_NAME:
        exact = json.dumps(combination, sort_keys=True, default=repr)
        name = f"{name[:_MAX_NAME]}-{hashlib.sha1(exact.encode()).hexdigest()[:8]}"
    return name


def _value_text(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), default=repr)


@dataclass
class SweepResult:
    """What a sweep produced: its table and the folder holding its notebooks and runs.

    Attributes:
        table: the rows of ``results.csv``: ``name``, the swept parameters, ``status`` (``ok``
            or ``failed``), ``error`` (one line; empty when ok), ``seconds`` (wall time of the
            notebook, kernel start included), then the numbers of each run's ``metrics.json``
            (a metric named like a parameter or one of those columns gets a ``metric_`` prefix).
        out: the sweep folder: ``<name>.ipynb`` (executed notebooks), ``<name>/`` (run
            directories), ``results.csv`` and ``sweep.json``.
        parameters: the swept parameter names.
        metrics: the metric columns.
        figure_: the Figure :meth:`plot` drew last (set by it, like scikit-learn's Displays).
        ax_: the axes it drew on.
    """

    table: pd.DataFrame
    out: Path
    parameters: list = field(default_factory=list)
    metrics: list = field(default_factory=list)

    @classmethod
    def load(cls, out: str | Path) -> SweepResult:
        """Reads a sweep folder's ``results.csv`` (e.g. in another notebook, or after a crash).

        Raises:
            FileNotFoundError: ``out`` holds no ``results.csv`` and ``sweep.json``.
        """
        out = Path(out)
        if not (out / RESULTS_FILE).is_file() or not (out / SWEEP_FILE).is_file():
            raise MissingPath(f"out must be a sweep folder with {RESULTS_FILE} and "
                              f"{SWEEP_FILE}, received: {str(out)!r}")
        meta = json.loads((out / SWEEP_FILE).read_text(encoding="utf-8"))
        table = pd.read_csv(out / RESULTS_FILE)
        parameters = [name for name in meta["parameters"] if name in table.columns]
        return cls(table, out, parameters, _metric_columns(table, parameters))

    @property
    def ok(self) -> pd.DataFrame:
        """The rows of the runs that finished with a ``metrics.json``."""
        return self.table[self.table["status"] == "ok"]

    def key_metric(self) -> str | None:
        """``test_accuracy`` (or ``val_accuracy``, ``accuracy``) if measured, else the first
        numeric metric; None when no run has finished."""
        return _key_metric(self.table[self.metrics] if self.metrics else pd.DataFrame())

    def plot(self, metric: str | None = None, *, x: str | None = None, ax=None):
        """Draws ``metric`` against parameter ``x``, one line per value of the other parameters.

        Keeps the Figure and axes in ``figure_`` and ``ax_``.

        Args:
            metric: a metric column; defaults to :meth:`key_metric`.
            x: a swept parameter; defaults to the first one.
            ax: optional axes to draw on.

        Returns:
            The matplotlib Figure.

        Raises:
            ValueError: ``metric`` or ``x`` is not a column of the table.
        """
        metric = metric if metric is not None else self.key_metric()
        if metric not in self.metrics:
            raise UsageError(f"metric must be one of the metrics {self.metrics}, "
                             f"received: {metric!r}")
        x = x if x is not None else self.parameters[0]
        if x not in self.parameters:
            raise UsageError(f"x must be one of the parameters {self.parameters}, received: {x!r}")
        figure = plots.sweep_results(self.table, metric=metric, x=x,
                                     by=[name for name in self.parameters if name != x], ax=ax)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure


def sweep(notebook: str | Path, out: str | Path, params: dict, *, mode: str = "grid",
          fixed: dict | None = None, workers: int | None = None, cluster: str | None = None,
          cluster_options: dict | None = None, cwd: str | Path | None = None,
          kernel_name: str = "python3", progress: str = "auto") -> SweepResult:
    """Runs a parameterised notebook once per combination of values and tabulates the results.

    papermill executes each combination into ``out/<name>.ipynb`` (``name`` from
    :func:`combination_name`), injecting the swept and ``fixed`` parameters and
    ``run_dir=out/<name>/``. A run's numbers come only from the ``metrics.json`` the notebook
    writes into its ``run_dir``, never from its cell outputs. After every finished run
    ``out/results.csv`` is rewritten atomically, so an interrupted sweep leaves a complete file.
    A notebook that raises, or writes no ``metrics.json``, is recorded as ``failed`` with its
    error and the others go on. Running the same sweep again skips the combinations already
    finished ``ok`` whose ``metrics.json`` is still there, and retries the failed ones; rows of
    earlier sweeps into ``out`` over other values are kept.

    Locally the runs go to ``workers`` spawned processes, each driving its own kernel:
    processes rather than threads because papermill drives each kernel through an asyncio loop
    and ZeroMQ sockets of its own, a crashed run cannot take the sweep down, and an
    interrupted sweep can stop the runs in flight (a thread cannot be stopped). With
    ``cluster`` the runs go to Dask workers instead; paths must then be on a filesystem the
    workers share, and they must have the workbench installed.

    Args:
        notebook: the notebook; it must have a ``run_dir`` parameter.
        out: the sweep folder (created).
        params: ``{parameter name: list of values}``; every name must be a parameter of the
            notebook (``papermill.inspect_notebook``).
        mode: ``"grid"`` (every combination) or ``"zip"`` (the i-th values together).
        fixed: parameters passed unchanged to every run. Relative paths are relative to
            ``cwd``. A second sweep into the same ``out`` must use the same notebook and
            ``fixed`` parameters, or its results would mix with runs of other settings.
        workers: runs at a time: local processes (default ``min(2, CPUs)``; a timing study
            wants 1, as parallel runs share the cores), or SLURM jobs with ``cluster="slurm"``
            (default 1). Not allowed with a scheduler address, whose cluster has its workers.
        cluster: None (local processes), the address of a running Dask scheduler
            (``"tcp://host:8786"``), or ``"slurm"`` for a ``dask_jobqueue.SLURMCluster``.
        cluster_options: keyword arguments of ``SLURMCluster`` (``cores``, ``memory``,
            ``queue``, ``walltime``, ``account``, ...); only with ``cluster="slurm"``.
            Without them dask-jobqueue reads its configuration file.
        cwd: the kernels' working directory; default the notebook's folder, as in Jupyter.
        kernel_name: the Jupyter kernel that runs the notebook.
        progress: ``"auto"`` (a bar where someone watches, plain lines headless) and one line
            per finished run; ``"lines"`` (plain lines, and one per finished run) or
            ``"none"``. True and False still work for one release, with a
            ``DeprecationWarning``.

    Returns:
        A :class:`SweepResult`.

    Raises:
        FileNotFoundError: ``notebook`` or ``cwd`` does not exist.
        ValueError: a bad argument: see :func:`combinations`, unknown parameter names,
            ``run_dir`` given, a parameter both swept and fixed, ``out`` holding a sweep of
            another notebook or other fixed parameters, a bad ``workers`` or ``cluster``.
        KeyboardInterrupt: the sweep was interrupted; the runs in flight are stopped and
            ``results.csv`` holds every run finished before.
    """
    notebook, fixed, chosen, workers, cwd = _check_arguments(notebook, params, mode, fixed,
                                                             workers, cluster, cluster_options, cwd)
    progress = progress_argument(progress)
    out = _sweep_folder(out)
    previous, earlier_parameters = _previous_sweep(out, notebook, fixed)
    parameters = list(params) + [name for name in earlier_parameters if name not in params]
    rows, todo, order = _plan_runs(chosen, previous, out, notebook, fixed, cwd, kernel_name)
    _record_plan(out, notebook, fixed, parameters, mode, order, rows)
    if progress != "none":
        _report_finished_before(out, len(chosen), len(todo))
    _remove_stale_metrics(out, todo)
    if todo:
        _run_all(todo, out, order, rows, parameters, workers=workers, cluster=cluster,
                 cluster_options=cluster_options, progress=progress)
    table = _frame([rows[name] for name in order if name in rows], parameters)
    return SweepResult(table, out, parameters, _metric_columns(table, parameters))


def _check_arguments(notebook, params, mode, fixed, workers, cluster, cluster_options,
                     cwd) -> tuple[Path, dict, list, int | None, Path]:
    """The notebook (resolved), the fixed parameters, the combinations, the workers and the
    kernels' working directory, each checked."""
    notebook = Path(notebook)
    if not notebook.is_file():
        raise MissingPath(f"notebook not found, received: {str(notebook)!r}")
    notebook = notebook.resolve()
    if fixed is not None and not isinstance(fixed, dict):
        raise UsageError(f"fixed must be a dict of parameter name -> value, received: {fixed!r}")
    fixed = dict(fixed or {})
    chosen = combinations(params, mode=mode)
    _check_notebook_parameters(notebook, list(params), fixed)
    workers = _check_workers(workers, cluster, cluster_options)
    cwd = Path(cwd).resolve() if cwd is not None else notebook.parent
    if not cwd.is_dir():
        raise MissingPath(f"cwd must be an existing folder, received: {str(cwd)!r}")
    return notebook, fixed, chosen, workers, cwd


def _sweep_folder(out) -> Path:
    """The sweep folder, resolved and created."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _plan_runs(chosen: list, previous: dict, out: Path, notebook: Path, fixed: dict,
               cwd: Path, kernel_name: str) -> tuple[dict, list, list]:
    """The rows known already, by name (runs finished ``ok``, the last failures, earlier
    sweeps' other values), the runs to do, and the order of the rows: the chosen combinations,
    then the earlier sweeps' other values."""
    previous = dict(previous)
    rows, todo = {}, []
    for combination in chosen:
        name = combination_name(combination)
        old = previous.pop(name, None)
        metrics, error = _read_run_metrics(out / name)
        if old is not None and old.get("status") == "ok" and error is None:
            rows[name] = _row(name, combination, status="ok", error=None,
                              seconds=old.get("seconds"), metrics=metrics)
            continue
        if old is not None:
            rows[name] = old  # the last failure stays on record until the retry ends
        todo.append({"name": name, "combination": combination, "call": {
            "notebook": str(notebook), "output": str(out / f"{name}.ipynb"),
            "parameters": {**fixed, **combination, "run_dir": str(out / name)},
            "cwd": str(cwd), "kernel_name": kernel_name}})
    order = [combination_name(combination) for combination in chosen] + list(previous)
    rows.update(previous)  # rows of earlier sweeps over other values are kept
    return rows, todo, order


def _record_plan(out: Path, notebook: Path, fixed: dict, parameters: list, mode: str,
                 order: list, rows: dict) -> None:
    """Writes ``sweep.json`` (the notebook, fixed parameters, parameters and mode) and the
    ``results.csv`` of the rows known before the runs."""
    write_json(out / SWEEP_FILE, {"notebook": notebook.name, "fixed": _jsonable(fixed),
                                  "parameters": parameters, "mode": mode})
    _write_results(out, order, rows, parameters)


def _report_finished_before(out: Path, chosen: int, todo: int) -> None:
    """Says how many of the ``chosen`` combinations an earlier sweep finished, if any did."""
    if todo < chosen:
        _report(f"sweep: {chosen - todo} of {chosen} combinations already finished in {out}; "
                f"running {todo}")


def _remove_stale_metrics(out: Path, todo: list) -> None:
    """Removes the ``metrics.json`` of every run to do: a stale one must not pass for this
    run's numbers."""
    for task in todo:
        RunDir(out / task["name"]).remove_metrics()


def _run_all(todo, out, order, rows, parameters, *, workers, cluster, cluster_options,
             progress) -> None:
    """Runs the tasks, recording each finished run in ``rows`` and ``results.csv``."""
    with contextlib.ExitStack() as stack:
        if cluster is None:
            runs = _run_local(todo, workers)
        else:
            runs = _run_dask(todo, stack.enter_context(dask_client(
                cluster, jobs=workers, cluster_options=cluster_options)))
        stack.callback(runs.close)  # closed first: stops the runs in flight if interrupted
        finished = progress_bar(runs, total=len(todo), desc="sweep", mode=progress)
        for task, outcome in finished:
            name = task["name"]
            metrics, error = {}, outcome["error"]
            if error is None:
                metrics, error = _read_run_metrics(out / name)
            rows[name] = _row(name, task["combination"], status="failed" if error else "ok",
                              error=error, seconds=outcome["seconds"], metrics=metrics)
            _write_results(out, order, rows, parameters)
            if progress != "none":
                _report(_summary_line(rows[name], metrics), bar=finished)


def _execute(notebook: str, output: str, parameters: dict, cwd: str, kernel_name: str) -> dict:
    """Executes one notebook with papermill (in a worker process or on a Dask worker).

    Returns:
        ``{"error": one line or None, "seconds": wall time}``; the numbers are read from the
        run's ``metrics.json`` by the caller.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    started = time.monotonic()
    error = None
    try:
        papermill.execute_notebook(notebook, output, parameters=parameters, cwd=cwd,
                                   kernel_name=kernel_name, progress_bar=False, log_output=False,
                                   extra_arguments=_quiet_kernel_arguments(kernel_name))
    except PapermillExecutionError as failure:
        error = f"{failure.ename}: {failure.evalue}"
    except Exception as failure:  # a dead kernel, a timeout: recorded, and the sweep goes on
        error = f"{type(failure).__name__}: {failure}"
    return {"error": one_line(error) if error else None,
            "seconds": round(time.monotonic() - started, 3)}


def _quiet_kernel_arguments(kernel_name: str) -> list:
    """Kernel arguments that keep an IPython kernel's start-up warnings (``Kernel is running
    over TCP without encryption``) off the sweep's terminal; none for other kernels."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec(kernel_name).argv
    except NoSuchKernel:
        return []  # papermill says so, in the run's error
    return ["--IPKernelApp.log_level=ERROR"] if any("ipykernel" in word for word in argv) else []


def _die_with(parent: int) -> None:
    """Makes this worker process end, and the kernel it drives, when the sweep (``parent``)
    is gone, even killed with SIGKILL, which it cannot pass on: a thread polls the parent."""

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        import psutil

        children = psutil.Process().children(recursive=True)  # the kernel, and its children
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(children, timeout=5)
        os._exit(1)

    threading.Thread(target=watch, name="workbench-sweep-parent", daemon=True).start()


def _outcome(future) -> dict:
    """A finished future's result, or its failure (e.g. a worker process that died)."""
    try:
        return future.result()
    except Exception as failure:
        return {"error": one_line(f"{type(failure).__name__}: {failure}"), "seconds": None}


def _run_local(tasks: list, workers: int):
    """Yields ``(task, outcome)`` as runs finish in ``workers`` spawned processes.

    Spawned, not forked: the caller may hold TensorFlow's threads or a Jupyter kernel's event
    loop, which a fork would copy in an unusable state. Each worker ends, with its kernel, when
    the sweep process is gone (:func:`_die_with`); a run it had in flight is not in
    ``results.csv`` and runs again when the sweep is started again.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed

    before = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_die_with, initargs=(os.getpid(),))
    futures, finished = {}, False
    try:
        futures = {executor.submit(_execute, **task["call"]): task for task in tasks}
        for future in as_completed(futures):
            yield futures[future], _outcome(future)
        finished = True
    finally:
        if not finished:  # interrupted: stop the runs in flight; their kernels exit with them
            for future in futures:
                future.cancel()
            for process in set(multiprocessing.active_children()) - before:
                process.terminate()
        executor.shutdown(wait=finished, cancel_futures=True)


def _run_dask(tasks: list, client):
    """Yields ``(task, outcome)`` as runs finish on the Dask cluster of ``client``."""
    from distributed import as_completed

    futures, finished = {}, False
    try:
        futures = {client.submit(_execute, **task["call"], pure=False,
                                 key=f"workbench-sweep-{task['name']}-{os.urandom(4).hex()}"):
                   task for task in tasks}
        for future in as_completed(list(futures)):
            yield futures[future], _outcome(future)
        finished = True
    finally:
        if not finished:
            client.cancel(list(futures))


def _check_workers(workers, cluster, cluster_options) -> int | None:
    check_dask_cluster(cluster, cluster_options, optional=True)
    if workers is not None:
        workers = check_int("workers", workers, minimum=1)
        if cluster not in (None, "slurm"):
            raise UsageError(f"workers applies to local runs and cluster='slurm'; the cluster "
                             f"at a scheduler address has its own workers, received: "
                             f"workers={workers} with cluster={cluster!r}")
    if cluster is None:
        return workers or min(2, os.cpu_count() or 1)
    return (workers or 1) if cluster == "slurm" else None


def _check_notebook_parameters(notebook: Path, swept: list, fixed: dict) -> None:
    """Every given name must be a parameter of the notebook, which must take ``run_dir``."""
    import papermill

    declared = list(papermill.inspect_notebook(str(notebook)))
    if "run_dir" not in declared:
        raise UsageError(f"notebook must have a run_dir parameter (where it writes "
                         f"metrics.json), received: {notebook.name} with parameters {declared}")
    for argument, names in (("params", swept), ("fixed", list(fixed))):
        if "run_dir" in names:
            raise UsageError(f"{argument} must not set run_dir: the sweep sets it to "
                             f"out/<name>/, received: {names}")
        unknown = [name for name in names if name not in declared]
        if unknown:
            raise UsageError(f"{argument} must name parameters of {notebook.name} "
                             f"({', '.join(declared)}), received: {unknown}")
        reserved = [name for name in names if name in _RESERVED]
        if reserved:
            raise UsageError(f"{argument} must not name the results columns {_RESERVED}, "
                             f"received: {reserved}")
    both = sorted(set(swept) & set(fixed))
    if both:
        raise UsageError(f"a parameter is either swept or fixed, received both for: {both}")


def _previous_sweep(out: Path, notebook: Path, fixed: dict) -> tuple[dict, list]:
    """The rows of an earlier sweep into ``out`` by name, and its parameter names."""
    meta_path = out / SWEEP_FILE
    if not meta_path.is_file():
        return {}, []
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("notebook") != notebook.name or meta.get("fixed") != _jsonable(fixed):
        raise UsageError(f"out already holds a sweep of {meta.get('notebook')} with fixed "
                         f"parameters {meta.get('fixed')}; choose another out (or delete it), "
                         f"received: {notebook.name} with fixed parameters {_jsonable(fixed)}")
    path = out / RESULTS_FILE
    if not path.is_file():
        return {}, list(meta.get("parameters", []))
    frame = pd.read_csv(path)
    rows = {}
    for record in frame.to_dict("records"):
        rows[str(record["name"])] = {key: value for key, value in record.items()
                                     if not (isinstance(value, float) and value != value)}
    return rows, list(meta.get("parameters", []))


def _read_run_metrics(run_dir: Path) -> tuple[dict, str | None]:
    """The run's ``metrics.json`` as flat values, or an error saying why there is none."""
    try:
        metrics = RunDir(run_dir).metrics
    except (OSError, ValueError) as failure:  # a damaged file: RunDir says which
        return {}, one_line(failure)
    if metrics is None:
        return {}, f"the notebook wrote no metrics.json in {run_dir}"
    if not isinstance(metrics, dict):
        return {}, (f"the metrics.json in {run_dir} must hold a JSON object, received: "
                    f"{type(metrics).__name__}")
    return {key: value if value is None or isinstance(value, (str, int, float, bool))
            else json.dumps(value) for key, value in metrics.items()}, None


def _row(name: str, combination: dict, *, status: str, error, seconds, metrics: dict) -> dict:
    row = {"name": name, **combination, "status": status, "error": error or "",
           "seconds": seconds}
    for key, value in metrics.items():
        row[f"metric_{key}" if key in row else key] = value
    return row


def _frame(rows: list, parameters: list) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    first = ["name", *parameters, "status", "error", "seconds"]
    for column in first:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype=object)
    return frame[first + [column for column in frame.columns if column not in first]]


def _write_results(out: Path, order: list, rows: dict, parameters: list) -> None:
    frame = _frame([rows[name] for name in order if name in rows], parameters)
    write_text(out / RESULTS_FILE, frame.to_csv(index=False, lineterminator="\n"))


def _metric_columns(table: pd.DataFrame, parameters: list) -> list:
    return [column for column in table.columns
            if column not in _RESERVED and column not in parameters]


def _key_metric(metrics: pd.DataFrame) -> str | None:
    for name in _KEY_METRICS:
        if name in metrics.columns and metrics[name].notna().any():
            return name
    numeric = [name for name in metrics.columns
               if pd.api.types.is_numeric_dtype(metrics[name]) and metrics[name].notna().any()]
    return numeric[0] if numeric else None


def _summary_line(row: dict, metrics: dict) -> str:
    """``name: ok  test_accuracy 0.91  12.3s`` or ``name: failed  ValueError: ...  2.0s``."""
    parts = [f"{row['name']}: {row['status']}"]
    if row["status"] == "ok":
        key = _key_metric(pd.DataFrame([metrics]))
        if key is not None:
            parts.append(f"{key} {metrics[key]:.4g}")
    else:
        parts.append(row["error"])
    if row.get("seconds") is not None:
        parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


def _report(line: str, bar=None) -> None:
    """Prints one line about the sweep, above the progress bar if there is a tqdm one."""
    if hasattr(bar, "write"):
        bar.write(line)  # tqdm's write keeps the bar intact
    else:
        print(line, flush=True)


def _jsonable(value):
    return json.loads(json.dumps(value, default=repr))
