"""The batch-size study (notebook 07): training time, accuracy and memory against batch size.

A :func:`workbench.studies.sweep.sweep` of a training notebook over ``batch_size`` (and
``epochs``) leaves one ``metrics.json`` per run; :func:`batch_size_table` turns them into the
study's table, and :func:`published_batch_size_study` reads the published results it is set
beside (from ``published.json``, see :mod:`workbench.studies.published`)::

    study = sweep("02_pretrain_source.ipynb", out, {"batch_size": [16, 32], "epochs": [2]})
    plots.batch_size_study(batch_size_table(study), published_batch_size_study())
"""

from __future__ import annotations

import pandas as pd

from workbench._checks import UsageError
from workbench.studies.published import read_published
from workbench.studies.sweep import SweepResult

# metrics.json keys (written by workbench.training.train.finetune) behind the study's columns
_STUDY_COLUMNS = {"train_seconds": "train_seconds", "images_per_second": "images_per_second",
                  "test_accuracy": "test_accuracy",
                  "peak_ram_mib": "resources_process_rss_peak_mib",
                  "peak_gpu_mib": "resources_gpu_memory_peak_mib"}


def published_batch_size_study() -> pd.DataFrame:
    """The published batch-size results the study compares its shape against.

    Returns:
        A DataFrame with columns study, batch_size, accuracy, train_seconds, peak_gpu_gb (NaN
        where a study does not report the figure). ``attrs["sources"]`` maps each study to
        where its numbers come from (``authors``, ``title``, ``venue``, ``year`` where
        recorded, and a ``description``).
    """
    table = read_published("batch_size_study")
    columns = ["study", *table["columns"]]
    rows = [[study["study"], *row] for study in table["studies"] for row in study["rows"]]
    frame = pd.DataFrame(rows, columns=columns)
    frame[columns[2:]] = frame[columns[2:]].astype(float)
    frame.attrs["sources"] = {study["study"]: study["source"] for study in table["studies"]}
    return frame


def batch_size_table(result: SweepResult) -> pd.DataFrame:
    """The batch-size study's table from a sweep of a training notebook over batch_size.

    Args:
        result: a :class:`SweepResult` whose notebook trained with ``finetune`` (its
            ``metrics.json`` has train_seconds, images_per_second, test_accuracy and the
            ``resources_*`` peaks of the resource monitor).

    Returns:
        One row per finished run, sorted by epochs and batch size: batch_size, epochs,
        train_seconds, images_per_second, test_accuracy, peak_ram_mib (peak resident memory of
        the training process), peak_gpu_mib (NaN when no GPU was monitored).

    Raises:
        ValueError: ``result`` is not a SweepResult over ``batch_size``.
    """
    if not isinstance(result, SweepResult) or "batch_size" not in result.parameters:
        got = result.parameters if isinstance(result, SweepResult) else type(result).__name__
        raise UsageError(f"result must be a SweepResult of a sweep over batch_size, received: "
                         f"{got}")
    ok = result.ok
    table = pd.DataFrame({"batch_size": ok["batch_size"].astype(int),
                          "epochs": ok["epochs"] if "epochs" in ok.columns else float("nan")})
    for column, key in _STUDY_COLUMNS.items():
        table[column] = pd.to_numeric(ok[key], errors="coerce") if key in ok.columns \
            else float("nan")
    return table.sort_values(["epochs", "batch_size"]).reset_index(drop=True)
