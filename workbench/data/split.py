"""Stratified, seeded, stable train/val/test splits of a scanned dataset.

:func:`split` takes the table :func:`workbench.data.scan.scan` returns, drops classes with too few
valid images and gives every accepted image a split. The assignment depends only on the content
of each image (its sha256) and the seed, never on its position in a shuffled list:

* **Fractions** (``val``, ``test``): each distinct content gets ``u = sha256(f"{seed}:{sha}")``
  read as a number in [0, 1); it goes to test if ``u < test``, to val if ``u < test + val``, else
  to train. A class's split sizes therefore follow the fractions *in expectation*, not exactly
  (a class of 5 images may get no val image), but adding, removing or renaming images never moves
  any other image.
* **Counts** (``counts=(train, val, test)``, one entry may be ``"rest"``): within each class the
  distinct contents are ordered by the same key and dealt to train, then val, then test, so every
  class gets exactly the counts asked for. Adding images to one class never moves an image of
  another class.

Exact copies (same sha256) always land in the same split, so no content leaks between train and
test. The same inputs give the same outputs, byte for byte.

Example::

    from workbench.data.scan import scan
    from workbench.data.split import split
    result = split(scan("data/flowers"), min_per_class=30, counts=(10, "rest", 10))
    result.summary()
    result.write("runs/flowers/data")

A split folder is written whole or not at all: into a sibling temporary folder that then takes
its place in one step. Writing the same split again leaves it untouched; replacing a different
split (other settings, or other images) needs ``overwrite=True``, since the runs trained on it
would then evaluate on another test set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from workbench._checks import (MissingPath, PathInTheWay, UsageError, check_bool,
                               check_folder_path, check_int, check_number, renamed_arguments)
from workbench._progress import progress_argument
from workbench._io import atomic_path, remove_stale_temporaries
from workbench.data.scan import OK, scan
from workbench.data.splitdir import SplitFolder

TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)
REST = "rest"

# Why an accepted image is left out of every split (``rejected.reason``), beside scan's REASONS.
BELOW_MIN_PER_CLASS = "class below min_per_class"
TOO_SMALL_FOR_COUNTS = "class too small for counts"
BEYOND_COUNTS = "beyond fixed counts"
SPLIT_REASONS = (BELOW_MIN_PER_CLASS, TOO_SMALL_FOR_COUNTS, BEYOND_COUNTS)
CLASS_REASONS = (BELOW_MIN_PER_CLASS, TOO_SMALL_FOR_COUNTS)  # the whole class is dropped

REJECTED_COLUMNS = ("path", "label", "reason", "detail")
FILES = ("splits.csv", "rejected.csv", "train.txt", "val.txt", "test.txt", "labels.txt",
         "report.md")
META = "split.json"
CACHE = "cache"  # the image cache a split folder may hold (SplitFolder.cache_dir)

# What SplitResult.write did: wrote a new folder, replaced another split, or found it up to date.
WRITTEN, REPLACED, UNCHANGED = "written", "replaced", "unchanged"


class SplitFolderExists(PathInTheWay):
    """The split folder holds another split and ``overwrite`` was not given.

    ``str(error)`` names the library's keywords; :meth:`message` can name a command's flags.

    Attributes:
        folder: the split folder.
        state: what it holds and how it differs, e.g. "... made with other settings (seed 0 -> 1)".
    """

    def __init__(self, folder, state: str):
        self.folder, self.state = Path(folder), state
        super().__init__(self.message())

    def message(self, *, overwrite: str = "overwrite=True", out: str = "out") -> str:
        """The one-line error, naming ``overwrite`` and ``out`` as the caller spells them."""
        return (f"{self.state}; pass {overwrite} to replace it (runs trained on it will then "
                f"evaluate on a different test set), or choose another {out}")

class NoClassKept(UsageError):
    """Every class was dropped (too few images for ``min_per_class`` or for the counts), so
    there is nothing to split; nothing was written, so other settings need no ``overwrite``.

    Attributes:
        result: the :class:`SplitResult` (its ``report()`` lists the dropped classes and the
            rejected files).
    """

    def __init__(self, result: SplitResult):
        self.result = result
        super().__init__(_why_no_class(result.dropped, result.settings))


def _why_no_class(dropped: pd.DataFrame, settings: dict, shown: int = 8) -> str:
    """One message: what each reason asks for, and what the classes have."""
    if not len(dropped):
        return "no class was kept, so nothing was written: the folder holds no valid image"
    parts = []
    for reason, rows in dropped.groupby("reason", sort=False):
        have = ", ".join(f"{row.label} {row.images}" for row in rows.head(shown).itertuples())
        have += f" and {len(rows) - shown} more" if len(rows) > shown else ""
        if reason == TOO_SMALL_FOR_COUNTS:
            counts = settings["counts"]
            need = sum(value for value in counts if value != REST)
            asked = f"counts {_show_counts(counts)} (train, val, test) need {need} distinct " \
                    f"images per class"
        else:
            asked = f"min_per_class={settings['min_per_class']} needs as many valid images"
        parts.append(f"{asked}; {len(rows)} class{'es' if len(rows) > 1 else ''} "
                     f"{'have' if len(rows) > 1 else 'has'} fewer: {have}")
    return (f"no class was kept, so nothing was written: {'; '.join(parts)}. "
            "Ask for fewer images per class (e.g. 5,5,rest, or fractions 0.2,0.2), lower "
            "min_per_class, or add images")


class OneClassKept(UsageError):
    """Only one class was kept, and a classifier needs two; nothing was written.

    Attributes:
        result: the :class:`SplitResult` (its ``report()`` lists the class and any dropped).
    """

    def __init__(self, result: SplitResult, data_dir, list_file=None):
        self.result = result
        name = result.classes[0]
        images = int((result.table["label"] == name).sum())
        dropped = len(result.dropped)
        others = (f"; {dropped} other class{'es were' if dropped > 1 else ' was'} dropped "
                  "(see the report)") if dropped else ""
        where = (f"the labels of {str(list_file)!r}" if list_file is not None else
                 f"the sub-folders of {str(data_dir)!r}: is it one class's folder, or the "
                 "folder above the dataset's?")
        super().__init__(f"only one class was kept ({name!r}, {images} images) and a "
                         f"classifier needs at least two, so nothing was written{others}. The "
                         f"classes are {where}")


_DEFAULT_VAL = 0.1
_DEFAULT_TEST = 0.1


def parse_counts(text: str) -> tuple:
    """Parses ``"10,rest,10"`` into ``(10, "rest", 10)``.

    Raises:
        ValueError: naming ``counts`` and the text received, if it is not three comma-separated
            non-negative integers of which at most one is ``rest``.
    """
    if not isinstance(text, str):
        raise UsageError(f"counts must be a string like '10,rest,10', received: {text!r}")
    parts = [part.strip().lower() for part in text.split(",")]
    if len(parts) != 3:
        raise UsageError("counts must be train,val,test (three comma-separated numbers, one may "
                         f"be 'rest'), received: {text!r}")
    values = []
    for part in parts:
        if part == REST:
            values.append(REST)
        elif part.isdigit():
            values.append(int(part))
        else:
            raise UsageError("counts entries must be non-negative integers or 'rest', "
                             f"received: {text!r}")
    return _check_counts(tuple(values), shown=text)


def _check_counts(counts, *, shown=None) -> tuple:
    shown = counts if shown is None else shown
    if isinstance(counts, str):
        return parse_counts(counts)
    if not isinstance(counts, (tuple, list)) or len(counts) != 3:
        raise UsageError("counts must be (train, val, test), three entries of which at most one "
                         f"is 'rest', received: {shown!r}")
    values = []
    for name, value in zip(SPLITS, counts):
        if value == REST and isinstance(value, str):
            values.append(REST)
        else:
            values.append(check_int(f"counts {name} entry", value, minimum=0))
    if values.count(REST) > 1:
        raise UsageError(f"counts may have at most one 'rest' entry, received: {shown!r}")
    if REST not in values and sum(values) == 0:
        raise UsageError(f"counts must ask for at least one image, received: {shown!r}")
    return tuple(values)


@dataclass
class SplitResult:
    """What :func:`split` returns.

    Attributes:
        table: one row per accepted image: ``path``, ``label``, ``label_index`` (position in
            ``classes``), ``split`` (``"train"``, ``"val"`` or ``"test"``), then the scan's
            columns; sorted by path.
        rejected: one row per file left out: ``path``, ``label``, ``reason``, ``detail``; the
            scan's rejected files plus the images of dropped classes; sorted by path.
        classes: the sorted names of the classes kept.
        dropped: one row per dropped class: ``label``, ``images``, ``reason``, ``detail``.
        settings: the options the split was made with.
        outcome: what the last :meth:`write` did: ``"written"`` (a new folder),
            ``"replaced"`` (another split, with ``overwrite``) or ``"unchanged"`` (the folder
            already held this split); ``""`` before any write.
        note: one line saying the same, naming the folder (for the terminal or a notebook).
    """

    table: pd.DataFrame
    rejected: pd.DataFrame
    classes: list[str]
    dropped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["label", "images", "reason", "detail"]))
    settings: dict = field(default_factory=dict)
    outcome: str = ""
    note: str = ""

    def summary(self) -> pd.DataFrame:
        """Images per class and split: columns label, label_index, train, val, test, total."""
        counts = (self.table.groupby(["label", "split"]).size()
                  .unstack(fill_value=0)
                  .reindex(index=self.classes, columns=list(SPLITS), fill_value=0))
        summary = pd.DataFrame({"label": list(self.classes),
                                "label_index": range(len(self.classes))})
        for name in SPLITS:
            summary[name] = counts[name].to_numpy(dtype="int64")
        summary["total"] = summary[list(SPLITS)].sum(axis=1).astype("int64")
        return summary

    def report(self, *, max_files: int | None = None) -> str:
        """A markdown report: images per class and split, dropped classes, rejected files.

        Args:
            max_files: list at most this many rejected files (the count by reason is always
                complete); ``None`` lists them all.
        """
        if max_files is not None:
            max_files = check_int("max_files", max_files, minimum=0)
        summary = self.summary()
        lines = ["# Split report", "", _describe_settings(self.settings), ""]
        files = self.rejected[~self.rejected["reason"].isin(CLASS_REASONS)]
        lines += [f"Kept **{int(summary['total'].sum())} images in {len(self.classes)} "
                  f"classes**; dropped {len(self.dropped)} classes "
                  f"({int(self.dropped['images'].sum()) if len(self.dropped) else 0} images); "
                  f"rejected {len(files)} files.", ""]

        lines += ["## Images per class", ""]
        if len(summary):
            lines += ["| label_index | class | train | val | test | total |",
                      "|---:|---|---:|---:|---:|---:|"]
            for row in summary.itertuples(index=False):
                lines.append(f"| {row.label_index} | {_cell(row.label)} | {row.train} | "
                             f"{row.val} | {row.test} | {row.total} |")
            totals = summary[list(SPLITS) + ["total"]].sum()
            lines.append(f"| | **total** | {totals[TRAIN]} | {totals[VAL]} | {totals[TEST]} | "
                         f"{totals['total']} |")
        else:
            lines.append("No class was kept.")
        empty = [(row.label, name) for row in summary.itertuples(index=False)
                 for name in SPLITS if getattr(row, name) == 0]
        if empty:
            lines += ["", "Empty splits: " + "; ".join(
                f"{_cell(label)} has no {name} image" for label, name in empty) + "."]

        lines += ["", "## Dropped classes", ""]
        if len(self.dropped):
            lines += ["| class | images | reason | detail |", "|---|---:|---|---|"]
            for row in self.dropped.itertuples(index=False):
                lines.append(f"| {_cell(row.label)} | {row.images} | {row.reason} | "
                             f"{_cell(row.detail)} |")
        else:
            lines.append("None.")

        lines += ["", "## Rejected files", ""]
        if len(files):
            by_reason = files.groupby("reason").size().sort_index()
            lines += ["| reason | files |", "|---|---:|"]
            lines += [f"| {reason} | {count} |" for reason, count in by_reason.items()]
            shown = files if max_files is None else files.head(max_files)
            if len(shown):
                lines += ["", "| path | class | reason | detail |", "|---|---|---|---|"]
                for row in shown.itertuples(index=False):
                    lines.append(f"| {_cell(row.path)} | {_cell(row.label)} | {row.reason} | "
                                 f"{_cell(row.detail)} |")
            if len(shown) < len(files):
                lines += ["", f"... and {len(files) - len(shown)} more, listed in rejected.csv."]
        else:
            lines.append("None.")
        return "\n".join(lines) + "\n"

    @renamed_arguments(out_dir="out")
    def write(self, out, *, data_root=None, overwrite: bool = False) -> Path:
        """Writes the split folder ``out`` whole: into a sibling temporary folder that then
        takes its place in one step, so a killed write leaves the old folder or the new one.

        Files: ``splits.csv`` (the table), ``rejected.csv``, ``train.txt``, ``val.txt`` and
        ``test.txt`` (Caffe lists, ``path label_index`` per line, in a seeded shuffled order),
        ``labels.txt`` (one class per line, line ``i`` naming label index ``i``) and
        ``report.md``.

        With ``data_root`` (the folder the paths are relative to) it also writes ``split.json``
        naming that folder relative to ``out`` and the settings, so training finds the
        images from the split folder alone and both folders may move together.

        When ``out`` already holds exactly these files, nothing is written (its image cache
        stays). What a killed write left beside ``out`` is cleared first. Sets
        :attr:`outcome` and :attr:`note`.

        Args:
            out: the split folder: new, empty, or holding a split.
            data_root: the dataset folder, recorded in ``split.json``.
            overwrite: replace a split folder that holds another split (other settings or
                other images); its image cache goes with it.

        Returns:
            ``out`` as a ``Path``.

        Raises:
            SplitFolderExists: ``out`` holds another split and ``overwrite`` is False.
            FileExistsError: ``out`` is a file, or holds files that are not a split's.
        """
        check_bool("overwrite", overwrite)
        out = Path(out)
        texts = self._texts(out, data_root)
        remove_stale_temporaries(out.parent, name=out.name)
        state = _folder_state(out, texts)
        if state == UNCHANGED:
            self.outcome = UNCHANGED
            self.note = (f"{out} is already up to date (same settings, same images); "
                         "nothing was written")
            return out
        if state is not None and not overwrite:
            raise SplitFolderExists(out, state)
        with atomic_path(out) as temporary:
            temporary.mkdir()
            for name, text in texts.items():
                _write_file(temporary / name, text)
        self.outcome = WRITTEN if state is None else REPLACED
        self.note = (f"{'Wrote' if state is None else 'Replaced the split in'} {out}: "
                     f"{', '.join(texts)}")
        return out

    def _texts(self, out_dir: Path, data_root) -> dict:
        """The split folder's files: ``{name: text}``."""
        seed = self.settings.get("seed", 0)
        texts = {
            "splits.csv": self.table.to_csv(index=False, lineterminator="\n"),
            "rejected.csv": self.rejected.to_csv(index=False, lineterminator="\n"),
            "labels.txt": "".join(f"{name}\n" for name in self.classes),
            "report.md": self.report(),
        }
        for name in SPLITS:
            rows = self.table[self.table["split"] == name]
            ordered = sorted(zip(rows["path"], rows["label_index"]),
                             key=lambda item: (_unit(f"{seed}:order:{item[0]}"), item[0]))
            texts[f"{name}.txt"] = "".join(f"{path} {index}\n" for path, index in ordered)
        texts = {name: texts[name] for name in FILES}
        if data_root is not None:
            root = os.path.relpath(Path(data_root).resolve(), out_dir.resolve())
            texts[META] = json.dumps({"data_root": Path(root).as_posix(),
                                      "settings": _json_settings(self.settings)},
                                     indent=2, sort_keys=True) + "\n"
        return texts


