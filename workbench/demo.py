"""``make demo``: the whole workflow on the bundled offline sample data, headless.

Writes the sample data if missing, then runs the numbered notebooks with papermill, exactly as a
user would run them in JupyterLab, leaving the executed notebooks, the run directories and their
figures under ``--runs``::

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


def demo_parameters(data: Path, runs: Path) -> dict:
    """The parameters each demo notebook gets: every path inside ``data`` and ``runs``."""
    return {
        "01_prepare_data.ipynb": {"data_dir": str(data / "target"),
                                  "out_dir": str(runs / "splits" / "target")},
        "02_pretrain_source.ipynb": {"source_dir": str(data / "source"),
                                     "splits_dir": str(runs / "splits" / "source"),
                                     "run_dir": str(runs / "source"), "progress": "lines"},
        "03_fine_tune.ipynb": {"splits_dir": str(runs / "splits" / "target"),
                               "source_model": str(runs / "source" / "model.keras"),
                               "runs_dir": str(runs / "fine_tune")},
        "04_inspect.ipynb": {"run_dir": str(runs / "fine_tune" / "two_stage-seed0"),
                             "source_model": str(runs / "source" / "model.keras")},
        "05_evaluate.ipynb": {"run_dir": str(runs / "fine_tune" / "two_stage-seed0")},
        "06_classify.ipynb": {"run_dir": str(runs / "fine_tune" / "two_stage-seed0")},
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


def save_run_figures(run_dir: Path, source_model: Path) -> list[Path]:
    """Saves the figures of notebook 4 as PNG files in the run directory (for the README too)."""
    from workbench import inspect, plots
    from workbench.models import load_model
    from workbench.monitor import read_resources
    from workbench.runs import RunDir

    figures = {
        "filters.png": inspect.compare_filters(load_model(source_model),
                                               load_model(run_dir / "model.keras")),
        "resources.png": plots.resource_dashboard(read_resources(run_dir),
                                                  history=RunDir(run_dir).history()),
        "weight_stats.png": plots.weight_stats(inspect.read_weight_stats(run_dir)),
    }
    for name, figure in figures.items():
        figure.savefig(run_dir / name, dpi=90)
    return [run_dir / name for name in figures]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/sample", help="sample data folder")
    parser.add_argument("--runs", default="runs/demo", help="where runs and notebooks go")
    args = parser.parse_args(argv)
    data, runs = Path(args.data).resolve(), Path(args.runs).resolve()
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
    for name, parameters in demo_parameters(data, runs).items():
        print(f"\n=== {name} ===", flush=True)
        run_notebook(name, parameters, runs / "notebooks")
    saved = save_run_figures(runs / "fine_tune" / "two_stage-seed0",
                             runs / "source" / "model.keras")
    print(f"Figures: {', '.join(str(path) for path in saved)}")
    print(f"\nDone in {time.monotonic() - started:.0f}s. Executed notebooks: {runs / 'notebooks'}; "
          f"runs and figures: {runs}. Open them with 'make lab'.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
