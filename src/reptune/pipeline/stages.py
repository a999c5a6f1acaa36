"""Cached, resumable stages.

Every stage of an experiment writes into its own folder ``RUN/stages/<name>/`` and records
there, in ``stage.json``, the hash of everything it depends on (its *key*: the config section
it reads, the keys of the stages it builds on, the model). On a re-run a stage whose
``stage.json`` says ``done`` with the same key is skipped and its recorded outputs are reused;
a stage with another key is wiped and run again. A stage that was interrupted keeps its folder
(``status: running``), so work that can resume inside it (tuning checkpoints, evaluation chunk
caches) is picked up. Ctrl-C therefore loses at most the stage in progress, usually less.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reptune._io import sha256_json, write_json_atomic
from reptune.errors import ReptuneError


class StageError(ReptuneError):
    """A stage failed; earlier stages' results stay on disk and are reused next time."""


def stage_folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name)


class StageStore:
    """Runs stages once per input key; counts what ran and what was reused."""

    def __init__(self, run_dir: Path) -> None:
        self.root = Path(run_dir) / "stages"
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.elapsed: dict[str, float] = {}
        self.keys: dict[str, str] = {}

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
        folder = self.folder(name)
        record = self._record(name)
        if record and record.get("key") == key and record.get("status") == "done":
            self.skipped.append(name)
            self.elapsed[name] = float(record.get("elapsed_s", 0.0))
            return record["outputs"]
        if folder.exists() and (record is None or record.get("key") != key):
            shutil.rmtree(folder)  # another config's (or a broken) stage: start clean
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "stage.json", {"stage": name, "key": key, "status": "running", "inputs": inputs})
        started = time.perf_counter()
        try:
            outputs = work(folder)
        except (KeyboardInterrupt, StageError):
            raise
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StageError(f"stage {name!r} failed: {message} (finished stages are kept in {self.root} and reused on the next run)") from exc
        elapsed = time.perf_counter() - started
        write_json_atomic(folder / "stage.json", {"stage": name, "key": key, "status": "done", "inputs": inputs, "outputs": outputs, "elapsed_s": round(elapsed, 3)})
        self.ran.append(name)
        self.elapsed[name] = elapsed
        return outputs
