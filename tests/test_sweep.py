"""The sweep runner: papermill over a grid of parameters, locally and on a Dask LocalCluster.

A tiny pure-Python notebook stands in for a training notebook: it appends ``a,b`` to a counter
file each time it runs (so a test can tell what was executed), raises when ``fail`` names its
combination, and writes ``metrics.json`` with numbers computed from ``a`` and ``b`` and the pid of
the process that started its kernel (so a test can tell where it ran).
"""

import contextlib
import multiprocessing
import os
import time

import matplotlib
import nbformat
import pandas as pd
import pytest

from workbench import plots
from workbench._checks import one_line
from workbench.cli import main
from workbench.studies import sweep as sweep_module
from workbench.studies.batch_size import batch_size_table, published_batch_size_study
from workbench.studies.sweep import SweepResult, combination_name, combinations, sweep

matplotlib.use("Agg")

PARAMETERS = 'run_dir = ""\na = 1\nb = 10\nfail = ""\ncounter = ""'
BODY = '''import json, os, pathlib
if counter:
    with open(counter, "a") as handle:
        handle.write(f"{a},{b}\\n")
if fail == f"{a},{b}":
    raise ValueError(f"injected failure at a={a}, b={b}")
if b != "no-metrics":
    pathlib.Path(run_dir).mkdir(parents=True, exist_ok=True)
    metrics = {"product": a * b, "accuracy": a / (a + b), "parent_pid": os.getppid()}
    pathlib.Path(run_dir, "metrics.json").write_text(json.dumps(metrics))'''
GRID = {"a": [1, 2], "b": [10, 20]}
NAMES = ["a=1,b=10", "a=1,b=20", "a=2,b=10", "a=2,b=20"]


def write_notebook(path, parameters=PARAMETERS):
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    book = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell(BODY)])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    nbformat.write(book, path)
    return path


def executions(counter) -> list:
    return counter.read_text().splitlines() if counter.exists() else []


def mtimes(out, names) -> dict:
    return {name: (out / f"{name}.ipynb").stat().st_mtime_ns for name in names}


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    return write_notebook(tmp_path_factory.mktemp("sweep") / "tiny.ipynb")