def _write_file(path: Path, text: str) -> None:
    """Writes one file of a split folder (into the temporary folder; tests count the calls)."""
    path.write_text(text, encoding="utf-8", newline="\n")


def _folder_state(out_dir: Path, texts: dict) -> str | None:
    """``None`` when ``out_dir`` is missing or empty, ``"unchanged"`` when it holds exactly
    ``texts``, else a sentence on the split it holds and how it differs from ``texts``.

    Raises:
        FileExistsError: ``out_dir`` is a file, or holds files that are not a split's.
    """
    if not check_folder_path("out", out_dir).exists():
        return None
    remove_stale_temporaries(out_dir)  # left inside by an older, file-by-file writer
    names = {path.name for path in out_dir.iterdir()}
    foreign = sorted(names - set(FILES) - {META, CACHE})
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise PathInTheWay(f"out must be a new or empty folder or a split folder, "
                           f"received: {str(out_dir)!r}, which holds {shown}; choose another "
                           "folder (a split folder is replaced whole)")
    if not names - {CACHE}:
        return None
    if names - {CACHE} == set(texts) and all(
            (out_dir / name).read_bytes() == text.encode("utf-8") for name, text in texts.items()):
        return UNCHANGED
    return _difference(out_dir, texts)


def _difference(out_dir: Path, texts: dict) -> str:
    """What ``out_dir`` holds and how it differs from the split in ``texts``, in one sentence."""
    if not (out_dir / "splits.csv").is_file():
        return f"{out_dir} holds an incomplete split folder (no splits.csv)"
    folder = SplitFolder(out_dir)
    try:
        old = folder.table
        held = (f"{out_dir} already holds a split of {len(old)} images in "
                f"{old['label'].nunique()} classes")
    except (OSError, ValueError, KeyError):  # damaged: say so rather than fail
        return f"{out_dir} holds a split folder whose splits.csv cannot be read"
    changed = _meta_change(folder.meta, json.loads(texts[META]) if META in texts else {})
    if changed:
        return f"{held} {changed}"
    new = pd.read_csv(io.StringIO(texts["splits.csv"]), dtype={"path": str, "label": str})
    before = dict(zip(old["path"], old["split"]))
    after = dict(zip(new["path"], new["split"]))
    counts = {"added": len(after.keys() - before.keys()),
              "removed": len(before.keys() - after.keys()),
              "moved to another split": sum(before[path] != after[path]
                                            for path in before.keys() & after.keys())}
    said = ", ".join(f"{count} images {what}" for what, count in counts.items() if count)
    return f"{held} made from other files ({said or 'changed image files or labels'})"


