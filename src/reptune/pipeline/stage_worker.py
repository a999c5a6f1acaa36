"""A second process that runs an experiment's stages beside the main one (``workers: 2``).

On a CPU with few cores, two processes with half the threads each get more done than one
process with all of them: the matrix products of a small model on a short batch do not keep
two cores busy (measured: two 1-thread evaluations of 160 twins side by side took 15.9 s each,
one 2-thread evaluation 10.7 s; AMD EPYC, 2 cores, AVX2 kernels). So once the data and the
vector are done, the main process starts this worker and both walk the rest of the plan: the
sweep's layers (a stage each), then the trainings and evaluations, the main process in the usual
order, the worker from the other end (``Experiment.walk``: the sweep's layers, the variants,
their seeds, the studies and each study's independent trainings in reverse). Each stage is claimed in the stage store before it
runs (:class:`reptune.pipeline.stages.StageStore`). The main process waits for a stage the worker
holds and reuses its result; the worker puts a chain whose stage the main process holds off
until it has nothing else to do (:func:`reptune.pipeline.stages.run_deferring`), so neither walks
behind the other, idle, and every stage runs once. Only the main process writes results and the
report.

From the split on, both processes use the same number of threads, so a stage's numbers do not
depend on which process ran it. The worker's output goes to ``RUN/worker.log``. If it fails,
the main process carries on alone (a stage the worker held is taken over when it dies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from reptune._process import end_process

WORKER_LOG = "worker.log"
"""The worker's output, in the run folder."""


def resolve_workers(setting: int | str) -> int:
    """``workers`` from the config: ``auto`` is 2 on a CPU-only machine with at least 2 cores, else 1."""
    if setting != "auto":
        return int(setting)
    return 2 if not torch.cuda.is_available() and (os.cpu_count() or 1) >= 2 else 1


class StageWorker:
    """The running worker process (started by :func:`start_worker`)."""

    def __init__(self, process: subprocess.Popen[bytes], spec_path: Path, log: Any, threads_before: int) -> None:
        self.process = process
        self.spec_path = spec_path
        self.log = log
        self.threads_before = threads_before

    def stop(self, wait_s: float) -> int | None:
        """Let the worker finish for up to ``wait_s`` seconds, then end it; its exit code (``None``: ended here)."""
        try:
            code: int | None = self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            end_process(self.process)
            code = None
        self.log.close()
        self.spec_path.unlink(missing_ok=True)
        torch.set_num_threads(self.threads_before)
        return code


def start_worker(run_dir: Path, session: str, precision: tuple[str, str], load_options: dict[str, Any]) -> StageWorker:
    """Start the worker on ``run_dir`` (whose ``config.yaml`` it reads) and halve this process's threads."""
    threads_before = torch.get_num_threads()
    threads = max(1, threads_before // 2)
    spec = {"run_dir": str(run_dir), "session": session, "precision": list(precision), "threads": threads, "load_options": load_options}
    spec_path = run_dir / f".worker-{session}.tmp"  # hidden .tmp: a killed run's is removed by the next
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    log = (run_dir / WORKER_LOG).open("wb")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    entry = "import sys; from reptune.pipeline.runner import worker_main; sys.exit(worker_main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", entry, str(spec_path)],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    torch.set_num_threads(threads)
    return StageWorker(process, spec_path, log, threads_before)