@pytest.fixture(scope="module")
def local(notebook, tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    fixed = {"fail": "2,20", "counter": str(root / "count.txt")}
    result = sweep(notebook, root / "out", GRID, fixed=fixed, workers=2, progress="none")
    return {"result": result, "out": root / "out", "fixed": fixed, "counter": root / "count.txt"}


def test_local_sweep_records_each_run_and_a_failure_and_a_rerun_retries_only_it(local,
                                                                                notebook):
    out, counter = local["out"], local["counter"]
    table = pd.read_csv(out / "results.csv")
    assert list(table["name"]) == NAMES  # grid order, the last parameter fastest
    assert list(table.columns[:6]) == ["name", "a", "b", "status", "error", "seconds"]
    assert list(zip(table["a"], table["b"])) == [(1, 10), (1, 20), (2, 10), (2, 20)]
    assert list(table["status"]) == ["ok", "ok", "ok", "failed"]
    ok, failed = table.iloc[:3], table.iloc[3]
    assert list(ok["product"]) == [10, 20, 20]
    assert ok["accuracy"].tolist() == pytest.approx([1 / 11, 1 / 21, 2 / 12])
    assert failed["error"] == "ValueError: injected failure at a=2, b=20"
    assert pd.isna(failed["product"]) and (table["seconds"] > 0).all()
    assert ok["error"].isna().all()
    assert all(pid != os.getpid() for pid in ok["parent_pid"])  # kernels of worker processes
    assert all((out / f"{name}.ipynb").is_file() for name in NAMES)  # the failed one too
    assert sorted(executions(counter)) == ["1,10", "1,20", "2,10", "2,20"]
    result = local["result"]
    assert list(result.table["name"]) == NAMES and result.parameters == ["a", "b"]
    assert {"product", "accuracy", "parent_pid"} <= set(result.metrics)

    before = mtimes(out, NAMES[:3])
    again = sweep(notebook, out, GRID, fixed=local["fixed"], workers=2, progress="none")
    assert executions(counter)[4:] == ["2,20"]  # only the failed combination ran again
    assert mtimes(out, NAMES[:3]) == before
    assert list(again.table["status"]) == ["ok", "ok", "ok", "failed"]
    assert list(again.table["product"][:3]) == [10, 20, 20]


def test_dask_local_cluster_runs_the_grid_and_a_rerun_executes_nothing(notebook, tmp_path):
    from distributed import Client, LocalCluster

    out, counter = tmp_path / "out", tmp_path / "count.txt"
    fixed = {"counter": str(counter)}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        result = sweep(notebook, out, GRID, fixed=fixed, cluster=cluster.scheduler_address,
                       progress="none")
    table = pd.read_csv(out / "results.csv")
    assert list(table["name"]) == NAMES and (table["status"] == "ok").all()
    assert list(table["product"]) == [10, 20, 20, 40]
    assert set(table["parent_pid"]) <= worker_pids  # each kernel was started by a Dask worker
    assert list(result.table["product"]) == [10, 20, 20, 40]

    before, runs = mtimes(out, NAMES), executions(counter)
    assert len(runs) == 4
    again = sweep(notebook, out, GRID, fixed=fixed, progress="none")  # locally this time
    assert executions(counter) == runs and mtimes(out, NAMES) == before
    assert list(again.table["product"]) == [10, 20, 20, 40]
    assert list(pd.read_csv(out / "results.csv")["product"]) == [10, 20, 20, 40]


def test_an_interrupted_sweep_leaves_a_complete_results_file_and_continues(notebook, tmp_path,
                                                                           monkeypatch):
    out, counter = tmp_path / "out", tmp_path / "count.txt"
    fixed = {"counter": str(counter)}
    grid = {"a": [1, 2], "b": [10]}
    children = set(multiprocessing.active_children())

    def interrupt(line, bar=None):  # Ctrl-C right after the first run is recorded
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "_report", interrupt)
    with pytest.raises(KeyboardInterrupt):
        sweep(notebook, out, grid, fixed=fixed, workers=1, progress="auto")
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 1 and table["status"].tolist() == ["ok"]
    first = table["name"].iloc[0]
    assert table["product"].iloc[0] == int(first.split(",")[0][2:]) * 10
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]  # no temp
    deadline = time.monotonic() + 10
    while set(multiprocessing.active_children()) - children and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(multiprocessing.active_children()) - children  # the worker was stopped

    monkeypatch.undo()
    done = mtimes(out, [first])
    result = sweep(notebook, out, grid, fixed=fixed, workers=1, progress="none")
    assert list(result.table["status"]) == ["ok"] * 2
    assert list(result.table["product"]) == [10, 20]
    assert mtimes(out, [first]) == done  # the recorded run was not repeated


def test_progress_none_is_silent_lines_talks_and_the_old_booleans_still_work(notebook, tmp_path,
                                                                               capsys):
    out, grid = tmp_path / "out", {"a": [3], "b": [10]}
    with pytest.warns(DeprecationWarning, match="progress=False .*progress='none'"):
        result = sweep(notebook, out, grid, workers=1, progress=False)
    assert list(result.table["status"]) == ["ok"]
    assert capsys.readouterr() == ("", "")  # "none": not a word
    sweep(notebook, out, grid, workers=1, progress="lines")  # done: only the line saying so
    assert "1 of 1 combinations already finished" in "".join(capsys.readouterr())
    with pytest.raises(ValueError, match="progress must be one of 'auto', 'lines', 'none'"):
        sweep(notebook, out, grid, progress="plot")


def test_cli_sweep_zips_values_writes_results_and_a_plot(notebook, tmp_path, capsys):
    """Zip mode; a notebook that writes no metrics.json fails its run and the exit status."""
    counter = tmp_path / "count.txt"
    status = main(["sweep", str(notebook), "--out", str(tmp_path / "out"), "--param", "a=1,2",
                   "--param", "b=10,'no-metrics'", "--zip", "--set", f"counter={counter}",
                   "--workers", "2"])
    printed = capsys.readouterr().out
    assert status == 1
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(table["name"]) == ["a=1,b=10", "a=2,b=no-metrics"]
    assert sorted(executions(counter)) == ["1,10", "2,no-metrics"]
    assert list(table["status"]) == ["ok", "failed"] and table["product"].iloc[0] == 10
    assert table["error"].iloc[1].startswith("the notebook wrote no metrics.json in ")
    assert "a=1,b=10: ok  accuracy 0.09091" in printed
    assert "a=2,b=no-metrics: failed  the notebook wrote no metrics.json" in printed
    assert "1 ok, 1 failed" in printed
    assert (tmp_path / "out" / "results.png").stat().st_size > 1000


