"""``reptune run`` in a multi-process launch: the main process runs the experiment, all train.

Only the training stages use several processes (:mod:`reptune.tuning.distributed`). The main
process (rank 0) runs the experiment as it would alone; when a ``train:`` stage has to run (not
reused), it posts the stage's job, a JSON message, to a mailbox folder in the run directory and
trains its share of it (:func:`train_job`); every other process waits for jobs there, trains its
share of each with the same job, and leaves when the main process posts ``end``. Waiting goes
through files, not collectives: the evaluation stages between two trainings can run longer than
a collective's timeout. The run directory must be on a file system every process sees.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from reptune._io import write_json_atomic
from reptune.models import ModelHandle, load_model
from reptune.tuning import TuneConfig, TuneResult
from reptune.tuning.distributed import Ranks, current
from reptune.tuning.items import load_retain_texts, load_tune_items
from reptune.vectors import load_vector

POLL_S = 0.2
"""How often a waiting process looks for the next message (seconds)."""


class Mailbox:
    """Numbered JSON messages from the main process, in ``RUN/.workers-SESSION.tmp/``.

    ``SESSION`` is drawn by the main process for each ``reptune run``, so a killed run's messages
    are never read by the next; the folder is removed at the end (a killed run's by the next run,
    which removes every hidden ``.*.tmp`` entry of the run directory).
    """

    def __init__(self, run_dir: str | Path, session: int) -> None:
        self.folder = Path(run_dir) / f".workers-{session:016x}.tmp"
        self.count = 0

    def post(self, message: dict[str, Any]) -> None:
        """Main process: the next message (written atomically, so a reader never sees half of it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / f"{self.count:06d}.json", message)
        self.count += 1

    def receive(self) -> dict[str, Any]:
        """Other processes: wait for the next message and return it."""
        path = self.folder / f"{self.count:06d}.json"
        while not path.is_file():
            time.sleep(POLL_S)
        self.count += 1
        return json.loads(path.read_text(encoding="utf-8"))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def train_job(job: dict[str, Any]) -> tuple[ModelHandle, TuneResult]:
    """The training of one ``train:`` stage, described by a JSON-able ``job`` (what the main process
    posts): load the model onto this process's device, read the items, vector and retain corpus, and
    :func:`reptune.tuning.tune` into ``job["folder"]`` (resuming its checkpoints).

    Keys: ``config`` (``TuneConfig.to_json()``), ``model``, ``revision``, ``autocast``, ``load_options``,
    ``items`` (train CSV), ``kind`` (``ab``/``twin``), ``vector`` (path or ``None``), ``folder``, ``progress``,
    ``weights`` (``full``/``blocks``, see :func:`reptune.tuning.tune`).
    """
    from reptune.tuning import tune  # looked up per call (tests replace it)

    config = TuneConfig.from_json(job["config"])
    ranks = current()
    with ranks.main_first():
        handle = load_model(job["model"], revision=job["revision"], autocast=job["autocast"], device=ranks.load_device(), **job["load_options"])
    items, origin = load_tune_items(job["items"], handle.tokenizer, kind=job["kind"])
    vector = load_vector(job["vector"], handle, allow_model_mismatch=True) if job["vector"] else None
    retain = load_retain_texts(config.retain_data) if config.retain != "none" and config.retain_data else None
    result = tune(handle, config, items, job["folder"], vector=vector, vector_path=job["vector"], data_origin=origin,
                  retain_texts=retain, resume=True, progress=job["progress"], weights=job.get("weights", "full"))
    return handle, result


def serve(mailbox: Mailbox, ranks: Ranks) -> None:
    """A process other than the main one: train every job posted until ``end``, then leave with the others."""
    while True:
        message = mailbox.receive()
        if message["kind"] != "train":
            ranks.barrier()  # the main process removes the mailbox once every process has read the end
            return
        train_job(message["job"])


def dismiss(mailbox: Mailbox, ranks: Ranks) -> None:
    """Main process, at the end of a run (also a failed one): let the other processes go, then clean up."""
    mailbox.post({"kind": "end"})
    ranks.barrier()
    mailbox.close()
