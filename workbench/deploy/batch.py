"""Classify a whole folder, a list file or a million photos into one table, resumably, on one
machine or a Dask cluster.

:func:`list_files` (``workbench.deploy.files``) turns what a user names into :class:`Source`
rows, and :func:`predict_rows` classifies them, decoding in threads into a bounded queue while
the model runs batches. :func:`predict_to_file` is the job
``workbench predict RUN_DIR PATH... --out FILE`` runs::

    result = predict_to_file("runs/flowers", ["photos/"], out="photos.csv")
    result.table().label_1.value_counts()

**Nothing lost, nothing repeated.** Rows are written in chunks (``chunk_size`` rows each, one
file per chunk, each written whole and renamed into place) into the folder ``<out>.partial``
beside the output, with a ``manifest.json`` naming the model (its file's sha256) and the
options. Only when every file is done are the chunks merged, in the order the files were
listed, into ``out`` (written to a temporary name, then renamed) and the folder removed. Killed
(even with SIGKILL) and run again with the same arguments, the job skips every file whose row
is in a chunk already, keyed by its path, size and modification time; a file changed since is
done again. Another model or other options start over, and the result says why.

**Beyond one machine.** With ``cluster`` (a Dask scheduler's address, or ``"slurm"`` for a
dask-jobqueue SLURM cluster: ``workbench._cluster.dask_client``, as ``sweep`` takes it) the
files still to do are cut into chunks; each Dask task classifies one chunk and writes its part
into the ``.partial`` folder, and each worker process loads the run's export once. Every worker
must see the run directory, the images and the output's folder at the same paths (a shared
filesystem); this is checked on every worker before anything starts, and a worker that cannot
read them fails the job in one line naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from workbench._checks import UsageError, check_int, renamed_arguments
from workbench._io import atomic_path, remove, remove_stale_temporaries, write_json
from workbench._progress import progress as progress_bar
from workbench._progress import progress_argument
from workbench.data.images import DEFAULT_MAX_PIXELS, ImageRejected
# the row pipeline lives in files (Classifier.predict_files uses it); named here for the job's users
from workbench.deploy.files import Source, as_sources, list_files, predict_rows  # noqa: F401
from workbench.runs import RunDir

PARTIAL_SUFFIX = ".partial"  # the folder of chunks beside the output, until it is complete
MANIFEST = "manifest.json"
KEY_COLUMNS = ("size", "mtime_ns")  # with the path, what says a file is the one already done
DEFAULT_CHUNK_SIZE = 1024  # rows per chunk file: at most this many are redone after a kill
OUTPUT_SUFFIXES = (".csv", ".parquet")


@dataclasses.dataclass
class BatchResult:
    """What :func:`predict_to_file` did.

    Attributes:
        out: the table written (CSV or Parquet).
        features: the ``.npy`` of features written, or None.
        rows: rows in the table (one per file listed).
        errors: rows with an ``error`` (files that could not be used).
        skipped: files already done by an earlier, interrupted run of the same job.
        classified: files classified by this call.
        seconds: wall time of this call's classification.
        started_over: why the chunks of an earlier run were discarded (another model or other
            options), or None.
    """

    out: Path
    features: Path | None
    rows: int
    errors: int
    skipped: int
    classified: int
    seconds: float
    started_over: str | None = None

    @property
    def images_per_second(self) -> float:
        """Files classified by this call per second of its wall time."""
        return self.classified / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> pd.DataFrame:
        """The table written, read back."""
        return read_table(self.out)

    def least_certain(self, count: int = 8) -> pd.DataFrame:
        """The ``count`` classified rows whose top class has the lowest probability: the
        images to look at first (mislabelled, out of domain, or between classes)."""
        check_int("count", count, minimum=1)
        table = self.table()
        return table[table["error"] == ""].nsmallest(count, "probability_1")

    def format(self) -> str:
        """One line: rows, errors, speed and where the table is."""
        again = f", {self.skipped} done before" if self.skipped else ""
        features = f" (features: {self.features})" if self.features else ""
        return (f"Wrote {self.rows} rows ({self.errors} errors{again}) to {self.out}{features}; "
                f"{self.classified} images in {self.seconds:.1f}s, "
                f"{self.images_per_second:.1f} images/s")


# --- the job: chunks, resume, merge ---------------------------------------------------------------

@renamed_arguments(out_dir="out")
def explain_files(classifier, sources, out, *, skip=(), tta: bool = False,
                  progress: str = "none") -> int:
    """Writes one overlay PNG per usable file (the photo with its Grad-CAM map, the top class
    and its probability) under ``out``, mirroring the paths the table shows
    (``sub/photo.jpg`` -> ``out/sub/photo.png``; a second file of the same name gets
    ``-2``). Maps need the run's Keras model (``Classifier.explainer``).

    Args:
        classifier: the :class:`~workbench.deploy.predict.Classifier`.
        sources: the files (``Source`` objects, as :func:`list_files` returns, or paths).
        out: the folder written.
        skip: paths (as the table shows them) not to explain, e.g. those with an ``error``.
        tta: rank the classes as the table did with ``tta``.
        progress: ``"none"`` (the default), ``"auto"`` (a bar where someone watches, plain
            lines headless) or ``"lines"``.

    Returns:
        The number of overlays written; files that cannot be read are left out.
    """
    progress = progress_argument(progress)
    out, skip, taken = Path(out), set(skip), set()
    usable = [source for source in as_sources(sources)
              if source.file is not None and source.path not in skip]
    written = 0
    for source in progress_bar(usable, total=len(usable), desc="explain", unit="images",
                               mode=progress):
        relative = Path(source.path)
        name = (relative.parent / relative.stem).as_posix().lstrip("/").replace("../", "")
        stem, count = name, 1
        while name in taken:  # photo.jpg and photo.png in one folder
            count += 1
            name = f"{stem}-{count}"
        taken.add(name)
        try:
            explained = classifier.explain(source.file, tta=tta)
        except ImageRejected:
            continue
        target = out / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        explained.save(target)
        written += 1
    return written


def read_table(path) -> pd.DataFrame:
    """A table :func:`predict_to_file` wrote (CSV or Parquet), labels read as text."""
    path = Path(path)
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    else:
        header = pd.read_csv(path, nrows=0).columns
        text = {column: str for column in header if column.startswith("label_") or
                column in ("path", "error", "detail")}
        table = pd.read_csv(path, dtype=text)
    for column in ("error", "detail"):
        if column in table.columns:
            table[column] = table[column].fillna("").astype(str)
    return table


def _check_out(out, features) -> tuple[Path, Path | None, bool]:
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"out must end in .csv or .parquet, received: {str(out)!r}")
    if out.is_dir():
        raise UsageError(f"out must be a file name, received the folder: {str(out)!r}")
    if features is None:
        return out, None, False
    if features == "columns":
        if out.suffix != ".parquet":
            raise UsageError(f"features='columns' needs a .parquet out, received: {str(out)!r}")
        return out, None, True
    features = Path(features)
    if features.suffix != ".npy":
        raise UsageError(f"features must be a .npy file name or 'columns' (with a .parquet "
                         f"out), received: {str(features)!r}")
    return out, features, True


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _identity(classifier, options: dict) -> dict:
    """What makes two runs of the job give the same rows: the model and the options."""
    model_file = classifier.info.get("model_file")
    # "backend": the runtime, under the manifest's old key, so jobs started before still resume
    model = {"model_file": model_file, "backend": classifier.runtime,
             "sha256": _sha256(model_file) if model_file and Path(model_file).is_file()
             else None, "labels": classifier.labels, "image_size": classifier.image_size,
             "resize_mode": classifier.resize_mode, "temperature": classifier.temperature}
    if options.get("features"):
        source = getattr(classifier, "keras_source", None)
        model["keras_sha256"] = _sha256(source) if source and Path(source).is_file() else None
    return {"model": model, "options": options}


def _differences(old: dict, new: dict) -> str:
    changed = [name for name in new["model"] if old.get("model", {}).get(name) !=
               new["model"][name]]
    options = [name for name in new["options"] if old.get("options", {}).get(name) !=
               new["options"][name]]
    parts = ([f"the model changed ({', '.join(changed)})"] if changed else []) + \
        ([f"the options changed ({', '.join(options)})"] if options else [])
    return "; ".join(parts) or "the job changed"


def _read_parts(partial: Path) -> pd.DataFrame:
    """Every row of the chunks written so far (a later chunk's row of a path wins)."""
    frames = [pd.read_parquet(part) for part in sorted(partial.glob("part-*.parquet"))]
    if not frames:
        return pd.DataFrame(columns=["path", *KEY_COLUMNS])
    table = pd.concat(frames, ignore_index=True)
    return table.drop_duplicates("path", keep="last")


def _write_part(partial: Path, rows: list) -> None:
    """One chunk of rows, written whole under a name no other writer uses."""
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    table = pd.DataFrame(rows)
    for column in table.columns:  # a chunk of errors only has no label to type the column
        if column.startswith("label_") or column in ("path", "error", "detail"):
            table[column] = table[column].astype(object)
    with atomic_path(partial / name) as temporary:
        table.to_parquet(temporary, index=False)


def _done(sources: list[Source], parts: pd.DataFrame, threads: int) -> set[str]:
    """The paths whose row in ``parts`` is of the file as it is now (same size and mtime)."""
    if parts.empty:
        return set()
    known = {path: (size, mtime) for path, size, mtime in
             zip(parts["path"], parts["size"], parts["mtime_ns"])}
    candidates = [source for source in sources if source.path in known]

    def same(source: Source) -> bool:
        size, mtime = known[source.path]
        if source.file is None:
            return True  # not read at all: its row does not depend on the file
        try:
            stat = os.stat(source.file)
        except OSError:
            return pd.isna(size)  # it was missing then and is missing now
        return not pd.isna(size) and (int(size), int(mtime)) == (stat.st_size,
                                                                 stat.st_mtime_ns)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return {source.path for source, ok in zip(candidates, pool.map(same, candidates)) if ok}


def _write_output(out: Path, features_path: Path | None, columns: bool, sources, parts,
                  top_k: int) -> tuple[int, int]:
    """Merges the chunks into ``out`` (and the features), in the order of ``sources``."""
    order = pd.DataFrame({"path": [source.path for source in sources]})
    table = order.merge(parts, on="path", how="left", validate="one_to_one")
    vectors = table.pop("features") if "features" in table.columns else None
    table = table.drop(columns=[column for column in KEY_COLUMNS if column in table.columns])
    if vectors is not None and (features_path is not None or columns):
        width = next((len(v) for v in vectors if v is not None and not _missing(v)), 0)
        matrix = np.full((len(table), width), np.nan, np.float32)
        for row, vector in enumerate(vectors):
            if vector is not None and not _missing(vector):
                matrix[row] = vector
        if features_path is not None:
            with atomic_path(features_path) as temporary:
                with open(temporary, "wb") as stream:
                    np.save(stream, matrix)
        if columns:
            table["features"] = list(matrix)
    with atomic_path(out) as temporary:
        if out.suffix == ".parquet":
            table.to_parquet(temporary, index=False)
        else:
            table.to_csv(temporary, index=False)
    return len(table), int((table["error"].fillna("") != "").sum())


def _missing(value) -> bool:
    return isinstance(value, float) and np.isnan(value)


@renamed_arguments(backend="runtime")
def predict_to_file(run_dir, paths=(), *, out, list_file=None, list_root=None,
                    model: str = "best", runtime: str = "auto", top_k: int = 5,
                    batch_size: int = 64, threads: int | None = None,
                    runtime_threads: int = 2, tta: bool = False, calibrated: bool = True,
                    features=None, max_pixels: int = DEFAULT_MAX_PIXELS,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, cluster: str | None = None,
                    cluster_options: dict | None = None, jobs: int | None = None,
                    progress: str = "auto", classifier=None) -> BatchResult:
    """Classifies every file named into one table, resumably; on Dask workers with ``cluster``.

    Args:
        run_dir: a run directory (or a model file ``Classifier.load`` takes).
        paths: image files and folders (see :func:`list_files`).
        out: the table: CSV, or Parquet when it ends in ``.parquet``. One row per file, in the
            order listed: ``path``, ``label_1``, ``probability_1`` ... ``label_k``,
            ``probability_k`` (calibrated unless ``calibrated=False``), ``error`` (``""``, or
            the reason the file could not be used, as ``scan`` says it) and ``detail``.
        list_file: a list file (Caffe's format or one path a line); ``list_root``: the folder
            its paths are relative to (default its own).
        model: ``"best"`` or ``"final"``; ``runtime``: as ``Classifier.load`` (``backend``,
            its old name, still works for one release with a ``DeprecationWarning``).
        top_k: classes per row.
        batch_size: images per model call.
        threads: decoding threads per process (default ``min(8, CPUs)``).
        runtime_threads: CPU threads of the model's runtime.
        tta: average each image with its mirror image.
        calibrated: probabilities scaled by the run's temperature.
        features: None; a ``.npy`` file name for each row's pooled backbone features (row ``i``
            of the array is row ``i`` of the table, NaN for a file in error); or ``"columns"``
            for a ``features`` column in a Parquet ``out``. Runs the run's Keras model.
        max_pixels: larger images are refused (as ``"decompression bomb"``) before decoding.
        chunk_size: rows per chunk file (at most this many are redone after a kill).
        cluster: None (this process), a Dask scheduler address, or ``"slurm"``.
        cluster_options: ``SLURMCluster`` keyword arguments (with ``cluster="slurm"``).
        jobs: SLURM jobs to start (with ``cluster="slurm"``; default 1).
        progress: ``"auto"`` (a bar with images/s and the time left where someone watches,
            plain lines headless), ``"lines"`` or ``"none"``.
        classifier: an already loaded ``Classifier`` of ``run_dir`` to use in this process.

    Returns:
        A :class:`BatchResult`.

    Raises:
        ValueError: a bad option, nothing to classify, or a Dask worker that cannot read the
            run, the images or the output's folder (the message names it).
        FileNotFoundError: ``run_dir`` or ``list_file`` does not exist.
    """
    out, features_path, with_features = _check_out(out, features)
    progress = progress_argument(progress)
    chunk_size, threads = _check_job(top_k=top_k, batch_size=batch_size, chunk_size=chunk_size,
                                     threads=threads, cluster=cluster,
                                     cluster_options=cluster_options, jobs=jobs)
    sources = list_files(paths, list_file=list_file, list_root=list_root)
    if classifier is None:
        classifier = _load_classifier(run_dir, model, runtime, runtime_threads)
    options = {"top_k": top_k, "tta": tta, "calibrated": calibrated,
               "features": with_features, "max_pixels": max_pixels}
    partial, started_over = _open_partial(out, _identity(classifier, options))
    done = _done(sources, _read_parts(partial), threads)
    todo = [source for source in sources if source.path not in done]
    settings = {"top_k": top_k, "batch_size": batch_size, "threads": threads, "tta": tta,
                "calibrated": calibrated, "features": with_features, "max_pixels": max_pixels}
    started = time.monotonic()
    if todo:
        _classify(classifier, todo, partial, chunk_size, settings, run_dir=run_dir, model=model,
                  runtime_threads=runtime_threads, cluster=cluster,
                  cluster_options=cluster_options, jobs=jobs, progress=progress)
    seconds = time.monotonic() - started
    rows, errors = _merge_parts(out, features_path, features == "columns", sources, partial,
                                top_k)
    return BatchResult(out, features_path, rows, errors, skipped=len(done),
                       classified=len(todo), seconds=seconds, started_over=started_over)


def _check_job(*, top_k, batch_size, chunk_size, threads, cluster, cluster_options,
               jobs) -> tuple[int, int]:
    """The checked ``chunk_size`` and ``threads`` (its default filled in), after checking the
    job's other options."""
    check_int("top_k", top_k, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    threads = check_int("threads", threads if threads is not None else
                        min(8, os.cpu_count() or 1), minimum=1)
    if cluster is not None:
        from workbench._cluster import check_dask_cluster

        check_dask_cluster(cluster, cluster_options)
    if jobs is not None:
        check_int("jobs", jobs, minimum=1)
        if cluster != "slurm":
            raise UsageError(f"jobs applies to cluster='slurm', received: jobs={jobs} with "
                             f"cluster={cluster!r}")
    return chunk_size, threads


def _load_classifier(run_dir, model: str, runtime: str, runtime_threads: int):
    """The run's ``Classifier``, loaded in this process."""
    from workbench.deploy.predict import Classifier

    return Classifier.load(run_dir, model=model, runtime=runtime, threads=runtime_threads)


def _open_partial(out: Path, identity: dict) -> tuple[Path, str | None]:
    """The ``.partial`` folder of ``out``, ready for this job, and why an earlier run's chunks
    were discarded (None when they were kept or there were none)."""
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    started_over = None
    manifest = partial / MANIFEST
    if partial.is_dir():
        old = json.loads(manifest.read_text()) if manifest.is_file() else {}
        if old != identity:
            started_over = _differences(old, identity) + ": starting over"
            remove(partial)
    partial.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(partial)
    if not manifest.is_file():
        write_json(manifest, identity)
    return partial, started_over


def _classify(classifier, todo, partial, chunk_size, settings, *, run_dir, model,
              runtime_threads, cluster, cluster_options, jobs, progress) -> None:
    """Classifies ``todo`` into chunks in ``partial``: in this process, or on Dask workers
    (each loading the run's classifier as this one was)."""
    if cluster is None:
        _run_here(classifier, todo, partial, chunk_size, settings, progress)
    else:
        load = {"path": str(run_dir), "model": model, "runtime": classifier.runtime,
                "threads": runtime_threads}
        _run_on_cluster(todo, partial, chunk_size, settings, load,
                        cluster=cluster, cluster_options=cluster_options, jobs=jobs,
                        progress=progress, run_dir=run_dir, sample=todo[0])


def _merge_parts(out: Path, features_path: Path | None, columns: bool, sources, partial: Path,
                 top_k: int) -> tuple[int, int]:
    """The rows and errors of ``out``, written from the chunks, which are then removed; refuses
    a table with holes."""
    parts = _read_parts(partial)
    missing = len({source.path for source in sources} - set(parts["path"]))
    if missing:  # never a table with holes: the next run does them
        raise RuntimeError(f"{missing} files have no row in {partial}; run the same command "
                           f"again to do them")
    rows, errors = _write_output(out, features_path, columns, sources, parts, top_k)
    remove(partial)
    return rows, errors


def _run_here(classifier, todo, partial, chunk_size, settings, progress) -> None:
    rows = []
    for row in classifier.predict_files(todo, progress=progress, **settings):
        rows.append(row)
        if len(rows) >= chunk_size:
            _write_part(partial, rows)
            rows = []
    if rows:
        _write_part(partial, rows)


# --- Dask workers -------------------------------------------------------------------------------

_LOADED: dict = {}  # the Classifier of each run a worker process has loaded, loaded once
_LOADING = threading.Lock()


def _worker_classifier(load: dict):
    from workbench.deploy.predict import Classifier

    key = json.dumps(load, sort_keys=True)
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = Classifier.load(load["path"], model=load["model"],
                                           runtime=load["runtime"], threads=load["threads"])
        return _LOADED[key]


def predict_chunk(load: dict, sources: list, partial: str, settings: dict) -> int:
    """A Dask task: classifies one chunk of files and writes its part; returns its rows.

    Args:
        load: ``Classifier.load`` arguments (``path``, ``model``, ``runtime``, ``threads``);
            the classifier is loaded once per worker process.
        sources: ``(path, file, reason, detail)`` tuples.
        partial: the ``.partial`` folder the part is written into.
        settings: ``Classifier.predict_files`` keyword arguments.
    """
    classifier = _worker_classifier(load)
    rows = list(classifier.predict_files([Source(*source) for source in sources],
                                         progress="none", **settings))
    _write_part(Path(partial), rows)
    return len(rows)


def check_worker(run_dir: str, image: str | None, partial: str) -> str | None:
    """On a worker: why it cannot read the run, an image or write the output; None when it
    can."""
    try:
        if Path(run_dir).is_dir():
            RunDir(run_dir).config  # noqa: B018 (read, as the worker's classifier will)
        else:  # a model file
            with open(run_dir, "rb"):
                pass
    except (OSError, ValueError) as error:
        return f"cannot read the run {run_dir} ({getattr(error, 'strerror', None) or error})"
    if image is not None and not os.access(image, os.R_OK):
        return f"cannot read the image {image}"
    probe = Path(partial) / f".probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        return f"cannot write into {partial} ({error.strerror or error})"
    return None


def _run_on_cluster(todo, partial, chunk_size, settings, load, *, cluster, cluster_options,
                    jobs, progress, run_dir, sample) -> None:
    from distributed import as_completed

    from workbench._cluster import dask_client

    with dask_client(cluster, jobs=jobs, cluster_options=cluster_options) as client:
        problems = client.run(check_worker, os.path.abspath(run_dir),
                              os.path.abspath(sample.file) if sample.file else None,
                              os.path.abspath(partial))
        bad = {worker: problem for worker, problem in problems.items() if problem}
        if not problems or bad:
            worker, problem = next(iter(bad.items())) if bad else ("-", "no workers")
            raise UsageError(f"Dask worker {worker} {problem}: every worker needs the run "
                             f"directory, the images and the output's folder at the same "
                             f"paths (a shared filesystem), received: cluster={cluster!r}")
        load = {**load, "path": os.path.abspath(load["path"])}
        chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
        futures = [client.submit(predict_chunk, load,
                                 [(s.path, os.path.abspath(s.file) if s.file else None,
                                   s.reason, s.detail) for s in chunk],
                                 os.path.abspath(partial), settings, pure=False,
                                 key=f"workbench-predict-{index}-{uuid.uuid4().hex[:8]}")
                   for index, chunk in enumerate(chunks)]
        def images():  # one item per image of each finished chunk, for the progress
            for future in as_completed(futures):
                yield from range(future.result())  # a failed task raises here

        finished = False
        try:
            for _ in progress_bar(images(), total=len(todo), desc="predict", unit="images",
                                  mode=progress):
                pass
            finished = True
        finally:
            if not finished:
                client.cancel(futures)