@pytest.mark.parametrize("arguments, message", [
    (["missing.ipynb", "--param", "a=1"], "NOTEBOOK not found, received: 'missing.ipynb'"),
    (["{nb}", "--param", "a"], "argument --param: must be NAME=VALUE"),
    (["{nb}", "--param", "a=1,"], "without empty values, received: 'a=1,'"),
    (["{nb}", "--param", "a=1,2", "--param", "b=1", "--zip"], "equal length"),
    (["{nb}", "--param", "zz=1,2"], "received: ['zz']"),
    (["{nb}", "--param", "a=1", "--param", "a=2"], "--param names each parameter once"),
    (["{nb}", "--param", "a=1", "--set", "a=2"], "either swept or fixed"),
    (["{nb}", "--param", "a=1", "--cluster", "tcp://127.0.0.1:1", "--workers", "2"],
     "workers applies to local runs"),
])
def test_cli_sweep_errors_exit_2_with_one_line(notebook, tmp_path, capsys, arguments, message):
    arguments = [str(notebook) if argument == "{nb}" else argument for argument in arguments]
    status = main(["sweep", *arguments, "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == 2 and error.startswith("error: ") and error.count("\n") == 1
    assert message in error
    assert not (tmp_path / "out").exists()  # nothing ran


def test_cli_values_are_python_literals_or_strings():
    from workbench.cli import _setting, _sweep_param

    assert _sweep_param("lr=0.1,1e-3") == ("lr", [0.1, 0.001])
    assert _sweep_param("backbone=lenet,cifar_cnn") == ("backbone", ["lenet", "cifar_cnn"])
    assert _sweep_param("seeds=[0,1],[2]") == ("seeds", [[0, 1], [2]])
    assert _sweep_param("flag=True,'x,y'") == ("flag", [True, "x,y"])
    assert _setting("layers=['conv1', 'conv2']") == ("layers", ["conv1", "conv2"])
    assert _setting("path=../runs/a b") == ("path", "../runs/a b")


def test_sweep_checks_its_arguments_before_running(notebook, local, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="notebook not found"):
        sweep(tmp_path / "missing.ipynb", out, GRID)
    with pytest.raises(ValueError, match=r"params must name parameters of tiny.ipynb .*'zz'"):
        sweep(notebook, out, {"zz": [1]})
    with pytest.raises(ValueError, match="fixed must not set run_dir"):
        sweep(notebook, out, GRID, fixed={"run_dir": "x"})
    with pytest.raises(ValueError, match=r"either swept or fixed, received both for: \['a'\]"):
        sweep(notebook, out, GRID, fixed={"a": 1})
    with pytest.raises(ValueError, match="workers must be >= 1, received: 0"):
        sweep(notebook, out, GRID, workers=0)
    with pytest.raises(ValueError, match="cluster_options must be a dict and needs"):
        sweep(notebook, out, GRID, cluster_options={"cores": 2})
    no_run_dir = write_notebook(tmp_path / "plain.ipynb", "a = 1\nb = 2")
    with pytest.raises(ValueError, match="notebook must have a run_dir parameter"):
        sweep(no_run_dir, out, {"a": [1]})
    assert not out.exists()
    with pytest.raises(ValueError, match="out already holds a sweep of tiny.ipynb"):
        sweep(notebook, local["out"], GRID, fixed={"counter": "elsewhere"})


def test_combinations_and_their_names():
    assert combinations(GRID) == [{"a": 1, "b": 10}, {"a": 1, "b": 20}, {"a": 2, "b": 10},
                                  {"a": 2, "b": 20}]
    assert combinations(GRID, mode="zip") == [{"a": 1, "b": 10}, {"a": 2, "b": 20}]
    assert combination_name({"epochs": 2, "batch_size": 16}) == "batch_size=16,epochs=2"
    assert combination_name({"lr": 0.001, "backbone": "mobilenet_v2"}) == \
        "backbone=mobilenet_v2,lr=0.001"
    odd = [combination_name({"x": value}) for value in ("a/b c", "a_b_c", "a b/c", [0, 1])]
    assert odd[1] == "x=a_b_c" and len(set(odd)) == 4
    assert all("/" not in name and " " not in name for name in odd)
    assert odd[0].startswith("x=a_b_c-") and len(odd[0]) == len("x=a_b_c-") + 8
    assert combination_name({"x": "a/b c"}) == odd[0]  # stable
    assert len(combination_name({"x": "y" * 500})) <= 130
    with pytest.raises(ValueError, match=r"equal length, received lengths: \{'a': 2, 'b': 1\}"):
        combinations({"a": [1, 2], "b": [1]}, mode="zip")
    with pytest.raises(ValueError, match=r"params\['a'\] must be a list of values"):
        combinations({"a": "12"})
    with pytest.raises(ValueError, match=r"params\['a'\] must not be empty"):
        combinations({"a": []})
    with pytest.raises(ValueError, match="repeats of: \\['a=1'\\]"):
        combinations({"a": [1, 1]})
    with pytest.raises(ValueError, match="mode must be one of 'grid', 'zip', received: 'all'"):
        combinations(GRID, mode="all")


def test_sweep_plot_draws_a_line_per_other_parameter_and_leaves_failures_out(local):
    result = SweepResult.load(local["out"])
    assert result.parameters == ["a", "b"] and result.key_metric() == "accuracy"
    figure = result.plot("product", x="a")
    ax = figure.axes[0]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.lines}
    assert lines == {"b=10": ([1.0, 2.0], [10.0, 20.0]), "b=20": ([1.0], [20.0])}
    assert "1 failed run(s) not shown" in ax.get_title()
    assert result.figure_ is figure and result.ax_ is ax
    with pytest.raises(ValueError, match="metric must be one of the metrics"):
        result.plot("loss")
    with pytest.raises(ValueError, match="x must be one of the parameters"):
        result.plot("product", x="product")


def test_batch_size_table_and_figure_set_ours_beside_the_published_study(tmp_path):
    rows = [{"name": f"batch_size={bs},epochs={ep}", "batch_size": bs, "epochs": ep,
             "status": "ok", "error": "", "seconds": 9.0, "train_seconds": 100 / bs + ep,
             "images_per_second": 10.0 * bs, "test_accuracy": 0.9 - bs / 1000,
             "metric_epochs": ep, "resources_process_rss_peak_mib": 500.0 + bs}
            for ep in (2, 1) for bs in (64, 16)]
    rows.append({"name": "batch_size=32,epochs=1", "batch_size": 32, "epochs": 1,
                 "status": "failed", "error": "boom", "seconds": 1.0})
    table = pd.DataFrame(rows)
    result = SweepResult(table, tmp_path, ["batch_size", "epochs"],
                         [c for c in table.columns if c not in
                          ("name", "batch_size", "epochs", "status", "error", "seconds")])
    study = batch_size_table(result)
    assert list(study.columns) == ["batch_size", "epochs", "train_seconds", "images_per_second",
                                   "test_accuracy", "peak_ram_mib", "peak_gpu_mib"]
    assert list(zip(study["epochs"], study["batch_size"])) == [(1, 16), (1, 64), (2, 16),
                                                                (2, 64)]
    assert list(study["peak_ram_mib"]) == [516.0, 564.0, 516.0, 564.0]
    assert study["peak_gpu_mib"].isna().all()  # no GPU monitored: NaN, not zero
    published = published_batch_size_study()
    v100 = published[published["study"].str.contains("V100")]
    assert list(v100["batch_size"]) == [1024, 2048, 4096, 8192, 16384, 32768]
    assert list(v100["accuracy"]) == [0.9887, 0.9892, 0.9900, 0.9875, 0.9829, 0.9628]
    assert list(v100["train_seconds"]) == [159, 100, 73, 67, 58, 66]  # 2:39 ... 1:06
    assert set(published.attrs["sources"]) == set(published["study"])
    for source in published.attrs["sources"].values():
        assert {"authors", "title", "venue", "year", "description"} <= set(source)

    figure = plots.batch_size_study(study, published)
    assert len(figure.axes) == 6
    ours_time, ours_memory, theirs_time = figure.axes[0], figure.axes[2], figure.axes[3]
    assert [line.get_label() for line in ours_time.lines] == ["epochs=1", "epochs=2"]
    assert list(ours_time.lines[0].get_xdata()) == [16, 64]
    assert "GPU not measured" in ours_memory.get_title()
    assert len(theirs_time.lines) == 2  # the V100 study and the PyTorch digit model
    assert figure.axes[5].lines[0].get_ydata().tolist() == [8.0, 20.0]  # DeepLabv3+ memory
    with pytest.raises(ValueError, match="a sweep over batch_size"):
        batch_size_table(SweepResult(table, tmp_path, ["epochs"], []))



def test_slurm_cluster_gets_its_options_and_one_job_per_worker(monkeypatch):
    """Without SLURM here: a LocalCluster stands in for dask_jobqueue.SLURMCluster."""
    import dask_jobqueue
    from distributed import LocalCluster

    from workbench._cluster import dask_client  # what sweep's --cluster slurm starts

    made = {}

    class FakeSLURMCluster(LocalCluster):
        def __init__(self, **options):
            made["options"] = options
            super().__init__(n_workers=0, processes=False, dashboard_address=None)
            made["address"] = self.scheduler_address

        def scale(self, n=None, jobs=0, **kwargs):
            if jobs:
                made["jobs"] = jobs
            else:
                super().scale(n, **kwargs)

    monkeypatch.setattr(dask_jobqueue, "SLURMCluster", FakeSLURMCluster)
    with dask_client("slurm", jobs=3, cluster_options={"cores": 8, "memory": "32GB"}) as client:
        assert client.scheduler.address == made["address"]
    assert made["options"] == {"cores": 8, "memory": "32GB"} and made["jobs"] == 3
    assert client.status == "closed"


def test_one_line_joins_whitespace_and_never_leaves_an_error_blank():
    assert one_line("a\n  b\tc ") == "a b c"
    assert one_line(ValueError("x\n\ny")) == "x y"
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert one_line("") == ""


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_leaves_no_process_and_a_restart_redoes_its_runs(tmp_path):
    """The workers and their kernels end with the sweep; the runs in flight run again."""
    import signal
    import subprocess
    import sys

    import psutil

    book = write_notebook(tmp_path / "hold.ipynb", PARAMETERS + '\nhold = ""')
    cells = nbformat.read(book, as_version=4)
    cells.cells[1].source += ("\nimport time\nwhile hold and os.path.exists(hold):\n"
                              "    time.sleep(0.1)")
    nbformat.write(cells, book)
    out, counter, hold = tmp_path / "out", tmp_path / "count.txt", tmp_path / "hold"
    hold.touch()
    command = [sys.executable, "-m", "workbench.cli", "sweep", str(book), "--out", str(out),
               "--param", "a=1,2", "--param", "b=10", "--set", f"counter={counter}",
               "--set", f"hold={hold}", "--workers", "2"]
    sweep_process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
    try:
        deadline = time.monotonic() + 180
        while len(executions(counter)) < 2 and time.monotonic() < deadline:  # both in flight
            time.sleep(0.2)
        assert len(executions(counter)) == 2, sweep_process.stderr.read() \
            if sweep_process.poll() is not None else "the runs did not start"
        family = psutil.Process(sweep_process.pid).children(recursive=True)
        assert len(family) >= 4  # two workers, each driving a kernel
        sweep_process.send_signal(signal.SIGKILL)
        _, stderr = sweep_process.communicate(timeout=30)
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, [process.cmdline() for process in alive]
        assert "without encryption" not in stderr  # the kernels' start-up warning
    finally:
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                process.kill()
    assert not (out / "results.csv").exists() or \
        (pd.read_csv(out / "results.csv")["status"] != "ok").all()  # nothing finished

    hold.unlink()
    result = sweep(book, out, {"a": [1, 2], "b": [10]},
                   fixed={"counter": str(counter), "hold": str(hold)}, progress="none")
    assert list(result.table["status"]) == ["ok", "ok"]
    assert list(result.table["product"]) == [10, 20]
    assert len(executions(counter)) == 4  # both runs in flight ran again
