"""``make demo``: the whole workflow on the bundled offline sample data, headless.

The demo is one setting of the notebooks' parameters, their defaults: the sample data in
``data/sample`` and everything the notebooks write in ``runs/demo``, relative to the project
folder. So after ``make demo`` every notebook opened in JupyterLab runs unchanged. This writes the
sample data if missing, then runs notebooks 1 to 6 with papermill, exactly as a user would run
them, leaving the executed notebooks, the run directories and their figures under ``--runs``::

    python -m workbench.demo --data data/sample --runs runs/demo
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PROJECT = NOTEBOOKS.parent  # what the notebooks' relative paths are relative to
DATA, RUNS = "data/sample", "runs/demo"  # the notebooks' defaults
DEMO_RUN = "fine_tune/two_stage-seed0"  # the run notebooks 4 to 6 look at, inside RUNS
# Beyond the paths, the demo's one setting of its own: the bundled digits already vary in size,
# position and clutter, and augmentation lowered their test accuracy (README, "Augmentation"),
# so the demo trains without it; notebook 3's default ("auto") turns it on for few photos.
DEMO_SETTINGS = {"03_fine_tune.ipynb": {"augment": "off"}}


def demo_parameters(data: str | Path = DATA, runs: str | Path = RUNS) -> dict:
    """The path parameters of each demo notebook: with the default folders they are the
    notebooks' own defaults (a test checks it); other folders change only these."""
    from workbench.runs import RunDir

    data, runs = Path(data), Path(runs)
    run = str(runs / DEMO_RUN)
    return {
        "01_prepare_data.ipynb": {"data_dir": str(data / "target"),
                                  "out_dir": str(runs / "splits" / "target")},
        "02_pretrain_source.ipynb": {"source_dir": str(data / "source"),
                                     "splits_dir": str(runs / "splits" / "source"),
                                     "run_dir": str(runs / "source")},
        "03_fine_tune.ipynb": {"splits_dir": str(runs / "splits" / "target"),
                               "source_model": str(RunDir(runs / "source").model_file("final")),
                               "runs_dir": str(runs / "fine_tune")},
        "04_inspect.ipynb": {"run_dir": run},
        "05_evaluate.ipynb": {"run_dir": run},
        "06_classify.ipynb": {"run_dir": run},
    }


def run_notebook(name: str, parameters: dict, out_dir: Path) -> Path:
    """Executes ``notebooks/<name>`` headless into ``out_dir`` and returns the executed copy."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(output), parameters=parameters,
                               cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
                               log_output=True)
    return output


def save_run_figures(run_dir: Path) -> list[Path]:
    """Saves the figures of notebook 4 as PNG files in the run directory (for the README too)."""
    from workbench import inspect, plots
    from workbench.models import load_model
    from workbench.runs import RunDir

    run = RunDir(run_dir)
    figures = {
        "filters": inspect.compare_filters(load_model(run.initial_model_path()),
                                           load_model(run.model_path("final"))),
        "resources": plots.resource_dashboard(run.resources, history=run.history),
        "weight_stats": plots.weight_stats(run.weight_stats),
    }
    return [run.write_figure(name, figure, dpi=90) for name, figure in figures.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DATA, help="sample data folder, relative to the "
                        "project folder (default %(default)s)")
    parser.add_argument("--runs", default=RUNS, help="where runs and notebooks go, relative to "
                        "the project folder (default %(default)s)")
    args = parser.parse_args(argv)
    # as the notebooks resolve them (workbench.notebook.project_root); absolute paths stay
    project = Path(os.environ.get("WORKBENCH_ROOT") or PROJECT)
    data, runs = project / args.data, project / args.runs
    os.environ.setdefault("WORKBENCH_PROGRESS", "plain")  # the kernel cannot tell it is headless
    # papermill logs what the notebooks print (one line per epoch) at INFO
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)

    from workbench.data import sample

    started = time.monotonic()
    missing = [name for name in sample.DATASETS if not (data / name).is_dir()]
    if missing:
        print(f"Writing the sample data ({', '.join(missing)}) to {data} ...", flush=True)
        sample.write_sample_data(data, datasets=missing)
    for name, parameters in demo_parameters(args.data, args.runs).items():
        print(f"\n=== {name} ===", flush=True)
        run_notebook(name, {**parameters, **DEMO_SETTINGS.get(name, {})}, runs / "notebooks")
    saved = save_run_figures(runs / DEMO_RUN)
    print(f"Figures: {', '.join(str(path) for path in saved)}")
    print(f"\nDone in {time.monotonic() - started:.0f}s. Executed notebooks: {runs / 'notebooks'}; "
          f"runs and figures: {runs}. Open them with 'make lab'.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
