"""The published numbers the studies compare against, read from ``published.json``.

The numbers live in one data file shipped with the package, next to where each came from (the
study's description and, where the project's notes record them, its authors, title, venue and
year); the library code holds none of them. Each study module has one small function that turns
its table into a DataFrame: :func:`workbench.studies.batch_size.published_batch_size_study` and
:func:`workbench.studies.bottleneck.published_cifar10`.
"""

from __future__ import annotations

import json
from importlib import resources

from workbench._checks import UsageError

PUBLISHED_FILE = "published.json"


def tables() -> list[str]:
    """The names of the published tables, e.g. ``["batch_size_study", ...]``."""
    return [name for name in _read() if name != "about"]


def read_published(table: str) -> dict:
    """One published table as stored: its columns, rows, sources and notes.

    Args:
        table: a name from :func:`tables`.

    Returns:
        A fresh dict (changing it does not change what the next call returns).

    Raises:
        ValueError: ``table`` is not a published table.
    """
    stored = _read()
    names = [name for name in stored if name != "about"]
    if table not in names:
        raise UsageError(f"table must be one of {', '.join(map(repr, names))}, "
                         f"received: {table!r}")
    return stored[table]


def _read() -> dict:
    text = resources.files(__package__).joinpath(PUBLISHED_FILE).read_text(encoding="utf-8")
    return json.loads(text)
