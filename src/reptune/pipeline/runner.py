"""The whole study as one command: ``reptune run EXPERIMENT.yaml -o runs/NAME``.

Stages, in order (each cached by the hash of its inputs, see :mod:`reptune.pipeline.stages`):

1. ``data``: split the statements into train / validation / test CSVs (seeded, stratified).
2. ``vector``: honest/dishonest persona pairs from the *train* statements, one read of every
   layer, a direction per layer and the layer scan; the steering layer is the scan's best
   layer unless the config names one.
3. ``sweep``: ``facts-ab`` on the *validation* statements steered at the vector layer with every
   multiplier; the selection rule (excluding degenerate cells) picks ``m+`` and ``m-``.
4. ``train:<variant>:s<seed>``: each tuning variant, from the base weights, on the *train*
   statements (early stopping on the trainer's own validation slice of them). Under
   ``accelerate launch`` every process trains its share (:mod:`reptune.pipeline.workers`); every
   other stage runs on the first process.
5. ``eval:<condition>[:s<seed>]``: untuned, steered ``+v`` (``m+``) and ``-v`` (``m-``), every
   variant, and every variant under counter-steering, on the configured tasks (``facts-ab`` on
   the *test* statements); plus representation-level evidence (cosine and projection onto the
   vector at its layer, on test prompts).
6. ``robustness:<condition>``, ``projection:<condition>``: counter-steering grids and per-token
   cosine heatmaps.
7. ``results.json`` (analysis, paired tests, claims) and the report (``report.md``,
   ``report.html``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import functools
import gc
import io
import json
import os
import random
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reptune._io import (
    RUN_MARKER,
    check_output_dir,
    is_reptune_output,
    json_safe,
    remove_stale_temps,
    safe_filename,
    sha256_json,
    write_json_atomic,
    write_run_marker,
    write_text_atomic,
)
from reptune._progress import progress_display
from reptune.block_replay import BlockInputStore, frozen_blocks
from reptune.data.twins import has_pairs, split_by_pair, statements_to_twins
from reptune.errors import DataError, ReptuneError
from reptune.models import ModelHandle, load_model, local_files_fingerprint
from reptune.pipeline.config import ExperimentConfig, load_config
from reptune.pipeline.selection import knowledge_summary, learnability_gate, select_steering
from reptune.pipeline.stage_worker import StageWorker, resolve_workers, start_worker
from reptune.pipeline.stages import StageBusy, StageError, StageStore, run_deferring, run_independent
from reptune.pipeline.studies import check_studies, estimate_studies, run_studies, study_reads
from reptune.pipeline.workers import Mailbox, dismiss, serve, train_job
from reptune.reporting.experiment import write_report
from reptune.reporting.schema import ExperimentResults, StageNames, Timings
from reptune.sites import parse_layers
from reptune.tuning.distributed import current as current_ranks

RESULTS_FORMAT = "reptune-experiment/1"
# tasks that read the run's own statement splits (test for evaluation, val for sweep and checks)
SPLIT_TASKS = ("facts-ab", "facts-twin", "facts-word")
VECTOR_FILE = "honesty.safetensors"
# everything a run writes at the top of its folder: all that `--fresh` ever deletes
BLOCK_INPUTS = "block_inputs"
"""The run folder's recorded block inputs (:mod:`reptune.block_replay`), shared by both processes."""
WORKER_PROGRESS = ".worker-progress.json"
"""In ``stages/``: the estimated cost of the stages the stage worker finished, for the main process's ETA."""
RUN_ENTRIES = (RUN_MARKER, "config.yaml", "results.json", "report.md", "report.html", "figures", "stages", "worker.log", BLOCK_INPUTS)

# rough seconds per unit on the embedded model (2 CPU cores), only for the progress estimate
_COST = {"data": 1.0, "vector": 15.0, "sweep_point": 2.0, "train_step": 1.3, "eval_task": 12.0, "robust_cell": 2.0, "projection": 3.0}


@dataclass
class ExperimentRun:
    """What :func:`run_experiment` returns."""

    run_dir: Path
    results: dict[str, Any]
    report: dict[str, Path] = field(default_factory=dict)
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)


MIN_ETA_ELAPSED_S = 5.0
"""Seconds of run time before the per-stage log line gives an ETA."""


class _Overall:
    """Overall progress: the top row of the live display, or one log line per stage without a terminal."""

    def __init__(self, progress: Any, total: float, worker_done: Callable[[], float] = lambda: 0.0) -> None:
        """``worker_done``: the estimated cost of the stages a stage worker has finished so far
        (counted as they finish, so the ETA does not wait for this process to reach them)."""
        from reptune._progress import interactive

        self.progress = progress
        self.worker_done = worker_done
        self.total, self.own, self.done = max(total, 1.0), 0.0, 0.0
        self.started = time.perf_counter()
        self.log = not interactive()
        self.name, self.stage_started = "", self.started
        self.task = progress.add_task("experiment", total=self.total) if progress is not None and not self.log else None

    def stage(self, name: str) -> None:
        self.name, self.stage_started = name, time.perf_counter()
        if self.task is not None:
            self.progress.update(self.task, description=f"experiment [bold]{name}[/]")

    def advance(self, cost: float, reused: bool = False, by_worker: bool = False) -> None:
        from reptune._progress import format_seconds, log_line

        if not by_worker:  # a stage the worker ran is in worker_done already
            self.own += cost
        self.done = min(self.total, self.own + self.worker_done())
        if self.task is not None:
            self.progress.update(self.task, completed=self.done)
        elif self.log:
            now = time.perf_counter()
            elapsed = now - self.started
            # the ETA scales the time so far by the estimated cost still to come (not before a few
            # seconds of work: a stage that took no time, like the data split, says nothing of speed)
            eta = elapsed / self.done * (self.total - self.done) if self.done and not reused and elapsed >= MIN_ETA_ELAPSED_S else None
            took = "reused" if reused else ("done by the stage worker" if by_worker else f"done in {now - self.stage_started:.1f} s")
            log_line(f"{self.name}: {took} · {format_seconds(elapsed)} elapsed" + (f" · ETA {format_seconds(eta)}" if eta is not None else "")
                     + f" · {100 * self.done / self.total:.0f}%")


def _split_statements(statements: list[Any], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Any]]:
    """Seeded split, stratified by label, so every split keeps the label balance.

    Within each split the labels run true, true, false, false, ...: A/B items put "True" first
    on even positions, so the correct letter then runs A, B, B, A, ... and a model that always
    answers "A" scores exactly 50% (on any multiple of 4 items), not 50% plus sampling noise.
    """
    rng = random.Random(seed)
    groups: dict[str, dict[int, list[Any]]] = {"train": {}, "val": {}, "test": {}}
    for label in sorted({s.label for s in statements}):
        group = [s for s in statements if s.label == label]
        rng.shuffle(group)
        n_test = max(1, round(len(group) * test_fraction))
        n_val = max(1, round(len(group) * val_fraction))
        groups["test"][label] = group[:n_test]
        groups["val"][label] = group[n_test : n_test + n_val]
        groups["train"][label] = group[n_test + n_val :]
    splits: dict[str, list[Any]] = {}
    for name, by_label in groups.items():
        trues, falses = by_label.get(1, []), by_label.get(0, [])
        ordered: list[Any] = []
        for start in range(0, max(len(trues), len(falses)), 2):
            ordered += trues[start : start + 2] + falses[start : start + 2]
        splits[name] = ordered
    return splits


