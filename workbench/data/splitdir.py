"""``SplitFolder``: the one reader of a split folder written by ``workbench split``.

A split folder holds ``splits.csv`` (path, label, label_index, split, ...), ``labels.txt`` (line
``i`` names label index ``i``), ``split.json`` (where the images are: ``data_root``, relative to
the folder) and the Caffe-style lists ``train.txt``/``val.txt``/``test.txt``. Training, the
evaluation, the export check, the notebooks and the studies read it through this class.

**The image cache.** Each split is decoded once into a uint8 array of ``N x size x size x 3``
bytes (:func:`workbench.data.cache.build_cache`), kept in ``<split folder>/cache``; with
``$WORKBENCH_CACHE_DIR`` set (local scratch on a cluster node), in a folder of its own under it,
named by the split folder and a hash of its resolved path, so two split folders never share one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workbench._checks import (MissingPath, UsageError, check_choice, check_int,
                               renamed_arguments)
from workbench._progress import progress_argument
from workbench.data import cache

if TYPE_CHECKING:  # imported where the table is read: a prediction starts without pandas
    import pandas as pd

SPLITS = ("train", "val", "test")
CACHE_VARIABLE = "WORKBENCH_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class SplitData:
    """The images of a split folder, decoded once into uint8 caches."""

    classes: list[str]
    images: dict      # split name -> uint8 array (N, H, W, 3)
    labels: dict      # split name -> int array (N,)
    splits_dir: str   # the split folder, resolved


class SplitFolder:
    """A split folder: its classes, its table, where its images are, and their decoded caches.

    Args:
        path: a folder written by ``workbench split`` / ``SplitResult.write``.
        data_root: the folder the paths in ``splits.csv`` are relative to; by default the one
            recorded in ``split.json``.

    Raises:
        FileNotFoundError: when ``path`` holds no ``splits.csv``.
    """

    def __init__(self, path: str | Path, *, data_root: str | Path | None = None):
        self.path = Path(path)
        if not (self.path / "splits.csv").is_file():
            raise MissingPath(f"splits must be a folder written by 'workbench split' "
                              f"(with splits.csv), received: {str(path)!r}")
        self._data_root = Path(data_root) if data_root is not None else None

    def __repr__(self) -> str:
        return f"SplitFolder({str(self.path)!r})"

    @functools.cached_property
    def table(self) -> pd.DataFrame:
        """``splits.csv``: one row per kept image."""
        import pandas as pd

        return pd.read_csv(self.path / "splits.csv", dtype={"path": str, "label": str})

    @functools.cached_property
    def classes(self) -> list[str]:
        """The class names, index ``i`` naming label index ``i``."""
        return (self.path / "labels.txt").read_text(encoding="utf-8").splitlines()

    @functools.cached_property
    def meta(self) -> dict:
        """``split.json``: ``data_root`` (relative to the folder) and the ``settings`` of the
        split; ``{}`` when the folder has none (written without a dataset folder).

        Raises:
            ValueError: ``split.json`` is not readable JSON.
        """
        meta_path = self.path / "split.json"
        if not meta_path.is_file():
            return {}
        try:
            return json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise UsageError(f"{meta_path} is not readable JSON ({error}); write the split "
                             "again") from None

    @property
    def data_root(self) -> Path:
        """The folder the image paths are relative to.

        Raises:
            FileNotFoundError: when it was not given and ``split.json`` does not name it.
        """
        if self._data_root is not None:
            return self._data_root
        if "data_root" not in self.meta:
            raise MissingPath(f"data_root is needed: the split folder {str(self.path)!r} "
                              "has no split.json naming its dataset")
        return self.path / self.meta["data_root"]

    @property
    def cache_dir(self) -> Path:
        """Where the decoded images are cached: ``<split folder>/cache``, or, when
        ``$WORKBENCH_CACHE_DIR`` is set, ``$WORKBENCH_CACHE_DIR/<folder name>-<hash>``, the hash
        being of the split folder's resolved path (one cache folder per split folder)."""
        root = os.environ.get(CACHE_VARIABLE, "").strip()
        if not root:
            return self.path / "cache"
        resolved = self.path.resolve()
        digest = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:16]
        return Path(root).expanduser() / f"{resolved.name}-{digest}"

    @property
    def splits(self) -> list[str]:
        """The splits that hold images, in the order train, val, test."""
        present = set(self.table["split"])
        return [name for name in SPLITS if name in present]

    def _rows(self, split: str) -> pd.DataFrame:
        check_choice("split", split, SPLITS)
        return self.table[self.table["split"] == split]

    def paths(self, split: str) -> list[str]:
        """The image paths of ``split`` (relative to :attr:`data_root`), in table order."""
        return list(self._rows(split)["path"])

    def labels(self, split: str) -> np.ndarray:
        """The label indices of ``split``, in table order."""
        return self._rows(split)["label_index"].to_numpy(dtype=np.int32)

    def image_path(self, split: str = "test", index: int = 0) -> Path:
        """The file of the ``index``-th image of ``split``.

        Raises:
            ValueError: the split has no image ``index``.
            FileNotFoundError: the file is gone.
        """
        check_int("index", index, minimum=0)
        paths = self.paths(split)
        if index >= len(paths):
            raise UsageError(f"index must be below the {len(paths)} images of split {split!r}, "
                             f"received: {index}")
        path = (self.data_root / paths[index]).resolve()
        if not path.is_file():
            raise MissingPath(f"the image of split {split!r} at index {index} is missing, "
                              f"received: {str(path)!r}")
        return path

    def load(self, *, image_size: int, resize_mode: str = "squash",
             cache_dir: str | Path | None = None, progress: str = "auto") -> SplitData:
        """Decodes each split once into a uint8 cache (reused while the images are unchanged).

        Args:
            image_size: side of the square images the model takes.
            resize_mode: ``"squash"``, ``"crop"`` or ``"pad"``.
            cache_dir: where the caches go; default :attr:`cache_dir` (``<split folder>/cache``,
                or a folder under ``$WORKBENCH_CACHE_DIR`` when that is set).
            progress: while decoding: ``"auto"`` (a bar where someone watches, plain lines
                headless), ``"lines"`` or ``"none"``.

        Returns:
            A :class:`SplitData`.
        """
        progress = progress_argument(progress)
        images, labels = {}, {}
        for name in self.splits:
            images[name] = cache.build_cache(
                self.paths(name), root=self.data_root, image_size=image_size,
                resize_mode=resize_mode, cache_dir=cache_dir or self.cache_dir,
                progress=progress)
            labels[name] = self.labels(name)
        if "train" not in images:
            raise UsageError(f"{self.path / 'splits.csv'} has no training images")
        return SplitData(list(self.classes), images, labels, str(self.path.resolve()))


@renamed_arguments(splits_dir="splits")
def load_splits(splits: str | Path, *, image_size: int, resize_mode: str = "squash",
                data_root: str | Path | None = None, cache_dir: str | Path | None = None,
                progress: str = "auto") -> SplitData:
    """``SplitFolder(splits, data_root=...).load(...)``: the split folder decoded once."""
    return SplitFolder(splits, data_root=data_root).load(
        image_size=image_size, resize_mode=resize_mode, cache_dir=cache_dir, progress=progress)