def _meta_change(old: dict, new: dict) -> str | None:
    """How the settings or the dataset folder of two ``split.json`` differ, or None."""
    changes = [f"{key} {_shown(old['settings'].get(key))} -> {_shown(value)}"
               for key, value in new.get("settings", {}).items()
               if "settings" in old and old["settings"].get(key) != value]
    if changes:
        return f"made with other settings ({', '.join(changes)})"
    if new and "data_root" in old and old["data_root"] != new["data_root"]:
        return (f"of another dataset folder (data_root {old['data_root']!r} -> "
                f"{new['data_root']!r})")
    return None


def _refusal_before_scan(out_dir: Path, settings: dict, data_root) -> SplitFolderExists | None:
    """The refusal :meth:`SplitResult.write` will give when ``out_dir``'s ``split.json``
    already shows other settings or another dataset folder (known before the long scan)."""
    try:
        folder = SplitFolder(out_dir)
        old, held = folder.meta, len(folder.table)
        classes = folder.table["label"].nunique()
    except (OSError, ValueError, KeyError):  # no split here, or a damaged one: write decides
        return None
    root = Path(os.path.relpath(Path(data_root).resolve(), out_dir.resolve())).as_posix()
    changed = _meta_change(old, {"data_root": root, "settings": _json_settings(settings)})
    if changed is None:
        return None
    return SplitFolderExists(out_dir, f"{out_dir} already holds a split of {held} images in "
                                      f"{classes} classes {changed}")


