"""Cached, resumable stages.

Every stage of an experiment writes into its own folder ``RUN/stages/<name>/`` and records
there, in ``stage.json``, the hash of everything it depends on (its *key*: the config section
it reads, the keys of the stages it builds on, the model). On a re-run a stage whose
``stage.json`` says ``done`` with the same key is skipped and its recorded outputs are reused;
a stage with another key is wiped and run again. A stage that was interrupted keeps its folder
(``status: running``), so work that can resume inside it (tuning checkpoints, evaluation chunk
caches) is picked up. Ctrl-C therefore loses at most the stage in progress, usually less.

Two processes of one run (the main one and a stage worker, see ``Experiment(workers=2)``) share
the store: a stage is claimed by creating ``stages/<name>.lock`` (the owner's pid) before it
runs, and a process that finds another's claim waits for it and reuses the result. A claim whose
owner is no longer alive is taken over; ``clear_locks`` removes every claim when a run starts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reptune import _work
from reptune._io import sha256_json, write_json_atomic
from reptune.errors import ReptuneError


class StageError(ReptuneError):
    """A stage failed; earlier stages' results stay on disk and are reused next time."""


class StageBusy(Exception):
    """Another process of the run holds the stage and this store does not wait (``wait=False``)."""


def stage_folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name)


