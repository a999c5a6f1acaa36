"""One progress-bar helper (rich) used by every long-running loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, status=None)``; shows a transient rich bar on stderr when ``enabled``.

    ``status`` (e.g. the current losses) is shown after the description.
    """
    if not enabled:
        yield lambda _n=1, status=None: None
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, status: str | None = None) -> None:
            progress.update(task, advance=n, description=description if status is None else f"{description} {status}")

        yield advance