def _shown(value) -> str:
    return ",".join(str(item) for item in value) if isinstance(value, list) else str(value)


def split(table: pd.DataFrame, *, min_per_class: int = 1, val: float | None = None,
          test: float | None = None, counts=None, seed: int = 0) -> SplitResult:
    """Splits the accepted images of a scanned dataset into train, val and test.

    Args:
        table: a DataFrame with at least ``path`` and ``label``, normally from
            :func:`workbench.data.scan.scan`; rows whose ``status`` is not ``"ok"`` are passed to
            ``rejected``. Images are grouped by ``sha256`` (by path where it is missing).
        min_per_class: classes with fewer valid images are dropped (reason
            ``"class below min_per_class"``).
        val: the expected fraction of each class that goes to validation (default 0.1).
        test: the expected fraction of each class that goes to test (default 0.1).
        counts: instead of fractions (not with ``val`` or ``test``), exact numbers of distinct
            images per class, ``(train, val, test)``, one of which may be ``"rest"``
            (``(10, "rest", 10)``: ten train, ten test, the rest validation), or the same as a
            string ``"10,rest,10"``.
            Classes with fewer distinct images than the fixed entries need are dropped (reason
            ``"class too small for counts"``); without ``"rest"`` the images beyond the counts
            are left out (reason ``"beyond fixed counts"``).
        seed: changes the assignment; the same seed gives the same split.

    Returns:
        A :class:`SplitResult`.

    Raises:
        ValueError: naming the argument and the value received, if an option is invalid, if
            ``counts`` is given together with ``val`` or ``test``, or if ``table`` lacks columns.
    """
    settings = _check_settings(table, min_per_class=min_per_class, val=val, test=test,
                               counts=counts, seed=seed)
    data = table.reset_index(drop=True)
    scan_rejected, accepted = _accepted_rows(data, settings["seed"])
    distinct = accepted.drop_duplicates(["label", "_key"])["label"].value_counts()
    counts = settings["counts"]
    need = sum(value for value in counts if value != REST) if counts is not None else 0
    dropped, left_out, live = _drop_classes(accepted, settings, distinct, need)
    assigned, beyond = _assign_splits(live, settings, distinct, need)
    kept, classes = _kept_rows(live, assigned, data.columns)
    rejected = pd.concat([scan_rejected, pd.DataFrame(left_out + beyond,
                                                      columns=list(REJECTED_COLUMNS))],
                         ignore_index=True)
    rejected = rejected.sort_values("path", kind="stable").reset_index(drop=True)
    dropped = pd.DataFrame(dropped, columns=["label", "images", "reason", "detail"])
    return SplitResult(table=kept, rejected=rejected, classes=classes, dropped=dropped,
                       settings=settings)