LOCK_POLL_S = 0.25
"""How often a process waiting for another's stage looks again (seconds)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class StageStore:
    """Runs stages once per input key; counts what ran and what was reused.

    ``session`` marks the stages this run computed, so a stage another process of the same run
    computed counts as run (``ran``, ``by_worker``), not as reused from an earlier run.
    """

    def __init__(self, run_dir: Path, session: str = "") -> None:
        self.root = Path(run_dir) / "stages"
        self.session = session
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.by_worker: list[str] = []
        self.computed: list[str] = []  # the stages this process ran the work of
        self.wait = True  # False: a stage another process holds raises StageBusy instead of being waited for
        self.elapsed: dict[str, float] = {}
        self.counts: dict[str, dict[str, int]] = {}  # work each stage did (reptune._work): items scored, steps trained
        self.keys: dict[str, str] = {}

    def clear_locks(self) -> None:
        """Remove every stage claim (at the start of a run: no other process works here yet)."""
        for lock in self.root.glob("*.lock") if self.root.is_dir() else ():
            lock.unlink(missing_ok=True)

    def _claim(self, name: str) -> Path | None:
        """Claim stage ``name`` for this process; ``None`` while another live process holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / f"{stage_folder_name(name)}.lock"
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = int(lock.read_text() or 0)
                except (OSError, ValueError):
                    owner = 0  # being written: look again
                if owner and not _alive(owner):
                    lock.unlink(missing_ok=True)  # its owner died: take the stage over
                    continue
                return None
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return lock

    def _reuse(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        self.elapsed[name] = float(record.get("elapsed_s", 0.0))
        if isinstance(record.get("counts"), dict):  # stages recorded before counting began have none
            self.counts[name] = record["counts"]
        if self.session and record.get("session") == self.session and name not in self.ran:
            self.ran.append(name)
            self.by_worker.append(name)
        else:
            self.skipped.append(name)
        return record["outputs"]

    def folder(self, name: str) -> Path:
        return self.root / stage_folder_name(name)

    def key(self, name: str, inputs: Any) -> str:
        return sha256_json({"stage": name, "inputs": inputs})

    def _record(self, name: str) -> dict[str, Any] | None:
        path = self.folder(name) / "stage.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def cached(self, name: str, inputs: Any) -> dict[str, Any] | None:
        """The outputs of a finished stage with these inputs, or ``None``."""
        record = self._record(name)
        if record and record.get("status") == "done" and record.get("key") == self.key(name, inputs):
            return record["outputs"]
        return None

    def run(self, name: str, inputs: Any, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Return the cached outputs of ``name`` or run ``work(folder)`` and record its outputs.

        Raises:
            StageError: ``work`` raised; the message names the stage.
        """
        key = self.key(name, inputs)
        self.keys[name] = key
        while True:
            record = self._record(name)
            if record and record.get("key") == key and record.get("status") == "done":
                return self._reuse(name, record)
            lock = self._claim(name)
            if lock is not None:
                break
            if not self.wait:
                raise StageBusy(name)
            time.sleep(LOCK_POLL_S)  # another process of this run is on it
        try:
            return self._run_claimed(name, key, inputs, work)
        finally:
            lock.unlink(missing_ok=True)

    def _run_claimed(self, name: str, key: str, inputs: Any, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        folder = self.folder(name)
        record = self._record(name)
        if record and record.get("key") == key and record.get("status") == "done":  # finished between our look and our claim
            return self._reuse(name, record)
        if folder.exists() and (record is None or record.get("key") != key):
            shutil.rmtree(folder)  # another config's (or a broken) stage: start clean
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "stage.json", {"stage": name, "key": key, "status": "running", "inputs": inputs})
        started, started_at, before = time.perf_counter(), time.time(), _work.snapshot()
        try:
            outputs = work(folder)
        except (KeyboardInterrupt, StageError, StageBusy):
            raise
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StageError(f"stage {name!r} failed: {message} (finished stages are kept in {self.root} and reused on the next run)") from exc
        elapsed, counts = time.perf_counter() - started, _work.since(before)
        write_json_atomic(folder / "stage.json", {"stage": name, "key": key, "status": "done", "inputs": inputs, "outputs": outputs, "elapsed_s": round(elapsed, 3),
                                                  "counts": counts, "started_at": round(started_at, 3), "pid": os.getpid(),
                                                  **({"session": self.session} if self.session else {})})
        self.ran.append(name)
        self.computed.append(name)
        self.elapsed[name] = elapsed
        self.counts[name] = counts
        return outputs


def run_deferring(store: StageStore, items: list[Any], work: Callable[[Any], None], *, defer: bool | None = None,
                  leftover: list[Callable[[], None]] | None = None) -> None:
    """``work(item)`` for each item, in order.

    With ``defer`` (default: where ``store.wait`` is False, as in a stage worker), an item that
    reaches a stage the other process holds (:class:`StageBusy`) is put off; the items put off run
    after the others, each tried again in turn until it gets through (what the other process
    finished meanwhile is reused). So the two processes do not walk one chain in step, one of them
    idle. Given ``leftover``, the items put off are not finished here but appended to it (as
    callables, for :func:`run_independent`), so the caller can do other work first.
    """
    defer = not store.wait if defer is None else defer
    if not defer:
        for item in items:
            work(item)
        return
    works = [functools.partial(work, item) for item in items]
    if leftover is None:
        run_independent(store, works)
        return
    with _not_waiting(store):
        leftover.extend(_busy_after_one_pass(works))


def run_independent(store: StageStore, works: list[Callable[[], None]]) -> None:
    """Run ``works`` (each one or more stages that need none of the others' results) in order; one
    that reaches a stage the other process holds is put off and tried again after the rest, so
    each process takes the next free stage instead of waiting (both processes can share the
    evaluations of one trained model)."""
    pending = list(works)
    with _not_waiting(store):
        while pending:
            busy = _busy_after_one_pass(pending)
            if len(busy) == len(pending):
                time.sleep(LOCK_POLL_S)  # every one held by the other process: look again shortly
            pending = busy


@contextlib.contextmanager
def _not_waiting(store: StageStore) -> Iterator[None]:
    """``store.wait`` off inside (a held stage raises :class:`StageBusy`), as it was after."""
    saved, store.wait = store.wait, False
    try:
        yield
    finally:
        store.wait = saved


def _busy_after_one_pass(works: list[Callable[[], None]]) -> list[Callable[[], None]]:
    """Call each of ``works`` once; return those that reached a stage another process holds."""
    busy = []
    for work in works:
        try:
            work()
        except StageBusy:
            busy.append(work)
    return busy