def _write_statements(path: Path, statements: list[Any]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_pairs = all(s.pair is not None for s in statements)
    writer.writerow(["statement", "label", "topic"] + (["pair"] if with_pairs else []))
    for s in statements:
        writer.writerow([s.text, s.label, s.topic or ""] + ([s.pair] if with_pairs else []))
    write_text_atomic(path, buffer.getvalue())


def _release(handle: ModelHandle | None) -> None:
    if handle is not None:
        handle.model = None  # type: ignore[assignment]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Experiment:
    """One run of an :class:`ExperimentConfig` into ``run_dir`` (use :func:`run_experiment`)."""

    def __init__(
        self, config: ExperimentConfig, run_dir: str | Path, *, progress: bool = True, command: str | None = None, trust_remote_code: bool = False,
        allow_pickle: bool = False, session: str = "", precision: tuple[str, str] | None = None,
    ) -> None:
        """``session`` and ``precision`` are given only to a stage worker (:mod:`reptune.pipeline.stage_worker`):
        the main process's session id and resolved precision."""
        self.config = config
        self.mailbox: Mailbox | None = None  # set by run_experiment in a multi-process launch
        # how every model of the run loads; never from the config file (see ExperimentConfig)
        self.load_options: dict[str, Any] = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.command = command
        self.store = StageStore(self.run_dir, session)
        self.worker: StageWorker | None = None  # the main process's stage worker, while it runs
        self.is_worker = False  # True in the stage worker process (run_worker)
        self.skipped: list[dict[str, str]] = []
        self._base: ModelHandle | None = None
        self._worker_cost = 0.0  # in a stage worker: the cost of the stages it ran (WORKER_PROGRESS)
        self._model_files: str | None = None  # the local model's files fingerprint, once read ("" for none)
        self.block_store: BlockInputStore | None = None  # set once the trained range is known (after the sweep)
        self.counter_vectors: dict[str, Any] | None = None  # the counter-vectors stage's output, once it ran
        # what studies read (pipeline.studies.base.StudyHost), filled as the run goes
        self.m_plus = self.m_minus = 0.0
        self.tasks: list[str] = []
        self.conditions: list[dict[str, Any]] = []
        self.evals: dict[str, dict[str, Any]] = {}
        self.training: dict[str, dict[str, Any]] = {}
        self._overall: _Overall | None = None
        from reptune.precision import resolve_precision

        # resolved once per run: `auto` becomes bf16 only where bf16 is faster on this machine
        self.precision, self.precision_reason = precision or resolve_precision(config.precision)
        self.autocast = "bf16" if self.precision == "bf16" else None

    # -- models ---------------------------------------------------------------------------
    def base(self) -> ModelHandle:
        if self._base is None:
            try:
                self._base = load_model(self.config.model, revision=self.config.revision, autocast=self.autocast, **self.load_options)
            except ReptuneError as exc:
                raise StageError(f"stage 'load-model' failed: {exc}") from exc
            self._base.block_inputs = self.block_store
        return self._base

    def release_base(self) -> None:
        _release(self._base)
        self._base = None

    @property
    def model_key(self) -> dict[str, Any]:
        """What identifies the model in every stage key: name, revision, precision and, for a local
        directory, its files' fingerprint (weights replaced at the same path rerun the stages)."""
        if self._model_files is None:
            self._model_files = local_files_fingerprint(self.config.model) or ""
        key = {"model": self.config.model, "revision": self.config.revision, "precision": self.precision}
        return {**key, "files": self._model_files} if self._model_files else key

    # -- running ---------------------------------------------------------------------------
    def stage(self, name: str, inputs: Any, work: Callable[[Path], dict[str, Any]], cost: float) -> dict[str, Any]:
        """Run ``work(folder)`` once per ``inputs`` as the cached stage ``name`` (see :mod:`reptune.pipeline.stages`)."""
        return self._stage(name, inputs, work, cost)

    def stage_key(self, name: str) -> str:
        """The input hash of a stage this run ran or reused."""
        return self.store.keys[name]

    def _stage(self, name: str, inputs: Any, work: Callable[[Path], dict[str, Any]], cost: float) -> dict[str, Any]:
        if self._overall is not None:
            self._overall.stage(name)
        computed = len(self.store.computed)
        outputs = self.store.run(name, inputs, work)
        if self.is_worker and len(self.store.computed) > computed:  # tell the main process's ETA
            self._worker_cost += cost
            write_json_atomic(self.store.root / WORKER_PROGRESS, {"session": self.store.session, "done": self._worker_cost})
        if self._overall is not None:
            self._overall.advance(cost, reused=name in self.store.skipped, by_worker=name in self.store.by_worker)
        return outputs

    def _worker_done(self) -> float:
        """The cost of the stages this run's stage worker finished so far (0 without one)."""
        if self.worker is None:
            return 0.0
        try:
            record = json.loads((self.store.root / WORKER_PROGRESS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0.0
        return float(record.get("done", 0.0)) if record.get("session") == self.store.session else 0.0

    def _estimate(self) -> float:
        """Rough cost of the whole run in the units of ``_COST`` (only for the ETA)."""
        c = self.config
        n_tasks = len(c.evaluation.tasks)
        n_layers = len(c.sweep.layers) if isinstance(c.sweep.layers, list) else (1 if c.sweep.layers == "vector" else 4)
        steered_points = n_layers * sum(m != 0 for m in c.sweep.multipliers)
        total = _COST["data"] + _COST["vector"] + _COST["sweep_point"] * (1 + steered_points)  # 1: the unsteered point
        total += sum((v.steps or c.train.steps) * len(c.variant_seeds(v)) for v in c.variants) * _COST["train_step"]
        counter = c.counter
        countered = [len(c.variant_seeds(v)) for v in c.variants if v.counter != "none"]
        # counter-steered evaluations per variant (its seeds): the training vector, the other vector (every seed), the random floor
        n_countered = sum((n if counter.training_seeds == "all" else 1) + n * counter.other + counter.random * (n if counter.random_seeds == "all" else 1)
                          for n in countered)
        if countered and (counter.other or counter.random):
            total += _COST["vector"] / 2  # the counter-vectors stage
        # the untuned condition runs every task; the steered and tuned ones skip the base-only ones
        n_tuned_tasks = sum(task not in c.evaluation.base_only_tasks for task in c.evaluation.tasks)
        n_trained = sum(len(c.variant_seeds(v)) for v in c.variants)
        total += (n_tasks + (2 + n_trained) * n_tuned_tasks) * _COST["eval_task"]
        total += n_countered * len(c.evaluation.counter_tasks) * _COST["eval_task"] * (0.5 if c.evaluation.counter_limit else 1.0)
        if c.learnability.enabled:  # the untuned model's check and each truth / lie model's, on the validation split
            total += (1 + sum(len(c.variant_seeds(v)) for v in c.variants if v.preset in ("truth", "lie"))) * _COST["eval_task"] / 2
        if c.robustness.enabled:
            total += len(c.robustness.conditions) * len(c.robustness.layers or [0, 1, 2]) * len(c.robustness.multipliers) * _COST["robust_cell"]
        if c.projection.enabled:
            total += len(c.projection.conditions) * _COST["projection"]
        return total + estimate_studies(c, _COST)

    def run(self) -> ExperimentRun:
        started = time.perf_counter()
        check_output_dir(self.run_dir, "experiment", flag="")  # never write into a folder of the user's
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_marker(self.run_dir, "experiment")
        remove_stale_temps(self.run_dir)
        self.store.session = secrets.token_hex(8)
        self.store.clear_locks()
        write_text_atomic(self.run_dir / "config.yaml", self.config.to_yaml())
        try:
            with progress_display(self.progress) as display:
                self._overall = _Overall(display if self.progress else None, self._estimate(), self._worker_done) if self.progress else None
                results = self._run_stages()
        finally:
            worker_exit = self.worker.stop(wait_s=60 if sys.exc_info()[0] is None else 0) if self.worker else None
        wall = time.perf_counter() - started
        reused = sum(self.store.elapsed[name] for name in self.store.skipped)
        # total = this invocation plus the recorded time of the stages it reused
        results.timings = Timings(total_s=round(wall + reused, 1), this_run_s=round(wall, 1), stages={k: round(v, 2) for k, v in self.store.elapsed.items()},
                                  counts=dict(self.store.counts),
                                  workers=2 if self.worker else 1, worker_exit=worker_exit)
        results.stages = StageNames(ran=list(self.store.ran), reused=list(self.store.skipped), by_worker=list(self.store.by_worker))
        record = results.to_json()
        write_json_atomic(self.run_dir / "results.json", json_safe(record))
        report = write_report(self.run_dir)
        return ExperimentRun(self.run_dir, record, report, list(self.store.ran), list(self.store.skipped))

    def _run_stages(self) -> ExperimentResults:
        from reptune.pipeline import analysis

        c = self.config
        data, vector_info, sweep = self._prepare()  # starts the stage worker (if any) before the sweep
        representation, robustness, projection, untuned_check = self._evaluate_base()
        training, checks = self._train_and_evaluate(self.conditions, self.tasks, self.evals, representation, robustness, projection)
        self.training = training
        if untuned_check is not None:
            checks["untuned"] = {str(c.seeds[0]): untuned_check}
        gate = self._learnability(sweep, checks)
        studies = run_studies(self)
        self.release_base()
        return analysis.build_results(
            c, self.run_dir, command=self.command, precision=self.precision, precision_reason=self.precision_reason, skipped=self.skipped,
            data=data, vector_info=vector_info, sweep=sweep, conditions=self.conditions, evals=self.evals,
            training=training, robustness=robustness, projection=projection, representation=representation, tasks=self.tasks, gate=gate,
            headline_task=self.headline, knowledge=self._knowledge(self.evals), counter_vectors=self.counter_vectors, studies=studies,
        )

    def walk(self, items: list[Any]) -> list[Any]:
        """``items`` in this process's order: reversed in a stage worker (see :meth:`run_worker`)."""
        return list(reversed(items)) if self.is_worker else list(items)

    def run_worker(self) -> None:
        """A stage worker's walk (:mod:`reptune.pipeline.stage_worker`): the plan after the shared
        stages from the other end (variants, seeds and studies in reverse), then the base model's
        evaluations; every stage the main process holds or finished is waited for or reused."""
        self.is_worker = True
        self._prepare()
        self.store.wait = False  # a chain or study the main process is on is put off, not waited for
        leftover: list[Callable[[], None]] = []  # the chains the main process holds
        training, _ = self._train_and_evaluate(self.conditions, self.tasks, self.evals, [], {}, {}, leftover=leftover)
        self.training = training  # filled as the chains finish (a study reads only finished ones, below)
        held = {(variant.name, seed) for variant, seed in self.trainings() if str(seed) not in training.get(variant.name, {})}
        reads = study_reads(self.config)
        if reads is not None and not held & reads:  # the studies need none of them: on to the studies while the main process trains
            run_independent(self.store, [self._evaluate_base, lambda: run_studies(self)])
            run_independent(self.store, leftover)
        else:
            run_independent(self.store, [*leftover, self._evaluate_base, lambda: run_studies(self)])
        self.release_base()

    def _prepare(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The stages every later one builds on: data, vector, sweep, counter vectors; sets the
        layer, multipliers, tasks and conditions. Returns ``(data, vector_info, sweep)``."""
        c = self.config
        data = self._stage("data", {"data": c.data.model_dump()}, self._data_stage, _COST["data"])
        self.data = data
        check_studies(self)  # a study's input errors that need the data, before the model loads
        vector_info = self._stage("vector", {"model": self.model_key, "data": self.store.keys["data"], "vector": c.vector.model_dump()}, self._vector_stage, _COST["vector"])
        self.vector_path = self.run_dir / vector_info["file"]
        self.layer = int(vector_info["layer"])
        self.num_layers = int(vector_info["num_layers"])
        tasks = self._available_tasks()
        layers = self.sweep_layers(self.layer)
        if resolve_workers(c.workers) > 1 and self.mailbox is None and not self.is_worker:
            self.worker = start_worker(self.run_dir, self.store.session, (self.precision, self.precision_reason), self.load_options)
        sweep = self._sweep(layers)
        self.layer = int(sweep["selected"]["layer"])  # steering, loss and trained blocks follow the sweep's choice
        m_plus, m_minus = float(sweep["selected"]["positive"]), float(sweep["selected"]["negative"])
        self.m_plus, self.m_minus, self.tasks = m_plus, m_minus, tasks
        self._check_variants()
        self.block_store = self._block_store()
        if self._base is not None:
            self._base.block_inputs = self.block_store
        self.counter_vectors = self._counter_vectors_or_train_ahead() if self.is_worker else self._counter_vectors_stage()
        self.conditions = self._conditions(m_plus, m_minus)
        return data, vector_info, sweep

    def trainings(self) -> list[tuple[Any, int]]:
        """Every ``(variant, seed)`` the main plan trains, in the config's order."""
        return [(variant, seed) for variant in self.config.variants for seed in self.config.variant_seeds(variant)]

    def _counter_vectors_or_train_ahead(self) -> dict[str, Any] | None:
        """A stage worker's counter vectors: while the main process builds them, it trains the
        first model of its walk (which needs none), then takes them."""
        saved, self.store.wait = self.store.wait, False
        try:
            return self._counter_vectors_stage()
        except StageBusy:
            order = self.walk(self.trainings())
            trained: dict[str, Any] = {}
            try:
                if order:
                    self.train_variant(*order[0], trained)
            except StageBusy:
                pass  # the main process trains it: nothing to do ahead
            finally:
                _release(trained.get("handle"))
        finally:
            self.store.wait = saved
        return self._counter_vectors_stage()

    def _evaluate_base(self) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], float | None]:
        """The untuned and steered conditions, the base model's extras and learnability check:
        ``(representation rows, robustness, projection, untuned check)``."""
        c = self.config
        representation: list[dict[str, Any]] = []
        for cond in (cond for cond in self.conditions if cond["kind"] in ("untuned", "steered")):
            out = self._eval_condition(cond, None, self.tasks, lambda: self.base())
            self.evals.setdefault(cond["id"], {})[str(c.seeds[0])] = out
            representation.append({"condition": cond["id"], **out["representation"]})
        robustness: dict[str, Any] = {}
        projection: dict[str, Any] = {}
        self._extras("untuned", None, lambda: self.base(), robustness, projection)
        untuned_check = self._check_stage("untuned", c.seeds[0], "untuned", lambda: self.base()) if c.learnability.enabled else None
        self.release_base()
        return representation, robustness, projection, untuned_check

    def _block_store(self) -> BlockInputStore | None:
        """Where twin scoring records and replays the input of the first trained block (``evaluation.block_replay``):
        the lowest block any variant trains, if above 0 (:mod:`reptune.block_replay`)."""
        return self._replay_store(min(min(parse_layers(self._tune_config(v, self.config.seeds[0]).layers, self.num_layers)) for v in self.config.variants))

    def _replay_store(self, start: int) -> BlockInputStore | None:
        """A :class:`BlockInputStore` from block ``start`` in the run folder (``None`` if replay is off or ``start`` is 0)."""
        if not self.config.evaluation.block_replay or start < 1:
            return None
        return BlockInputStore(self.run_dir / BLOCK_INPUTS, start, {"model": self.model_key, "data": self.store.keys["data"]})

    def _check_variants(self) -> None:
        """A bad tuning option fails now, not after an hour of evaluation."""
        for variant in self.config.variants:
            try:
                self._tune_config(variant, self.config.seeds[0])
            except (ReptuneError, TypeError) as exc:
                raise StageError(f"stage 'check-config' failed: variant {variant.name!r}: {exc}") from exc

    def _train_and_evaluate(self, conditions: list[dict[str, Any]], tasks: list[str], evals: dict[str, dict[str, Any]], representation: list[dict[str, Any]],
                            robustness: dict[str, Any], projection: dict[str, Any], leftover: list[Callable[[], None]] | None = None,
                            ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
        """Every variant x seed: train, the learnability check (truth / lie), its conditions, the
        extras (in :meth:`walk` order: a stage worker starts from the last variant's last seed).
        ``leftover``: see :func:`run_deferring` (the chains put off are left to the caller)."""
        c = self.config
        training: dict[str, dict[str, Any]] = {}
        checks: dict[str, dict[str, float]] = {}
        order = self.trainings()

        def chain(item: tuple[Any, int]) -> None:
            variant, seed = item
            trained: dict[str, Any] = {}
            try:
                training.setdefault(variant.name, {})[str(seed)] = self.train_variant(variant, seed, trained)
                train_key = self.store.keys[f"train:{variant.name}:s{seed}"]
                loader = self.tuned_loader(training[variant.name][str(seed)], trained)
                chain_conditions = [cond for cond in conditions if cond.get("variant") == variant.name and not (cond.get("first_seed") and seed != c.seeds[0])]
                outs = self._after_training(variant, seed, train_key, loader, chain_conditions, tasks, checks, robustness, projection)
                for cond in chain_conditions:  # in the plan's order, whichever finished first
                    evals.setdefault(cond["id"], {})[str(seed)] = outs[cond["id"]]
                    if seed == c.seeds[0]:
                        representation.append({"condition": cond["id"], **outs[cond["id"]]["representation"]})
            finally:
                _release(trained.get("handle"))

        run_deferring(self.store, self.walk(order), chain, leftover=leftover)
        return training, checks

    def _after_training(self, variant: Any, seed: int, train_key: str, loader: Callable[[], ModelHandle], chain_conditions: list[dict[str, Any]],
                        tasks: list[str], checks: dict[str, dict[str, float]], robustness: dict[str, Any], projection: dict[str, Any]) -> dict[str, Any]:
        """A trained model's stages: the learnability check (truth / lie), its conditions' evaluations
        and (first seed) its extras. They are independent, so the two processes can share them
        (:func:`run_independent`). Returns each condition's evaluation outputs by condition id."""
        c = self.config
        outs: dict[str, Any] = {}

        def check() -> None:
            checks.setdefault(variant.preset, {})[str(seed)] = self._check_stage(variant.name, seed, train_key, loader)

        def evaluate(cond: dict[str, Any]) -> None:
            outs[cond["id"]] = self._eval_condition(cond, (seed, train_key), tasks, loader)

        works = [check] if variant.preset in ("truth", "lie") and c.learnability.enabled else []
        works += [functools.partial(evaluate, cond) for cond in chain_conditions]
        if seed == c.seeds[0]:
            works.append(lambda: self._extras(variant.name, (seed, train_key), loader, robustness, projection))
        run_independent(self.store, works)
        return outs

    def _check_stage(self, variant: str, seed: int, train_key: str, loader: Callable[[], ModelHandle]) -> float:
        """The headline behaviour of a tuned model on the validation split (the learnability check)."""
        from reptune.evaluation import evaluate

        limit = self.config.learnability.limit
        inputs = {"model": self.model_key if train_key == "untuned" else train_key, "data": self.store.keys["data"], "task": self.headline, "limit": limit}

        def work(folder: Path) -> dict[str, Any]:
            task = self._task(self.headline, split="val", tuned=train_key != "untuned")
            result = evaluate(loader(), [task], limit=limit, batch_size=self.config.evaluation.batch_size, seed=seed,
                              output=folder / "results.json", progress=self.progress)[task.full_name]
            return {"value": result.metrics[result.primary]["value"], "n": result.metrics[result.primary].get("n")}

        return float(self._stage(f"check:{variant}:s{seed}", inputs, work, _COST["eval_task"] / 2)["value"])

    def _learnability(self, sweep: dict[str, Any], checks: dict[str, dict[str, float]]) -> dict[str, Any] | None:
        if not self.config.learnability.enabled:
            return None
        untuned = checks.get("untuned", {}).get(str(self.config.seeds[0]))
        gate = learnability_gate(untuned, list(checks.get("truth", {}).values()), list(checks.get("lie", {}).values()),
                                 min_move=self.config.learnability.min_move)
        return {**gate, "task": self.headline, "split": "val", "untuned": untuned, "truth": checks.get("truth", {}), "lie": checks.get("lie", {})}

    def _knowledge(self, evals: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """What the untuned model knows: its per-item headline records on the test split."""
        from reptune.evaluation import load_eval_results

        out = evals.get("untuned", {}).get(str(self.config.seeds[0]))
        if out is None:
            return None
        loaded = load_eval_results(self.run_dir / out["results"]).tasks.get(self.headline)
        if loaded is None:
            return None
        return {"task": self.headline, "split": "test", **knowledge_summary(loaded.records)}

    # -- stages ----------------------------------------------------------------------------
    def _data_stage(self, folder: Path) -> dict[str, Any]:
        from reptune.data.sources import read_source

        c = self.config.data
        source = read_source(c.statements)
        if source.kind != "statements":
            raise DataError(f"data.statements must be true/false statements (statement,label CSV), but {source.origin} holds {source.kind}")
        statements = list(source.records)
        by_pair = has_pairs(statements) if c.by_pair == "auto" else c.by_pair
        if c.limit is not None and by_pair:  # whole pairs: the first limit/2 facts, both twins of each
            keep = list(dict.fromkeys(s.pair for s in statements))[: c.limit // 2]
            wanted = set(keep)
            statements = [s for s in statements if s.pair in wanted]
        elif c.limit is not None:
            statements = statements[: c.limit]
        if by_pair:
            statements_to_twins(statements, source.origin)  # every pair one true and one false twin, or a one-line error
            splits = split_by_pair(statements, {"test": c.test_fraction, "val": c.val_fraction}, c.split_seed)
        else:
            splits = _split_statements(statements, c.val_fraction, c.test_fraction, c.split_seed)
        for name, part in splits.items():
            if len(part) < 4:
                raise DataError(f"the {name} split has only {len(part)} statements; use more data or other fractions")
            _write_statements(folder / f"{name}.csv", part)
        return {
            "origin": source.origin,
            "hash": sha256_json([(s.text, s.label, s.pair) for s in statements]),
            "files": {name: f"stages/data/{name}.csv" for name in splits},
            "splits": {name: len(part) for name, part in splits.items()},
            "twins": bool(by_pair),
            "pairs": {name: len(part) // 2 for name, part in splits.items()} if by_pair else None,
        }

    def _vector_stage(self, folder: Path) -> dict[str, Any]:
        from reptune.data import load_contrast_pairs
        from reptune.directions import extract_vector
        from reptune.reporting import write_scan
        from reptune.vectors import load_vector

        c = self.config.vector
        handle = self.base()
        target = folder / VECTOR_FILE
        rel = f"stages/{folder.name}/{VECTOR_FILE}"
        if c.file is not None:
            vector = load_vector(c.file, handle)
            vector.save(target)
            if c.layer == "auto":
                best = (vector.meta.extra or {}).get("best_layers") or [sorted(vector.directions)[len(vector.directions) // 2]]
                layer = int(best[0])
            else:
                layer = c.layer
            if layer not in vector.directions:
                raise ReptuneError(f"vector {c.file} has no layer {layer} (it has {sorted(vector.directions)})")
            return {"file": rel, "layer": layer, "num_layers": handle.num_layers, "method": vector.meta.method, "positions": vector.meta.positions, "scan": [], "scan_png": None, "source": c.file}
        train_csv = self.split_path("train")
        pairs, _origin = load_contrast_pairs(str(train_csv), handle.tokenizer, variant=c.variant, limit=c.pairs_limit, seed=self.config.data.split_seed)
        vector, scan = extract_vector(
            handle, pairs, c.read_layers, method=c.method, positions=c.positions, normalize=c.normalize,
            batch_size=c.batch_size, dataset="train split of " + str(self.config.data.statements), progress=self.progress,
        )
        assert scan is not None
        layer = scan.best_layers(1)[0] if c.layer == "auto" else int(c.layer)
        if layer not in vector.directions:
            raise ReptuneError(f"vector.layer {layer} was not read (vector.read_layers={c.read_layers!r})")
        vector.save(target)
        paths = write_scan(scan, target)
        scan_json = scan.to_json()
        return {
            "file": rel, "layer": layer, "num_layers": handle.num_layers, "method": c.method, "positions": c.positions, "pairs": len(pairs),
            "scan": scan_json.get("layers") or scan_json.get("scores") or [], "rule": scan_json.get("rule"),
            "scan_png": f"stages/{folder.name}/{paths['png'].name}",
        }

    def base_reference(self) -> str:
        """How the ``kl`` task loads the base model (the embedded model's converted directory)."""
        if self.config.model is None:
            from reptune.models import convert_gguf, embedded_gguf_path

            return str(convert_gguf(embedded_gguf_path()))
        return self.config.model

    def vector(self, handle: ModelHandle, which: str = "training") -> Any:
        """The training vector, or a counter-steering vector by name (``other``, ``random1``, ...)."""
        from reptune.vectors import load_vector

        if which == "training":
            return load_vector(self.vector_path, handle, allow_model_mismatch=True)
        entry = (self.counter_vectors or {}).get("vectors", {}).get(which)
        if entry is None:
            raise ReptuneError(f"no counter-steering vector {which!r} in this run")
        return load_vector(self.run_dir / self.counter_vectors["dir"] / entry["file"], handle, allow_model_mismatch=True)

    def _counter_vectors_stage(self) -> dict[str, Any] | None:
        """The other-data vector and the norm-matched random directions (``pipeline.counter``), at the steering layer."""
        c = self.config.counter
        if not any(v.counter != "none" for v in self.config.variants) or (not c.other and not c.random):
            return None
        inputs = {"model": self.model_key, "vector": self.store.keys["vector"], "data": self.store.keys["data"], "layer": self.layer,
                  "counter": c.model_dump(), "extract": self.config.vector.model_dump()}

        def work(folder: Path) -> dict[str, Any]:
            from reptune.pipeline.counter import build_counter_vectors

            handle = self.base()
            pairs, note = self._other_pairs(handle) if c.other else (None, None)
            v = self.config.vector
            out = build_counter_vectors(handle, self.vector(handle), self.layer, folder, other_pairs=pairs, other_note=note, random_count=c.random,
                                        random_seed=c.random_seed, method=v.method, positions=v.positions, normalize=v.normalize,
                                        batch_size=v.batch_size, progress=self.progress)
            return {"dir": f"stages/{folder.name}", **out}

        return self._stage("counter-vectors", inputs, work, _COST["vector"] / 2)

    def _other_pairs(self, handle: ModelHandle) -> tuple[list[Any], str]:
        """Contrast pairs for the other counter-steering vector (``counter.other_data``)."""
        from reptune.data import load_contrast_pairs
        from reptune.data.pairs import load_statements_csv
        from reptune.pipeline.counter import persona_pairs, used_statements

        c, v = self.config.counter, self.config.vector
        if c.other_data != "persona":
            pairs, origin = load_contrast_pairs(c.other_data, handle.tokenizer, limit=c.pairs_limit, seed=self.config.data.split_seed)
            return pairs, origin
        train_csv = str(self.split_path("train"))
        main_pairs, _ = load_contrast_pairs(train_csv, handle.tokenizer, variant=v.variant, limit=v.pairs_limit, seed=self.config.data.split_seed)
        pairs, note = persona_pairs(load_statements_csv(train_csv), used_statements(main_pairs), handle.tokenizer, c.honest_persona,
                                    c.dishonest_persona, c.pairs_limit)
        return pairs, f"{note}, personas {c.honest_persona!r} / {c.dishonest_persona!r}"

    def _task(self, name: str, split: str = "test", tuned: bool = False, extra: dict[str, Any] | None = None) -> Any:
        from reptune.evaluation import get_task

        options = {**self.config.evaluation.options.get(name, {}), **(extra or {})}
        if name in SPLIT_TASKS and "data" not in (extra or {}):  # a study may name its own subset of a split
            options["data"] = str(self.split_path(split))
        if name in ("kl", "openended") and tuned and not options.get("reference"):
            # a tuned model is compared with the base weights, not with itself
            options["reference"] = self.base_reference()
        if name == "openended":
            judge = self.config.judge
            for key, value in (("judge_url", judge.url), ("judge_model", judge.model), ("judge_local", judge.local)):
                if value is not None:
                    options[key] = value
            options.update(judge.options)
        return get_task(name, **options)

    def _available_tasks(self) -> list[str]:
        """Tasks whose data can be found; the others are skipped (listed in the report)."""
        c = self.config.evaluation
        names = list(c.tasks)
        if self.headline not in names:
            names.insert(0, self.headline)
        if self.config.judge.configured and "openended" not in names:
            names.append("openended")
        elif not self.config.judge.configured:
            self.skipped.append({"what": "openended", "reason": "no judge configured (judge.url, judge.local or $REPTUNE_JUDGE_URL)"})
            names = [n for n in names if n != "openended"]
        available = []
        handle = self.base()
        for name in names:
            try:
                self._task(name).load_items(handle, 1)
            except (DataError, ReptuneError, ImportError) as exc:
                if not c.skip_missing_data or name in (self.headline, "facts-ab"):
                    raise StageError(f"stage 'check-data' failed: task {name}: {exc}") from exc
                self.skipped.append({"what": name, "reason": str(exc).splitlines()[0]})
                continue
            available.append(name)
        return available

    @property
    def headline(self) -> str:
        """The task the claims are judged on (``evaluation.headline``; auto: twins when the data has them)."""
        named = self.config.evaluation.headline
        if named != "auto":
            return named
        return "facts-twin" if self.data.get("twins") else "facts-ab"

    def sweep_layers(self, scan_layer: int) -> list[int]:
        """The layers the sweep tries: the scan's layer plus a spread over the model's middle."""
        c = self.config.sweep
        if c.layers == "vector":
            return [scan_layer]
        if c.layers != "auto":
            bad = [layer for layer in c.layers if not -self.num_layers <= layer < self.num_layers]
            if bad:
                raise ReptuneError(f"sweep.layers {bad} out of range for a {self.num_layers}-layer model")
            return sorted({layer % self.num_layers for layer in c.layers})
        n = self.num_layers
        spread = {round(n * share) for share in (0.3, 0.45, 0.6)}
        return sorted({min(n - 1, max(0, layer)) for layer in spread | {scan_layer}})

    def _sweep(self, layers: list[int]) -> dict[str, Any]:
        """The sweep: one stage per layer (``sweep:L<layer>``, every multiplier) and one unsteered
        (``sweep:x0``), walked from both ends when a stage worker runs, then ``sweep``, which picks
        the layer and multipliers from their rows."""
        c = self.config.sweep
        inputs = {"vector": self.store.keys["vector"], "data": self.store.keys["data"], "sweep": c.model_dump(), "headline": self.headline}
        task_name = self.headline if c.task == "auto" else c.task
        units: list[int | None] = [None, *layers]
        cells: dict[int | None, list[dict[str, Any]]] = {}
        multipliers = [m for m in c.multipliers if m != 0]

        # steering at layer L leaves the input of block L as it was: the cells share the blocks below the lowest layer
        replay = self._replay_store(min(layers)) if layers else None

        def unit(layer: int | None) -> None:
            name = "sweep:x0" if layer is None else f"sweep:L{layer}"
            cells[layer] = self._stage(name, {**inputs, "layer": layer}, lambda folder: self._sweep_unit(folder, task_name, layer, multipliers, replay),
                                       _COST["sweep_point"] * (1 if layer is None else len(multipliers)))["rows"]

        run_deferring(self.store, self.walk(units), unit, defer=self.is_worker)
        rows = [row for layer in units for row in cells[layer]]

        def pick(folder: Path) -> dict[str, Any]:
            selected, rule = select_steering(rows, max_nll_rise=c.max_nll_rise, same_threshold=c.degenerate_threshold)
            return {"task": task_name, "split": "val", "layers": layers, "layer": selected["layer"], "metric": rows[0]["metric"],
                    "rows": rows, "rule": rule, "selected": selected}

        unit_keys = [self.store.keys["sweep:x0" if layer is None else f"sweep:L{layer}"] for layer in units]
        return self._stage("sweep", {**inputs, "layers": layers, "units": unit_keys}, pick, 0.0)

    def _sweep_unit(self, folder: Path, task_name: str, layer: int | None, multipliers: list[float], replay: BlockInputStore | None) -> dict[str, Any]:
        """The sweep's cells at ``layer`` (``None``: the unsteered cell): ``{"rows": [...]}``; twin
        scoring replays the blocks below the sweep's lowest layer from ``replay``."""
        handle = self.base()
        vector = self.vector(handle)
        steps = [0.0] if layer is None else multipliers
        kept, handle.block_inputs = handle.block_inputs, replay
        try:
            return {"rows": [self._sweep_cell(handle, vector, task_name, layer, m, folder) for m in steps]}
        finally:
            handle.block_inputs = kept

    def _sweep_cell(self, handle: ModelHandle, vector: Any, task_name: str, layer: int | None, multiplier: float, folder: Path) -> dict[str, Any]:
        """One (layer, multiplier) cell of the sweep on the validation split (``layer=None``: unsteered)."""
        from reptune.evaluation import evaluate
        from reptune.evaluation.tasks.robustness import same_letter_rate

        c = self.config.sweep
        task = self._task(task_name, split="val")
        name = "x0" if layer is None else f"L{layer}-x{multiplier:g}"
        result = evaluate(
            handle, [task], vector=vector if layer is not None else None, multiplier=multiplier, layers=[layer] if layer is not None else None,
            limit=c.limit, batch_size=self.config.evaluation.batch_size, seed=self.config.seeds[0],
            output=folder / f"{name}.json", progress=self.progress, allow_model_mismatch=True,
        )[task.full_name]
        primary = result.metrics[result.primary]
        same = same_letter_rate(result.records)
        metric = lambda key: result.metrics.get(key, {}).get("value")
        return {
            "layer": layer, "multiplier": float(multiplier), "value": primary["value"], "ci_low": primary.get("ci_low"), "ci_high": primary.get("ci_high"),
            "n": primary.get("n"), "same_answer_rate": same, "same_letter_rate": same, "mean_nll": metric("mean_nll"),
            "lie_rate": metric("lie_rate"), "mean_margin": metric("mean_margin"), "metric": result.primary,
        }

    def _conditions(self, m_plus: float, m_minus: float) -> list[dict[str, Any]]:
        conditions: list[dict[str, Any]] = [
            {"id": "untuned", "label": "untuned", "kind": "untuned", "variant": None, "steering": None},
            {"id": "steer+", "label": f"steered +v (x{m_plus:g})", "kind": "steered", "variant": None, "steering": {"layer": self.layer, "multiplier": m_plus}},
            {"id": "steer-", "label": f"steered -v (x{m_minus:g})", "kind": "steered", "variant": None, "steering": {"layer": self.layer, "multiplier": m_minus}},
        ]
        for variant in self.config.variants:
            conditions.append({"id": variant.name, "label": f"{variant.name} (tuned)", "kind": "tuned", "variant": variant.name, "steering": None, "preset": variant.preset})
        for variant in self.config.variants:
            if variant.counter != "none":
                counter = (m_plus if variant.direction < 0 else m_minus) if variant.counter == "auto" else float(variant.counter)
                conditions += self._counter_conditions(variant, counter)
        return conditions

    def _counter_conditions(self, variant: Any, multiplier: float) -> list[dict[str, Any]]:
        """``{variant}@counter`` (the training vector, as the paper), ``@counter-other`` and ``@counter-randomK``."""
        c = self.config.counter
        training = {"id": f"{variant.name}@counter", "label": f"{variant.name} + counter-steer (x{multiplier:g})", "kind": "counter",
                    "variant": variant.name, "steering": {"layer": self.layer, "multiplier": multiplier}, "preset": variant.preset}
        out = [training | ({"first_seed": True} if c.training_seeds == "first" else {})]
        for name in (self.counter_vectors or {}).get("vectors", {}):
            what = "the other-data vector" if name == "other" else f"random direction {name.removeprefix('random')}"
            out.append({
                "id": f"{variant.name}@counter-{name}", "label": f"{variant.name} + counter-steer with {what} (x{multiplier:g})", "kind": "counter",
                "variant": variant.name, "steering": {"layer": self.layer, "multiplier": multiplier, "vector": name}, "preset": variant.preset,
                **({"first_seed": True} if name != "other" and c.random_seeds == "first" else {}),
            })
        return out

    @property
    def item_kind(self) -> str:
        """Training items: twins when the headline behaviour is twin preference, else A/B questions."""
        kind = self.config.train.items
        if kind == "auto":
            return "twin" if self.headline == "facts-twin" else "ab"
        return kind

    def tune_config(self, variant: Any, seed: int, steps: int | None = None) -> Any:
        """The :class:`~reptune.tuning.TuneConfig` :meth:`train_variant` trains ``variant`` with (for studies)."""
        return self._tune_config(variant, seed, steps)

    def _tune_config(self, variant: Any, seed: int, steps: int | None = None) -> Any:
        from reptune.tuning import TuneConfig

        t = self.config.train
        layers = variant.layers or t.layers
        if layers == "auto":
            layers = f"{max(0, self.layer - t.span + 1)}-{self.layer}"
        # auto = the last prompt token, for twins too (the token before the reply). On twins the
        # statement tokens ("generated") were tried: the honesty preset's representation term
        # there took the embedded model's twin preference to chance (0.49 vs 0.70 at the last
        # prompt token, 120 test twins, one seed, bf16 on an AVX512-BF16 CPU, 2026-12-02).
        rep_positions = t.rep_positions if t.rep_positions != "auto" else "last"
        overrides = {
            # the representation loss at every trained layer, each with its own direction (as the paper)
            "layers": layers, "rep_layers": layers, "rep_positions": rep_positions,
            # with paper settings the paper's learning rates stand unless a variant names its own
            "steps": steps or variant.steps or t.steps, "lr": variant.lr or (None if t.paper else t.lr), "batch_size": variant.batch_size or t.batch_size,
            "eval_every": t.eval_every, "patience": t.patience, "checkpoint_every": t.checkpoint_every, "limit": t.limit,
            "lora": variant.lora, "retain": variant.retain, "seed": seed, "autocast": self.autocast,
            "w_retain": 1.0 if variant.retain != "none" else None,  # explicit: TuneConfig no longer defaults it
            **variant.options,
        }
        return TuneConfig.from_preset(variant.preset, paper=t.paper, **overrides)

    def train_variant(self, variant: Any, seed: int, trained: dict[str, Any] | None = None, *, stage: str | None = None,
                      train_csv: Path | None = None, steps: int | None = None) -> dict[str, Any]:
        """Train ``variant`` with ``seed`` from the base weights (a cached stage); returns what the stage recorded.

        Args:
            trained: receives ``{"handle": model}`` when the stage ran (so evaluation need not reload it).
            stage: the stage name (default ``train:<variant>:s<seed>``, the main run's).
            train_csv: statements to train on (default: the run's train split); a study's subset,
                written inside its own stage folder. Its content is part of the stage key.
            steps: optimiser steps (default: the variant's, else ``train.steps``).
        """
        name = stage or f"train:{variant.name}:s{seed}"
        trained = {} if trained is None else trained
        config = self._tune_config(variant, seed, steps=steps)
        inputs = {"model": self.model_key, "data": self.store.keys["data"], "vector": self.store.keys["vector"] if config.uses_vector else None,
                  "tune": config.to_json(), "items": self.item_kind, "weights": self.config.train.weights}
        if train_csv is not None:
            inputs["train_items"] = sha256_json(Path(train_csv).read_text(encoding="utf-8"))

        def work(folder: Path) -> dict[str, Any]:
            job = {
                "config": config.to_json(), "model": self.config.model, "revision": self.config.revision, "autocast": self.autocast,
                "load_options": self.load_options, "items": str(train_csv or self.split_path("train")), "kind": self.item_kind,
                "vector": str(self.vector_path) if config.uses_vector else None, "folder": str(folder), "progress": self.progress,
                "weights": self.config.train.weights,
            }
            if self.mailbox is not None:  # a multi-process launch: every process trains its share (reptune.pipeline.workers)
                self.mailbox.post({"kind": "train", "job": job})
            handle, result = train_job(job)
            trained["handle"] = handle
            if not self.config.train.keep_checkpoints:  # ~4 bytes x 3 per trained parameter: gone once the stage succeeded
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            curves = json.loads((folder / "loss_curves.json").read_text(encoding="utf-8"))
            return {
                "dir": f"stages/{folder.name}", "preset": variant.preset, "steps": result.metrics["steps_run"],
                "best_step": result.metrics["best_step"], "elapsed_s": round(result.metrics["seconds"], 1),
                "stopped": result.metrics["stopped"], "loss_curves": _curves(curves), "metrics": result.metrics,
                "layers": config.layers, "lr": config.lr, "lora": config.lora, "retain": config.retain,
                "plan": json.loads((folder / "tune_config.json").read_text(encoding="utf-8")).get("plan"),
            }

        steps = config.steps
        return self._stage(name, inputs, work, steps * _COST["train_step"])

    def split_path(self, split: str) -> Path:
        """The run's ``train`` / ``val`` / ``test`` statements (CSV)."""
        return self.run_dir / "stages" / "data" / f"{split}.csv"

    def tuned_loader(self, training: dict[str, Any], trained: dict[str, Any] | None = None) -> Callable[[], ModelHandle]:
        """Loads (once) the model a training stage wrote; ``trained`` may already hold it."""
        held = {} if trained is None else trained

        def load() -> ModelHandle:
            if "handle" not in held:
                held["handle"] = load_model(str(self.run_dir / training["dir"]), autocast=self.autocast, **self.load_options)
            handle = held["handle"]
            store = self.block_store  # only where every block below its start is the base model's
            handle.block_inputs = store if store is not None and min(parse_layers(training["layers"], self.num_layers)) >= store.start else None
            return handle

        return load

    def evaluate_condition(self, cond: dict[str, Any], trained: tuple[int, str] | None, tasks: list[str], loader: Callable[[], ModelHandle]) -> dict[str, Any]:
        """Evaluate one condition (a cached stage): ``{"results": file relative to the run, "representation": ...}``.

        Args:
            cond: ``id``, ``kind``, ``steering`` (``None`` or ``{layer, multiplier, vector?}``); a study's
                condition may add ``stage`` (its stage name), ``tasks`` (instead of ``tasks``), ``limit``
                (items per task), ``split`` (default ``test``), ``task_options`` (added to each task's),
                ``run_paths`` (the ``task_options`` keys whose values are paths relative to the run folder,
                so a moved run keeps its stage keys) and
                ``representation: False`` (skip the cosine / projection evidence; ``"representation"`` is then ``None``).
            trained: ``(seed, training stage key)`` of a tuned model, ``None`` for the base model.
        """
        return self._eval_condition(cond, trained, tasks, loader)

    def _eval_condition(self, cond: dict[str, Any], trained: tuple[int, str] | None, tasks: list[str], loader: Callable[[], ModelHandle]) -> dict[str, Any]:
        c = self.config.evaluation
        counter_tasks = [self.headline if t == "auto" else t for t in c.counter_tasks]
        task_names = list(cond["tasks"]) if "tasks" in cond else [
            t for t in tasks if (cond["kind"] != "counter" or t in counter_tasks) and (cond["kind"] == "untuned" or t not in c.base_only_tasks)]
        seed = trained[0] if trained else self.config.seeds[0]
        name = cond.get("stage") or f"eval:{cond['id']}" + (f":s{seed}" if trained else "")
        inputs = {
            "condition": cond, "model": trained[1] if trained else self.model_key, "vector": self.store.keys["vector"], "data": self.store.keys["data"],
            "tasks": task_names, "limit": c.limit, "limits": c.limits, "counter_limit": c.counter_limit if cond["kind"] == "counter" else None, "options": c.options, "batch_size": c.batch_size, "seed": seed,
            "judge": self.config.judge.model_dump() if "openended" in task_names else None, "representation_items": c.representation_items,
        }

        def work(folder: Path) -> dict[str, Any]:
            from reptune.evaluation import evaluate, load_eval_results
            from reptune.evaluation.runner import EvalResults

            handle = loader()
            steering = cond["steering"]
            vector = self.vector(handle, (steering or {}).get("vector", "training"))
            per_task = {}
            counted = dict(handle.block_inputs.counts) if handle.block_inputs is not None else None
            for task_name in task_names:
                out = folder / f"{safe_filename(task_name)}.json"
                if out.is_file():
                    per_task.update(load_eval_results(out).tasks)
                    continue
                task = self._task(task_name, split=cond.get("split", "test"), tuned=trained is not None, extra=self._condition_options(cond))
                limit = cond["limit"] if "limit" in cond else (c.counter_limit if cond["kind"] == "counter" and c.counter_limit else c.limits.get(task_name, c.limit))
                result = evaluate(
                    handle, [task], vector=vector if steering else None, multiplier=steering["multiplier"] if steering else 1.0,
                    layers=[steering["layer"]] if steering else None, limit=limit, batch_size=c.batch_size,
                    seed=seed, output=out, progress=self.progress, allow_model_mismatch=True, vector_label=str(self.vector_path) if steering else None,
                )
                per_task.update(result.tasks)
            merged = EvalResults(tasks=per_task, model={"condition": cond["id"]}, steering=steering, seed=seed, created=_now())
            merged.save(folder / "results.json")
            rep = None
            if cond.get("representation", True):
                rep = self._representation(handle, self.vector(handle) if steering and steering.get("vector") else vector, vector, steering)
            replay = {k: v - counted[k] for k, v in handle.block_inputs.counts.items()} if counted is not None and handle.block_inputs is not None else None
            return {"results": f"stages/{folder.name}/results.json", "representation": rep, "block_replay": replay}

        cost = len(task_names) * _COST["eval_task"] * (0.5 if cond["kind"] == "counter" and c.counter_limit else 1.0)  # counter_limit: about half the items
        return self._stage(name, inputs, work, cost)

    def _condition_options(self, cond: dict[str, Any]) -> dict[str, Any]:
        """A condition's ``task_options``, those named in ``run_paths`` resolved against the run folder."""
        relative = set(cond.get("run_paths") or ())
        return {key: str(self.run_dir / value) if key in relative else value for key, value in (cond.get("task_options") or {}).items()}

    def _representation(self, handle: ModelHandle, vector: Any, steering_vector: Any, steering: dict[str, Any] | None) -> dict[str, Any]:
        """Mean cosine / projection of the last-token residual at the vector layer onto ``v`` (the training
        vector), with ``steering`` applied by ``steering_vector`` (the training vector or a counter-steering one)."""
        from reptune.activations import read_activations
        from reptune.evaluation import get_task
        from reptune.steering import steer

        n = self.config.evaluation.representation_items
        task = get_task("facts-ab", data=str(self.split_path("test")))
        items = task.load_items(handle, n)[0][:n]
        prompts = [item["prompt"] for item in items]
        direction = vector.directions[self.layer].float()
        unit = direction / direction.norm()
        manager = steer(handle, steering_vector, [self.layer], steering["multiplier"], allow_model_mismatch=True) if steering else contextlib.nullcontext()
        batch_size = self.config.evaluation.batch_size
        # the blocks below a run's trained range see the same prompts in every condition: replayed
        with manager, frozen_blocks(handle, {"representation": prompts, "layer": self.layer, "batch_size": batch_size}):
            acts = read_activations(handle, prompts, [self.layer], "last", batch_size=batch_size, progress=False)[self.layer].float()
        cos = torch.nn.functional.cosine_similarity(acts, unit.expand_as(acts), dim=-1)
        return {"layer": self.layer, "mean_cosine": float(cos.mean()), "mean_projection": float((acts @ unit).mean()), "n": len(prompts)}

    def _extras(self, cond_id: str, trained: tuple[int, str] | None, loader: Callable[[], ModelHandle], robustness: dict[str, Any], projection: dict[str, Any]) -> None:
        c = self.config
        model_key = trained[1] if trained else self.model_key
        if c.robustness.enabled and cond_id in c.robustness.conditions:
            if c.robustness.layers is None:  # the steering layer and its neighbours 2 apart
                layers = sorted({max(0, self.layer - 2), self.layer, min(self.num_layers - 1, self.layer + 2)})
            else:  # [] = the steering layer only
                layers = list(c.robustness.layers) or [self.layer]
            inputs = {"condition": cond_id, "model": model_key, "vector": self.store.keys["vector"], "data": self.store.keys["data"], "robustness": c.robustness.model_dump(), "layers": layers}

            def work(folder: Path) -> dict[str, Any]:
                from reptune.evaluation.tasks.robustness import run_robustness

                handle = loader()
                result = run_robustness(handle, self.vector(handle), self._task(self.headline if c.robustness.task == "auto" else c.robustness.task), layers, c.robustness.multipliers,
                                        limit=c.robustness.limit, batch_size=c.evaluation.batch_size, seed=c.seeds[0], progress=self.progress)
                return result.to_json()

            try:
                robustness[cond_id] = self._stage(f"robustness:{cond_id}", inputs, work, len(layers) * len(c.robustness.multipliers) * _COST["robust_cell"])
            except StageError as exc:
                if not isinstance(exc.__cause__, ImportError):
                    raise
                self.skipped.append({"what": f"robustness:{cond_id}", "reason": str(exc.__cause__)})
        if c.projection.enabled and cond_id in c.projection.conditions:
            if c.projection.layers:
                layers = c.projection.layers
            else:  # the trained layers (of the first variant), else the vector layer
                layers = self._tune_config(c.variants[0], c.seeds[0]).layers if c.variants else str(self.layer)
            inputs = {"condition": cond_id, "model": model_key, "vector": self.store.keys["vector"], "projection": c.projection.model_dump(), "layers": layers}

            def work_projection(folder: Path) -> dict[str, Any]:
                from reptune.evaluation.tasks.projection import token_projections

                handle = loader()
                items = token_projections(handle, self.vector(handle), c.projection.prompts, layers)
                return {"items": items}

            try:
                projection[cond_id] = self._stage(f"projection:{cond_id}", inputs, work_projection, _COST["projection"])["items"]
            except StageError as exc:
                if not isinstance(exc.__cause__, ImportError):
                    raise
                self.skipped.append({"what": f"projection:{cond_id}", "reason": str(exc.__cause__)})


def select_multipliers(rows: list[dict[str, Any]], threshold: float) -> tuple[dict[str, float], str]:
    """The sweep's selection rule (also written into the report).

    ``m+``: among non-degenerate positive multipliers, the highest validation accuracy (ties:
    the smallest); ``m-``: among non-degenerate negative multipliers, the highest lie rate
    (ties: the smallest magnitude). With no non-degenerate cell on a side, the smallest
    magnitude on that side is taken and the report says so.
    """
    rule = (
        f"m+ = the positive multiplier with the highest validation accuracy and m- = the negative multiplier with the highest "
        f"validation lie rate, among cells where at most {threshold:.0%} of answers are the same letter (ties: smaller |m|)."
    )
    chosen: dict[str, float] = {}
    for side, sign in (("positive", 1), ("negative", -1)):
        cells = [r for r in rows if r["multiplier"] * sign > 0]
        ok = [r for r in cells if not r["degenerate"]]
        if ok:
            key = (lambda r: (r["value"], -abs(r["multiplier"]))) if sign > 0 else (lambda r: ((r["lie_rate"] if r["lie_rate"] is not None else -r["value"]), -abs(r["multiplier"])))
            chosen[side] = max(ok, key=key)["multiplier"]
        else:
            chosen[side] = min(cells, key=lambda r: abs(r["multiplier"]))["multiplier"]
            rule += f" Every {side} cell was degenerate, so the smallest {side} multiplier was used."
    return chosen, rule


def plan_experiment(config: ExperimentConfig, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> dict[str, Any]:
    """A dry run: per variant, which tensors each loss term updates, at which layers and positions.

    Loads the model (no training, no evaluation, nothing written) and resolves every variant's
    tuning config as the run would, at ``vector.layer`` (``auto``: the middle layer, since the
    scan and the sweep that would choose it are not run). The vector is a stand-in with a
    direction at every layer: the plan depends on where the vector has directions, not on them.
    """
    from reptune.tuning.items import load_tune_items
    from reptune.tuning.trainer import tuning_plan
    from reptune.vectors import SteeringVector, VectorMeta

    exp = Experiment(config, Path("."), progress=False, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    handle = exp.base()
    exp.num_layers = handle.num_layers
    exp.layer = config.vector.layer if isinstance(config.vector.layer, int) else handle.num_layers // 2
    exp.data = {"twins": has_pairs(list(_statement_records(config.data.statements)))}
    items, _ = load_tune_items(config.data.statements, handle.tokenizer, kind=exp.item_kind, limit=16)
    meta = VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers, method="plan stand-in")
    vector = SteeringVector({layer: torch.ones(handle.hidden_size) for layer in range(handle.num_layers)}, meta)
    plans: dict[str, Any] = {"layer": exp.layer, "items": exp.item_kind, "variants": {}}
    if not isinstance(config.vector.layer, int):
        plans["layer_note"] = (f"vector.layer is {config.vector.layer}: the run picks it with the layer scan and the sweep, which a dry run "
                               f"does not run; the middle layer {exp.layer} stands in")
    for variant in config.variants:
        tune_config = exp._tune_config(variant, config.seeds[0])
        plans["variants"][variant.name] = tuning_plan(handle, tune_config, items, vector if tune_config.uses_vector else None, allow_model_mismatch=True)
    return plans


def _statement_records(spec: str) -> list[Any]:
    from reptune.data.sources import read_source

    source = read_source(spec)
    return list(source.records) if source.kind == "statements" else []


def _curves(curves: dict[str, Any]) -> dict[str, list[float]]:
    train, val = curves.get("train", []), curves.get("val", [])
    out: dict[str, list[float]] = {"step": [row["step"] for row in train]}
    keys = [k for k in (train[0] if train else {}) if k != "step"]
    for key in keys:
        out["total" if key == "loss" else key] = [row[key] for row in train]
    out["val_step"] = [row["step"] for row in val]
    out["val_loss"] = [row.get("loss") for row in val]
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_experiment(
    config: ExperimentConfig | str | os.PathLike[str], run_dir: str | Path, *, progress: bool = True, command: str | None = None, trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> ExperimentRun:
    """Run (or resume) an experiment into ``run_dir``; returns results and report paths.

    Re-running with the same config reuses every finished stage; a changed section re-runs the
    stages that depend on it. Errors are :class:`~reptune.errors.ReptuneError` naming the stage.
    ``trust_remote_code`` lets transformers run Python shipped with the model (a config file
    cannot turn it on); ``allow_pickle`` also loads pickled ``.bin`` weights.

    Under ``accelerate launch``/``torchrun`` with several processes every process calls it: the
    main one runs the experiment and returns its results, the others train their share of each
    training stage and return an empty :class:`ExperimentRun` (see :mod:`reptune.pipeline.workers`).
    ``config`` may also be an experiment file's path (``builtin_config("demo")``), read by :func:`load_config`.
    """
    if isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    elif not isinstance(config, ExperimentConfig):
        raise ReptuneError(f"run_experiment needs an ExperimentConfig or an experiment file's path, got {type(config).__name__}")
    experiment = Experiment(config, run_dir, progress=progress, command=command, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    ranks = current_ranks()
    if not ranks.distributed:
        return experiment.run()
    mailbox = Mailbox(run_dir, ranks.broadcast_int(secrets.randbits(63) if ranks.is_main else 0))
    if not ranks.is_main:
        serve(mailbox, ranks)
        return ExperimentRun(Path(run_dir), {})
    experiment.mailbox = mailbox
    try:
        run = experiment.run()
    except Exception:
        dismiss(mailbox, ranks)  # a failed stage: the other processes leave too (Ctrl-C reached them all already)
        raise
    dismiss(mailbox, ranks)
    return run


def worker_main(argv: list[str]) -> int:
    """Entry point of a stage worker process (:func:`reptune.pipeline.stage_worker.start_worker` runs it
    with its spec file): the run's config from ``config.yaml``, the main process's session and precision."""
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    torch.set_num_threads(int(spec["threads"]))
    run_dir = Path(spec["run_dir"])
    experiment = Experiment(load_config(run_dir / "config.yaml"), run_dir, progress=False, session=spec["session"],
                            precision=tuple(spec["precision"]), **spec["load_options"])
    experiment.run_worker()
    print("stage worker: done; ran", ", ".join(experiment.store.computed) or "nothing", flush=True)
    return 0


def clean_run(run_dir: str | Path) -> None:
    """Delete what a run wrote in ``run_dir`` (``reptune run --fresh``); other files stay.

    Raises:
        ReptuneError: ``run_dir`` is a file, a symbolic link, or a non-empty folder without a
            reptune run marker (nothing is deleted then).
    """
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise ReptuneError(f"refusing to delete {run_dir}: it is a symbolic link")
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ReptuneError(f"refusing to delete {run_dir}: it is a file, not a run directory")
    if any(run_dir.iterdir()) and not is_reptune_output(run_dir, "experiment"):
        raise ReptuneError(f"refusing to delete {run_dir}: it holds no reptune run (no {RUN_MARKER} marker); remove it yourself or choose another -o")
    for name in RUN_ENTRIES:
        if name == RUN_MARKER:
            continue
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    remove_stale_temps(run_dir)
    if any(run_dir.iterdir()):  # files of the user's stay beside it: the folder stays marked, so the fresh run may write there
        write_run_marker(run_dir, "experiment")