def _check_settings(table, *, min_per_class, val, test, counts, seed) -> dict:
    """The checked settings of :func:`split` (``val`` and ``test`` None when ``counts`` is
    given), after checking that ``table`` is a DataFrame with ``path`` and ``label``."""
    if not isinstance(table, pd.DataFrame):
        raise UsageError(f"table must be a pandas DataFrame (from scan), received: "
                         f"{type(table).__name__}")
    missing = [column for column in ("path", "label") if column not in table.columns]
    if missing:
        raise UsageError(f"table must have the columns path and label, received columns: "
                         f"{list(table.columns)}")
    min_per_class = check_int("min_per_class", min_per_class, minimum=1)
    seed = check_int("seed", seed)
    if counts is not None:
        given = {name: value for name, value in (("val", val), ("test", test))
                 if value is not None}
        if given:
            shown = ", ".join(f"{name}={value!r}" for name, value in given.items())
            raise UsageError("give either counts or the fractions val and test, not both; "
                             f"received: counts={counts!r}, {shown}")
        counts = _check_counts(counts)
    else:
        val = check_number("val", _DEFAULT_VAL if val is None else val, minimum=0.0,
                           maximum=1.0)
        test = check_number("test", _DEFAULT_TEST if test is None else test, minimum=0.0,
                            maximum=1.0)
        if val + test > 1.0:
            raise UsageError(f"val + test must be <= 1, received: val={val!r}, test={test!r}")
    return {"min_per_class": min_per_class, "val": val, "test": test, "counts": counts,
            "seed": seed}


