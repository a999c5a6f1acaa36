"""One progress-bar helper (rich) used by every long-running loop.

Bars are transient and drawn on stderr. Inside :func:`progress_display` (the experiment
pipeline's single display) every :func:`progress_bar` becomes a row of that display instead of
a display of its own, so nested loops show up together under one live view.

Without a terminal (output redirected to a log file, CI) a live display prints nothing, so
there every bar prints plain lines instead: one at most every ``LOG_EVERY_S`` seconds with its
count, elapsed time and ETA, and one when it ends; a loop that ends within ``QUIET_S`` prints
nothing. A bar of its own (not inside an experiment, whose stage lines say what runs) also says
that it started once it has run ``QUIET_S``, so a slow first item is not a silent log.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_ACTIVE: list[Progress] = []  # the display opened by progress_display(), if any
LOG_EVERY_S = 30.0
QUIET_S = 2.0


def interactive() -> bool:
    """Whether stderr is a terminal (live bars) rather than a file or pipe (plain log lines)."""
    return Console(stderr=True).is_terminal


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def log_line(message: str) -> None:
    """One plain progress line on stderr (flushed: a log file shows it at once)."""
    print(f"[reptune {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class _LineBar:
    """A progress bar for logs: start, throttled count/ETA lines, end."""

    def __init__(self, description: str, total: int, announce: bool = False) -> None:
        self.description, self.total, self.done = description, max(total, 1), 0
        self.started = self.last = time.perf_counter()
        self.status: str | None = None
        self._announce: threading.Timer | None = None
        if announce:
            self._announce = threading.Timer(QUIET_S, lambda: log_line(f"{self.description}: started ({self.total} to do)"))
            self._announce.daemon = True
            self._announce.start()

    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.done += n
        self.status = status if status is not None else self.status
        now = time.perf_counter()
        if now - self.last >= LOG_EVERY_S and self.done < self.total:
            self.last = now
            elapsed = now - self.started
            eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            log_line(f"{self.description}: {self.done}/{self.total} · {format_seconds(elapsed)} elapsed · ETA {format_seconds(eta)}" + (f" · {self.status}" if self.status else ""))

    def close(self) -> None:
        if self._announce is not None:
            self._announce.cancel()
        elapsed = time.perf_counter() - self.started
        if elapsed >= QUIET_S:  # quick loops stay quiet; the stage line says they ran
            log_line(f"{self.description}: {self.done}/{self.total} in {format_seconds(elapsed)}" + (f" · {self.status}" if self.status else ""))


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
    if not interactive():
        bar = _LineBar(description, total, announce=not _ACTIVE)
        try:
            yield bar.advance
        finally:
            bar.close()
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
