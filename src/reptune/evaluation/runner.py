"""Running tasks on a (possibly steered) model, results files, resuming, and paired comparison.

Results JSON (written atomically) holds the model, the steering (vector file and hash,
multiplier, layers), the seed, and for every task its metrics *and per-item records*, so any
comparison can be recomputed from two files.

Resuming: while ``evaluate(..., output="res.json")`` runs, every scored chunk of items is
appended to ``res.json.partial/<task>.jsonl`` (the first line is a fingerprint of model,
steering, task options and data). Run the same command again after an interruption and the
items already there are reused; the cache is removed once ``res.json`` is written. A cache
whose fingerprint does not match is ignored and replaced.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reptune._io import json_safe, safe_filename, sha256_json, write_json_atomic
from reptune.errors import ReptuneError
from reptune.evaluation.registry import RunContext, Task, TaskResult, get_task
from reptune.evaluation.statistics import paired_bootstrap_diff, paired_mcnemar
from reptune.models import ModelHandle
from reptune.precision import machine_info

FORMAT = "reptune-eval/1"


@dataclass
class EvalResults:
    """Results of :func:`evaluate`: one :class:`TaskResult` per task, plus the run's settings."""

    tasks: dict[str, TaskResult]
    model: dict[str, Any] = field(default_factory=dict)
    steering: dict[str, Any] | None = None
    seed: int = 0
    limit: int | None = None
    batch_size: int = 16
    created: str = ""

    def __getitem__(self, task: str) -> TaskResult:
        return self.tasks[task]

    def to_json(self) -> dict[str, Any]:
        from reptune._version import __version__

        return {
            "format": FORMAT,
            "reptune_version": __version__,
            "created": self.created,
            "model": self.model,
            "steering": self.steering,
            "seed": self.seed,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "summary": {name: {"primary": r.primary, **{k: v["value"] for k, v in r.metrics.items() if "/" not in k}} for name, r in self.tasks.items()},
            "tasks": {name: result.to_json() for name, result in self.tasks.items()},
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        write_json_atomic(path, json_safe(self.to_json()))
        return Path(path)


def load_eval_results(path: str | os.PathLike[str]) -> EvalResults:
    """Read a results file written by :func:`evaluate` / ``reptune eval``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReptuneError(f"results file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReptuneError(f"cannot read results file {path}: {exc}") from None
    except RecursionError:
        raise ReptuneError(f"cannot read results file {path}: JSON nested too deeply") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tasks"), dict):
        raise ReptuneError(f"{path} is not a reptune eval results file (format {FORMAT})")
    return EvalResults(
        tasks={name: TaskResult.from_json(task) for name, task in data["tasks"].items()},
        model=data.get("model", {}), steering=data.get("steering"), seed=int(data.get("seed", 0)),
        limit=data.get("limit"), batch_size=int(data.get("batch_size", 16)), created=data.get("created", ""),
    )


def _task_list(tasks: str | Sequence[str | Task]) -> list[Task]:
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    built = [t if isinstance(t, Task) else get_task(t) for t in names if not (isinstance(t, str) and not t)]
    if not built:
        raise ReptuneError("no tasks given")
    seen = [t.full_name for t in built]
    if len(set(seen)) != len(seen):
        raise ReptuneError(f"a task is listed twice: {', '.join(seen)}")
    return built


def resume_cache(output: str | os.PathLike[str]) -> Path:
    """The resume cache of a results file: ``res.json`` -> ``res.json.partial/`` (one JSONL per task)."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def cached_items(output: str | os.PathLike[str]) -> int:
    """How many finished items the resume cache of ``output`` holds (a fingerprint line heads each
    task's file and does not count; a line cut by an interruption does not either)."""
    count = 0
    for path in resume_cache(output).glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            try:
                json.loads(line)
            except json.JSONDecodeError:
                break
            count += 1
    return count


def _cache_file(output: Path, task: Task) -> Path:
    return resume_cache(output) / f"{safe_filename(task.full_name)}.jsonl"


def _read_cache(path: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    done: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("fingerprint") != fingerprint:
        path.unlink()
        return {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the interruption
            break
        done[record["id"]] = record
    return done


def _append_cache(path: Path, fingerprint: str, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as handle:
        if new:
            handle.write(json.dumps({"fingerprint": fingerprint}) + "\n")
        handle.writelines(json.dumps(json_safe(record)) + "\n" for record in records)
        handle.flush()
        os.fsync(handle.fileno())


def _start_steering(
    handle: ModelHandle, vector: Any, layers: str | int | Sequence[int] | None, multiplier: float, *,
    allow_model_mismatch: bool, vector_label: str | None, needs_vector: list[str],
) -> tuple[Any, dict[str, Any] | None]:
    """The steering by ``vector`` (not attached yet) and what the results record of it; ``(None, None)`` without a vector."""
    if vector is None:
        return None, None
    from reptune.steering import steer

    steering = steer(handle, vector, layers, multiplier, allow_model_mismatch=allow_model_mismatch)
    info = {
        "vector": vector_label,
        "vector_hash": sha256_json({str(layer): steering.directions[layer].tolist() for layer in sorted(steering.directions)}),
        "method": getattr(getattr(vector, "meta", None), "method", None),
        "multiplier": float(multiplier),
        "layers": sorted(steering.directions),
    }
    if needs_vector:  # recorded, so the results say which tasks ran unsteered (and what they used)
        info["not_applied_to"] = needs_vector
        every_layer = vector.directions if hasattr(vector, "directions") else vector
        info["vector_hash_all_layers"] = sha256_json({str(layer): every_layer[layer].tolist() for layer in sorted(every_layer)})
    return steering, info


def _model_info(handle: ModelHandle) -> dict[str, Any]:
    """What the results record of the model (and of the machine it ran on)."""
    info = {key: value for key, value in handle.describe().items() if key in {"model_id", "revision", "source", "architecture", "dtype", "autocast", "precision"}}
    info["machine"] = machine_info()
    return info


def _contexts(vector: Any, multiplier: float, steering: Any, allow_model_mismatch: bool) -> tuple[RunContext, RunContext]:
    """``(steered, own)``: the context of the steered tasks and of those that use the vector themselves."""
    steered = RunContext(
        steering=steering, vector=vector, multiplier=float(multiplier),
        layers=sorted(steering.directions) if steering is not None else None, allow_model_mismatch=allow_model_mismatch,
    )
    own = RunContext(vector=vector, multiplier=steered.multiplier, layers=steered.layers, allow_model_mismatch=allow_model_mismatch)
    return steered, own


def _resume_cache(
    output: Path | None, task: Task, fingerprint: str, resume: bool
) -> tuple[dict[str, dict[str, Any]], Callable[[list[dict[str, Any]]], None] | None]:
    """The records an interrupted run left for ``task`` (when resuming) and the callback that appends new ones."""
    if output is None:
        return {}, None
    cache = _cache_file(output, task)
    done = _read_cache(cache, fingerprint) if resume else {}
    if not resume and cache.exists():
        cache.unlink()
    return done, lambda records: _append_cache(cache, fingerprint, records)


def _run_tasks(
    handle: ModelHandle, task_objs: list[Task], prepared: list[tuple[list[dict[str, Any]], str, str]], steering: Any,
    contexts: tuple[RunContext, RunContext], key: dict[str, Any], *, output: Path | None, resume: bool, **run_options: Any,
) -> dict[str, TaskResult]:
    """Run each task on its loaded items, steered unless it uses the vector itself, resuming from the caches.

    ``key``: what besides the task's own fingerprint must match for cached records to be reused.
    """
    steered, own = contexts
    results: dict[str, TaskResult] = {}
    active = False
    try:
        for task, loaded in zip(task_objs, prepared):
            wanted = steering is not None and not task.uses_vector  # steer every task but those that use the vector themselves
            if wanted != active:
                if wanted:
                    steering.attach()
                else:
                    steering.detach()
                active = wanted
            context = own if task.uses_vector else steered
            fingerprint = sha256_json({"task": task.fingerprint(handle, loaded[2]), **key})
            done, on_records = _resume_cache(output, task, fingerprint, resume)
            results[task.full_name] = task.run(handle, context=context, done=done, on_records=on_records, prepared=loaded, **run_options)
    finally:
        if steering is not None and active:
            steering.detach()
    return results


def evaluate(
    handle: ModelHandle,
    tasks: str | Sequence[str | Task],
    *,
    vector: Any = None,
    multiplier: float = 1.0,
    layers: str | int | Sequence[int] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    output: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = False,
    allow_model_mismatch: bool = False,
    vector_label: str | None = None,
) -> EvalResults:
    """Run tasks on ``handle``, steered by ``vector`` (``multiplier`` at ``layers``) when given.

    Tasks that use the vector themselves (``uses_vector``: ``robustness``, ``projection``) are
    not steered; they get the vector, multiplier and layers through their :class:`RunContext`
    (and fail before any scoring when no vector is given).

    Args:
        tasks: names (``"facts-ab,mmlu"`` or a list) or built :class:`Task` objects
            (``get_task("mmlu", subjects="anatomy")``).
        vector: a :class:`~reptune.vectors.SteeringVector`, or ``None`` for the plain model.
        layers: which of the vector's layers to steer at (default: all its layers).
        limit: at most this many items per task.
        output: results JSON path; also enables the resumable per-task cache beside it.
        resume: reuse items from an interrupted run with the same settings.
        vector_label: what to record as the vector's name (e.g. its file path).

    Returns:
        :class:`EvalResults` (also saved to ``output`` when given).
    """
    if limit is not None and limit < 1:
        raise ReptuneError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ReptuneError(f"--batch-size must be at least 1, got {batch_size}")
    task_objs = _task_list(tasks)
    needs_vector = [task.full_name for task in task_objs if task.uses_vector]
    if needs_vector and vector is None:
        raise ReptuneError(f"task {needs_vector[0]} needs a vector (--vector)")
    steering, steering_info = _start_steering(
        handle, vector, layers, multiplier, allow_model_mismatch=allow_model_mismatch, vector_label=vector_label, needs_vector=needs_vector
    )
    model_info = _model_info(handle)
    output_path = Path(output) if output is not None else None
    # load every task's data first: a missing data set fails before any model time is spent
    prepared = [task.load_items(handle, limit) for task in task_objs]
    results = _run_tasks(
        handle, task_objs, prepared, steering, _contexts(vector, multiplier, steering, allow_model_mismatch),
        {"steering": steering_info, "autocast": model_info.get("autocast")}, output=output_path, resume=resume,
        limit=limit, batch_size=batch_size, seed=seed, progress=progress,
    )
    evaluation = EvalResults(
        tasks=results, model=model_info, steering=steering_info, seed=seed, limit=limit, batch_size=batch_size,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if output_path is not None:
        evaluation.save(output_path)
        shutil.rmtree(resume_cache(output_path), ignore_errors=True)
    return evaluation


def compare_results(a: EvalResults | str | os.PathLike[str], b: EvalResults | str | os.PathLike[str], *, seed: int = 0) -> list[dict[str, Any]]:
    """Paired comparison, task by task, on the items both results share.

    For tasks with per-item correctness: McNemar's test (exact below 25 discordant items,
    else chi-square with continuity correction). For every task with a continuous per-item
    score: the mean difference ``b - a`` with a paired bootstrap CI.
    """
    first = a if isinstance(a, EvalResults) else load_eval_results(a)
    second = b if isinstance(b, EvalResults) else load_eval_results(b)
    common = [name for name in first.tasks if name in second.tasks]
    if not common:
        raise ReptuneError(f"the two results share no task ({', '.join(first.tasks)} vs {', '.join(second.tasks)})")
    rows = []
    for name in common:
        ra, rb = first.tasks[name], second.tasks[name]
        by_id_b = {r["id"]: r for r in rb.records}
        pairs = [(r, by_id_b[r["id"]]) for r in ra.records if r["id"] in by_id_b]
        row: dict[str, Any] = {"task": name, "n": len(pairs), "only_a": len(ra.records) - len(pairs), "only_b": len(rb.records) - len(pairs)}
        if ra.data_hash and rb.data_hash and ra.data_hash != rb.data_hash:
            row["warning"] = "different data"
        if not pairs:
            rows.append(row)
            continue
        binary = ra.binary_key
        if binary:
            xs = [bool(x[binary]) for x, _ in pairs]
            ys = [bool(y[binary]) for _, y in pairs]
            test = paired_mcnemar(xs, ys)
            row.update({"metric": binary, "a": sum(xs) / len(xs), "b": sum(ys) / len(ys), "mcnemar": test.to_json()})
        cont = ra.continuous_key
        if cont:
            diff, low, high = paired_bootstrap_diff([x[cont] for x, _ in pairs], [y[cont] for _, y in pairs], seed=seed)
            row["continuous"] = {"metric": cont, "mean_a": sum(x[cont] for x, _ in pairs) / len(pairs), "mean_b": sum(y[cont] for _, y in pairs) / len(pairs),
                                 "diff": diff, "ci_low": low, "ci_high": high}
        rows.append(row)
    return rows