def _accepted_rows(data: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rejected rows of the scan, and the accepted ones with their content key (``_key``:
    the sha256, or the path where it is missing) and its number in [0, 1) (``_u``)."""
    ok = (data["status"].astype(str) == OK) if "status" in data.columns else pd.Series(
        True, index=data.index)
    scan_rejected = _rejected_rows(data[~ok])
    accepted = data[ok].copy()
    accepted["path"] = accepted["path"].astype(str)
    accepted["label"] = accepted["label"].astype(str)
    if "sha256" in accepted.columns:
        sha = accepted["sha256"].fillna("").astype(str)
        keys = sha.where(sha != "", "path:" + accepted["path"])
    else:
        keys = "path:" + accepted["path"]
    unit = {key: _unit(f"{seed}:{key}") for key in keys.unique()}
    accepted["_key"] = keys
    accepted["_u"] = keys.map(unit)
    return scan_rejected, accepted


def _drop_classes(accepted: pd.DataFrame, settings: dict, distinct: pd.Series, need: int):
    """The classes dropped (``(label, images, reason, detail)`` each, below ``min_per_class``
    or too small for the counts), a rejected row for each of their images, and the rows of
    the classes kept."""
    min_per_class, counts = settings["min_per_class"], settings["counts"]
    images = accepted["label"].value_counts()
    dropped = []
    for label in sorted(images.index):
        if images[label] < min_per_class:
            dropped.append((label, int(images[label]), BELOW_MIN_PER_CLASS,
                            f"{images[label]} valid images, min_per_class={min_per_class}"))
        elif distinct[label] < need:
            dropped.append((label, int(images[label]), TOO_SMALL_FOR_COUNTS,
                            f"{distinct[label]} distinct valid images, counts="
                            f"{_show_counts(counts)} need {need}"))
    dropped_labels = {label: (reason, detail) for label, _, reason, detail in dropped}
    is_dropped = accepted["label"].isin(dropped_labels)
    left_out = [{"path": row.path, "label": row.label, "reason": dropped_labels[row.label][0],
                 "detail": f"class {row.label!r}: {dropped_labels[row.label][1]}"}
                for row in accepted[is_dropped].itertuples()]
    return dropped, left_out, accepted[~is_dropped]


def _assign_splits(live: pd.DataFrame, settings: dict, distinct: pd.Series, need: int):
    """The split of every row of ``live`` (``""`` beyond fixed counts), by fractions or by
    counts, and a rejected row for each image beyond the counts."""
    counts, val, test = settings["counts"], settings["val"], settings["test"]
    beyond = []
    if counts is None:
        u = live["_u"].to_numpy(dtype=float)
        names = np.where(u < test, TEST, np.where(u < test + val, VAL, TRAIN))
        assigned = pd.Series(names, index=live.index, dtype=object)
    else:
        assigned, used = _assign_counts(live, counts, distinct, need)
        for row in live[assigned == ""].itertuples():
            beyond.append({"path": row.path, "label": row.label, "reason": BEYOND_COUNTS,
                           "detail": f"class {row.label!r} has {distinct[row.label]} distinct "
                                     f"images, counts={_show_counts(counts)} use "
                                     f"{used[row.label]}"})
    return assigned, beyond


def _kept_rows(live: pd.DataFrame, assigned: pd.Series, columns) -> tuple[pd.DataFrame, list]:
    """The rows given a split, with ``label_index`` and ``split`` after ``path`` and
    ``label`` (then the table's other ``columns``), sorted by path; and the classes kept."""
    kept = live[assigned != ""].copy()
    classes = sorted(kept["label"].unique().tolist())
    kept["label_index"] = kept["label"].map({name: i for i, name in enumerate(classes)})
    kept["label_index"] = kept["label_index"].astype("int64")
    kept["split"] = assigned[kept.index].astype(str)
    first = ["path", "label", "label_index", "split"]
    rest = [column for column in columns if column not in first]
    kept = kept[first + rest].sort_values("path", kind="stable").reset_index(drop=True)
    return kept, classes


def _unit(text: str) -> float:
    """A number in [0, 1) from the sha256 of ``text``."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) / 2 ** 256


def _assign_counts(live: pd.DataFrame, counts: tuple, distinct: pd.Series, need: int):
    """Deals each class's content groups, ordered by their key, to train, val, then test.

    Returns:
        The split of every row of ``live`` (``""`` beyond the counts) and, per label, how many
        content groups the counts use.
    """
    groups = (live.drop_duplicates(["label", "_key"])[["label", "_key", "_u"]]
              .sort_values(["label", "_u", "_key"], kind="stable"))
    rank = groups.groupby("label", sort=False).cumcount().to_numpy()
    available = groups["label"].map(distinct).to_numpy()
    quotas = [available - need if value == REST else np.full(len(groups), value)
              for value in counts]
    bounds = np.cumsum(quotas, axis=0)
    groups["_split"] = np.select([rank < bounds[0], rank < bounds[1], rank < bounds[2]],
                                 list(SPLITS), default="")
    merged = live[["label", "_key"]].merge(groups[["label", "_key", "_split"]],
                                           on=["label", "_key"], how="left")
    assigned = pd.Series(merged["_split"].to_numpy(), index=live.index, dtype=object)
    used = dict(zip(groups["label"], bounds[2])) if len(groups) else {}
    return assigned, used


def _show_counts(counts: tuple) -> str:
    return ",".join(str(value) for value in counts)


def _rejected_rows(rows: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=rows.index)
    for column in REJECTED_COLUMNS:
        values = rows[column] if column in rows.columns else pd.Series("", index=rows.index)
        out[column] = values.fillna("").astype(str)
    return out.reset_index(drop=True)


def _describe_settings(settings: dict) -> str:
    seed, min_per_class = settings.get("seed"), settings.get("min_per_class")
    if settings.get("counts") is not None:
        return (f"Settings: counts={_show_counts(settings['counts'])} (distinct images per "
                f"class for train, val, test; 'rest' takes what is left), "
                f"min_per_class={min_per_class}, seed={seed}.")
    return (f"Settings: val={settings.get('val')}, test={settings.get('test')}, "
            f"min_per_class={min_per_class}, seed={seed}. Each distinct image goes to a split "
            "by a hash of its content and the seed, so per-class split sizes follow the "
            "fractions on average, not exactly, and adding images never moves another image.")


def _cell(value) -> str:
    """Text safe inside a markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _json_settings(settings: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in settings.items()}


@renamed_arguments(data_dir="data", out_dir="out")
def prepare(data, out, *, list_file=None, labels_file=None, min_per_class: int = 1,
            val: float | None = None, test: float | None = None, counts=None, seed: int = 0,
            min_side: int = 8, workers: int | None = None, progress: str = "auto",
            overwrite: bool = False) -> SplitResult:
    """Scans a dataset, splits it and writes the split folder: the whole first step in one call.

    The notebook and ``workbench split`` both call this. Arguments are those of
    :func:`workbench.data.scan.scan` and :func:`split`. Run again with the same settings on the
    same images, it writes nothing (``result.outcome == "unchanged"``).

    Args:
        data: the dataset folder (class sub-folders, or the root of ``list_file``'s paths).
        out: the split folder to write; it must not lie inside ``data``, which is never
            written to.
        progress: ``"auto"`` (a bar while scanning where someone watches, plain lines
            headless), ``"lines"`` or ``"none"``.
        overwrite: replace a split folder that holds another split (see
            :meth:`SplitResult.write`); without it, other settings are refused before the scan.

    Returns:
        The :class:`SplitResult`, already written to ``out`` (with ``split.json``); its
        ``note`` says what was written.

    Raises:
        FileNotFoundError: if ``data`` is not a folder.
        ValueError: for a bad option, or ``out`` inside ``data``.
        SplitFolderExists: ``out`` holds another split and ``overwrite`` is False.
        NoClassKept: every class was dropped (nothing is written), saying what the counts
            and ``min_per_class`` need and how many images each class has.
        OneClassKept: only one class was kept (nothing is written).
        FileExistsError: ``out`` is a file or holds files that are not a split's.
    """
    options = {"counts": counts, "val": val, "test": test}
    settings = split(pd.DataFrame(columns=["path", "label", "sha256", "status"]),
                     min_per_class=min_per_class, seed=seed,
                     **options).settings  # validates the options before the (long) scan
    check_bool("overwrite", overwrite)
    progress = progress_argument(progress)
    if not os.path.isdir(data):
        raise MissingPath(f"data must be an existing folder, received: {str(data)!r}")
    resolved, written = Path(data).resolve(), check_folder_path("out", out).resolve()
    if written == resolved or resolved in written.parents:
        raise UsageError(f"out must not be inside data (the dataset is never written "
                         f"to), received: {str(out)!r}")
    refusal = None if overwrite else _refusal_before_scan(Path(out), settings, data)
    if refusal is not None:
        raise refusal
    table = scan(data, list_file=list_file, labels_file=labels_file, min_side=min_side,
                 workers=workers, progress=progress)
    result = split(table, min_per_class=min_per_class, seed=seed, **options)
    if not result.classes:  # later steps would fail on empty splits, far from the reason
        raise NoClassKept(result)
    if len(result.classes) == 1:  # as would training, after the split looked fine
        raise OneClassKept(result, data, list_file)
    result.write(out, data_root=data, overwrite=overwrite)
    return result


def split_options(spec: str) -> dict:
    """Parses a compact split description into :func:`split` options.

    ``"10,rest,10"`` (counts per class for train,val,test; one may be ``rest``) gives
    ``{"counts": (10, "rest", 10)}``; ``"0.1,0.2"`` (fractions for val,test) gives
    ``{"val": 0.1, "test": 0.2}``.
    """
    parts = [part.strip() for part in str(spec).split(",")]
    if len(parts) == 2:
        try:
            return {"val": float(parts[0]), "test": float(parts[1])}
        except ValueError:
            pass
    if len(parts) == 3:
        return {"counts": parse_counts(spec)}
    raise UsageError(f"split must be 'train,val,test' counts (e.g. '10,rest,10') or 'val,test' "
                     f"fractions (e.g. '0.1,0.1'), received: {spec!r}")
