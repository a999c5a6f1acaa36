"""Atomic file writes, output-folder guards and content hashing shared by every stage that writes.

Output folders reptune creates carry a marker file (:data:`RUN_MARKER`); reptune only deletes
or rewrites a non-empty folder that holds one (or the files an older reptune wrote there), so a
mistyped ``-o`` never costs a user's own files.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reptune.errors import DataError, ReptuneError

RUN_MARKER = ".reptune-run"
MARKER_FORMAT = "reptune-output/1"
_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read once (from /proc where possible: ``os.umask`` must set it to read it)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", encoding="ascii") as status:
                line = next(row for row in status if row.startswith("Umask:"))
            _UMASK = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError, IndexError):
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def file_mode() -> int:
    """Permission bits of a newly written file: ``0o666 & ~umask`` (what ``open()`` would give)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Permission bits of a new folder: ``0o777 & ~umask`` (what ``mkdir()`` would give)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    A crash or exception inside the block leaves any previous file untouched and removes
    the temporary, so readers never see a half-written artifact. The file gets the mode a
    plain ``open()`` would give it (``0o666 & ~umask``), not ``mkstemp``'s private ``0o600``.
    """
    target = Path(path)
    if target.is_dir():
        raise ReptuneError(f"cannot write {target}: it is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, file_mode())  # also undoes safetensors' private mode for a file it wrote here
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def set_plain_modes(folder: str | os.PathLike[str]) -> None:
    """Give every file below ``folder`` the mode ``open()`` would (``0o666 & ~umask``) and every
    folder ``mkdir``'s, before a staged folder is renamed into place: ``safetensors`` writes its
    files private (``0o600``), unlike every other file reptune writes."""
    root = Path(folder)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, dir_mode() if path.is_dir() else file_mode())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/inf: non-finite floats (e.g. a CI over one item) become null, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def safe_filename(name: str) -> str:
    """``name`` with every run of characters outside ``[A-Za-z0-9_.-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def sha256_json(obj: Any) -> str:
    """Stable SHA-256 hex digest of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_text_file(path: str | os.PathLike[str], what: str = "", *, missing: str | None = None, error: type[ReptuneError] = DataError) -> str:
    """The UTF-8 text of a file the user named; failing to read it is a one-line ``error``.

    A file that does not exist: ``"{missing} not found: PATH"`` (without ``missing`` it counts as
    unreadable); one that cannot be read or decoded: ``"cannot read {what} PATH: REASON"`` (``what``
    left out when empty).
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if missing is not None and isinstance(exc, FileNotFoundError):
            raise error(f"{missing} not found: {path}") from None
        raise error(f"cannot read {what + ' ' if what else ''}{path}: {exc}") from None


def loads_json(text: str | bytes, where: str) -> Any:
    """``json.loads`` whose failures (bad syntax, nesting too deep for Python) are one-line DataErrors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None


# ----------------------------------------------------------------------------- output folders
# what an older reptune (before the marker) left in each kind of output folder
_LEGACY_SIGNS = {
    "experiment": ("config.yaml", "stages"),
    "tune": ("tune_config.json", "checkpoints/latest.json"),
}


def write_run_marker(folder: str | os.PathLike[str], kind: str) -> None:
    """Mark ``folder`` as a reptune output of ``kind`` (``experiment`` or ``tune``), once."""
    marker = Path(folder) / RUN_MARKER
    if marker_kind(folder) == kind:
        return
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(marker, {"format": MARKER_FORMAT, "kind": kind, "created": created})


def marker_kind(folder: str | os.PathLike[str]) -> str | None:
    """The kind recorded in ``folder``'s run marker, or ``None`` without a readable marker."""
    try:
        data = json.loads((Path(folder) / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(data, dict) and data.get("format") == MARKER_FORMAT and isinstance(data.get("kind"), str):
        return data["kind"]
    return None


def is_reptune_output(folder: str | os.PathLike[str], kind: str) -> bool:
    """Whether ``folder`` holds a reptune output of ``kind`` (marker, or an older run's files)."""
    folder = Path(folder)
    if marker_kind(folder) == kind:
        return True
    if kind == "experiment":
        return (folder / "config.yaml").is_file() and any((folder / "stages").glob("*/stage.json"))
    return any((folder / sign).is_file() for sign in _LEGACY_SIGNS.get(kind, ()))


def check_output_dir(folder: str | os.PathLike[str], kind: str, *, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Refuse to write into ``folder`` when it is a file, or a non-empty folder that is not a reptune output.

    Raises:
        ReptuneError: one line naming the folder and what to do instead.
    """
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise ReptuneError(f"output {folder} is a broken symbolic link")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ReptuneError(f"output {folder} is a file, not a directory")
    if overwrite or is_reptune_output(folder, kind) or not any(folder.iterdir()):
        return
    raise ReptuneError(
        f"output directory {folder} is not empty and holds no reptune {kind} output: choose a new or empty directory"
        + (f" (or pass {flag} to write into it anyway)" if flag else "")
    )


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden ``.*.tmp`` files and folders a killed write left in ``folder``; return them."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
