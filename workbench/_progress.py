"""One progress bar for every long loop: a live bar where someone watches, plain lines elsewhere.

* In a Jupyter kernel someone watches (JupyterLab, Notebook, VS Code): ``tqdm.auto`` (a widget).
* In a terminal (stderr is a TTY): the usual ``tqdm`` bar.
* Headless (a notebook run by papermill or nbclient, whose cells cannot ask for input; or
  stderr is not a TTY: CI, pipes, log files): no carriage returns and no widgets (a saved
  notebook would show them at 0%); one plain line on stderr about every 10% of the way (at
  most one every two seconds) and one at the end.

The environment variable ``WORKBENCH_PROGRESS`` overrides the choice: ``bar`` (always a tqdm bar),
``plain`` (always plain lines) or ``off`` (nothing at all).

Every public function of the workbench with a long loop takes the same ``progress`` argument, a
string (:data:`PROGRESS`, checked by :func:`progress_argument`): ``"auto"`` (the default: the
above), ``"lines"`` (plain lines wherever it runs), ``"none"``; ``finetune`` adds ``"plot"``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator

from workbench._checks import check_choice, deprecated

PROGRESS = ("auto", "lines", "none")  # the values of every public ``progress`` argument
_STYLES = ("bar", "plain", "off")
MIN_SECONDS_BETWEEN_LINES = 2.0  # quick loops print only their closing line


def progress_argument(value, *, choices=PROGRESS) -> str:
    """A public function's ``progress`` argument, checked: one of ``choices``.

    ``True`` and ``False`` (its type before it became a string) still work for one release, as
    ``"auto"`` and ``"none"``, with a ``DeprecationWarning``.

    Raises:
        UsageError: any other value.
    """
    if isinstance(value, bool):
        new = "auto" if value else "none"
        deprecated(f"progress={value} is deprecated and will be removed in the next release, "
                   f"use progress={new!r}")
        return new
    return check_choice("progress", value, choices)


def loop_progress(progress: str) -> str:
    """The ``progress`` of a loop inside a call whose own may be ``"plot"`` (``finetune``'s live
    figure, which a loop cannot draw): that loop shows ``"auto"``; other values pass through."""
    return "auto" if progress == "plot" else progress


def progress(iterable: Iterable, *, total: int | None = None, desc: str = "",
             unit: str | None = None, mode: str = "auto") -> Iterable:
    """Wraps ``iterable`` in a progress display suited to where the code runs.

    Args:
        iterable: what to iterate over; its items are passed through unchanged.
        total: the number of items, if ``len(iterable)`` does not tell.
        desc: a short label shown before the count, e.g. ``"scan"``.
        unit: what an item is, e.g. ``"images"``: the plain lines then also say the items
            per second and the time left, and the bar counts in it.
        mode: a checked ``progress`` argument (:data:`PROGRESS`): ``"auto"`` (a bar or lines,
            as the module doc says), ``"lines"`` (plain lines, unless ``WORKBENCH_PROGRESS``
            is ``off``) or ``"none"`` (``iterable`` itself).

    Returns:
        An iterable yielding the same items as ``iterable``.
    """
    style = _style()
    if mode == "none" or style == "off":
        return iterable
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if mode == "lines":
        return _plain(iterable, total, desc, unit)
    if style == "bar" or (style is None and watched_notebook()):
        with warnings.catch_warnings():  # tqdm.auto's "experimental" notice, not for users
            warnings.simplefilter("ignore", category=Warning)
            from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc or None, unit=f" {unit}" if unit else "it")
    if style is None and _stderr_is_tty():
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc or None, unit=f" {unit}" if unit else "it")
    return _plain(iterable, total, desc, unit)


def watched_notebook() -> bool:
    """Whether progress should be drawn live (widgets, figures updated in place): in a notebook
    someone watches, not one run headless, and not forced to plain lines by
    ``WORKBENCH_PROGRESS``."""
    return _style() is None and in_notebook() and not _headless_kernel()


def _headless_kernel() -> bool:
    """Whether the cell running now was sent by a client that cannot answer ``input()``:
    papermill and nbclient send ``allow_stdin=False`` with every cell, while JupyterLab, the
    classic Notebook and VS Code allow it. A kernel does not otherwise know who is watching."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        request = kernel.get_parent("shell") if kernel is not None else None
    except Exception:  # an older ipykernel without get_parent, or no shell at all
        return False
    return bool(request) and not request.get("content", {}).get("allow_stdin", True)


def _style() -> str | None:
    value = os.environ.get("WORKBENCH_PROGRESS", "").strip().lower()
    return value if value in _STYLES else None


def in_notebook() -> bool:
    """Whether this runs inside a Jupyter kernel (notebook, lab, papermill, VS Code)."""
    return "ipykernel.zmqshell" in sys.modules


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _plain(iterable: Iterable, total: int | None, desc: str, unit: str | None = None) -> Iterator:
    """Yields the items, printing one line to stderr per 10% step and one at the end."""
    label = f"{desc}: " if desc else ""
    start = last_shown = time.monotonic()
    count = 0
    shown_step = 0
    for item in iterable:
        yield item
        count += 1
        if total:
            step = min(10, count * 10 // total)
            # a line per 10% step, but not more than one every few seconds for quick loops
            due = step > shown_step and count < total
            if due and time.monotonic() - last_shown >= MIN_SECONDS_BETWEEN_LINES:
                shown_step, last_shown = step, time.monotonic()
                print(f"{label}{step * 10}% ({count}/{total}){_rate(count, total, start, unit)}",
                      file=sys.stderr, flush=True)
        elif count % 1000 == 0:
            print(f"{label}{count} done{_rate(count, None, start, unit)}", file=sys.stderr,
                  flush=True)
    elapsed = time.monotonic() - start
    of_total = f"/{total}" if total else ""
    rate = f", {count / elapsed:.1f} {unit}/s" if unit and elapsed > 0 else ""
    print(f"{label}done, {count}{of_total} in {elapsed:.1f}s{rate}", file=sys.stderr, flush=True)


def _rate(count: int, total: int | None, start: float, unit: str | None) -> str:
    """``", 41.2 images/s, 3m20s left"`` for a loop with a ``unit``; ``""`` without one."""
    elapsed = time.monotonic() - start
    if not unit or elapsed <= 0:
        return ""
    speed = count / elapsed
    if not total or speed <= 0:
        return f", {speed:.1f} {unit}/s"
    left = round((total - count) / speed)
    hours, rest = divmod(left, 3600)
    shown = f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
    return f", {speed:.1f} {unit}/s, {shown} left"
