"""What the numbered notebooks share: paths that mean the same from anywhere, list parameters
as papermill users type them, and a quiet start.

**Paths.** A relative path in a notebook's parameters is relative to the *project folder*: the
nearest folder at or above the working directory that holds a ``notebooks/`` folder (the
repository root), or ``$WORKBENCH_ROOT`` when set. So ``runs/demo`` means the same folder in
JupyterLab (whose kernels start in ``notebooks/``), under ``papermill`` from the repository root
or with ``--cwd notebooks``, and in ``workbench sweep``.

**Lists.** ``-p seeds 0,1,2`` reaches a notebook as the string ``"0,1,2"`` and ``-p seeds 0``
as the integer ``0``; :func:`as_list` turns each into ``[0, 1, 2]`` / ``[0]``, as does
``-y 'seeds: [0, 1, 2]'``.
"""

from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path

from workbench._checks import UsageError
from workbench._quiet import start_keras_quietly

ROOT_VARIABLE = "WORKBENCH_ROOT"


def project_root(start: str | Path | None = None) -> Path:
    """The folder the notebooks' relative paths are relative to (see the module docstring).

    Args:
        start: where to look from; default the working directory.
    """
    if os.environ.get(ROOT_VARIABLE):
        return Path(os.environ[ROOT_VARIABLE]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir():
            return folder
    return here


def path(value: str | Path | None) -> Path | None:
    """``value`` resolved against :func:`project_root` (absolute paths and None pass through).

    Raises:
        ValueError: when ``value`` is not a path.
    """
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise UsageError(f"a path parameter must be a non-empty string, received: {value!r}")
    value = Path(value).expanduser()
    return value if value.is_absolute() else project_root() / value


def as_list(name: str, value, item_type: type = str) -> list:
    """A list parameter from a list, one value, or a comma-separated string.

    Args:
        name: the parameter's name, for the error message.
        value: ``[0, 1]``, ``(0, 1)``, ``0``, ``"0,1"`` or ``"two_stage, scratch"``.
        item_type: ``str``, ``int`` or ``float``: what each item must be.

    Returns:
        A list of ``item_type`` values.

    Raises:
        ValueError: naming the parameter when an item is not of ``item_type``.
    """
    if item_type not in (str, int, float):
        raise UsageError(f"item_type must be str, int or float, received: {item_type!r}")
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items:
        raise UsageError(f"{name} must hold at least one value, received: {value!r}")
    try:
        return [_convert(item, item_type) for item in items]
    except (TypeError, ValueError):
        kind = {str: "text", int: "an integer", float: "a number"}[item_type]
        raise UsageError(f"{name} must be a list of which each item is {kind} (in papermill: "
                         f"-p {name} a,b,c or -y '{name}: [a, b, c]'), received: {value!r}"
                         ) from None


def _convert(item, item_type: type):
    if isinstance(item, bool):
        raise ValueError(item)
    if item_type is int and not isinstance(item, (str, numbers.Integral)):
        raise ValueError(item)  # 1.5 is no integer; int() would truncate it
    return item_type(item)


def quiet(*, keras: bool = True) -> None:
    """A quiet start for a notebook: call it in the first cell. Starts Keras (and TensorFlow or
    JAX) with their start-up lines silenced, and leaves out the monitor's "no GPU found"
    warning; what matters (training on the CPU) the training says once in plain words.

    Args:
        keras: start Keras now; False for a notebook that may not need it (the LiteRT path).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", message="ResourceMonitor: no GPU found")
    if keras:
        start_keras_quietly()
