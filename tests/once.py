"""Work several test modules need, done once per test session, also when pytest-xdist runs the
modules in several worker processes: the pytest-xdist recipe, in which the first worker to ask
builds it in the session's shared temporary folder while holding a file lock, and the others
wait for it and reuse it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from filelock import FileLock

DONE = ".built"


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` called once per test session; returns ``folder``.

    Args:
        tmp_path_factory: pytest's fixture of that name.
        name: the folder's name, one per kind of work.
        build: writes what the tests need into the (new, empty) folder it is given.

    Returns:
        The folder, which the tests must only read: several workers share it.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # base is the session's folder/popen-gwN
        base = base.parent
    folder = base / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / DONE).is_file():  # a worker that failed half way left no mark
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / DONE).touch()
    return folder
