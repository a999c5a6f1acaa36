"""One progress-bar helper (rich) used by every long-running loop.

Bars are transient and drawn on stderr. Inside :func:`progress_display` (the experiment
pipeline's single display) every :func:`progress_bar` becomes a row of that display instead of
a display of its own, so nested loops show up together under one live view.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_ACTIVE: list[Progress] = []  # the display opened by progress_display(), if any


def _columns() -> tuple:
    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


@contextlib.contextmanager
def progress_display(enabled: bool = True) -> Iterator[Progress | None]:
    """Open one live display that every nested :func:`progress_bar` joins (``None`` if disabled)."""
    if not enabled or _ACTIVE:
        yield _ACTIVE[0] if _ACTIVE else None
        return
    with Progress(*_columns(), transient=True, console=Console(stderr=True)) as progress:
        _ACTIVE.append(progress)
        try:
            yield progress
        finally:
            _ACTIVE.pop()


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, status=None)``; shows a transient rich bar on stderr when ``enabled``.

    ``status`` (e.g. the current losses) is shown after the description.
    """
    if not enabled:
        yield lambda _n=1, status=None: None
        return
    with contextlib.ExitStack() as stack:
        progress = _ACTIVE[0] if _ACTIVE else stack.enter_context(Progress(*_columns(), transient=True, console=Console(stderr=True)))
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, status: str | None = None) -> None:
            progress.update(task, advance=n, description=description if status is None else f"{description} {status}")

        try:
            yield advance
        finally:
            if _ACTIVE:
                progress.remove_task(task)
