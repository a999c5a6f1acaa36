"""The task interface and registry (in the spirit of lm-evaluation-harness).

A task is a :class:`Task` subclass known by a name: the built-in ones through the lazy table
:data:`BUILTIN_TASKS` (``name -> "module:Class"``, the module imported on first use), others
through :func:`register_task`. ``get_task(name, **options)`` builds it; parametrised names such
as ``caa:sycophancy`` pass the part after the colon as ``param``. Every task loads its items
(plain dicts with a stable ``id``), scores them in batches into per-item records (plain JSON
dicts), and summarises the records into metrics (``{"value", "ci_low", "ci_high", "n", "ci"}``).
:meth:`Task.run` ties the three together and works in chunks, handing each chunk's records to a
callback so an interrupted evaluation can resume (see :mod:`reptune.evaluation.runner`).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from reptune import _work as work
from reptune._io import sha256_json
from reptune._progress import progress_bar
from reptune.errors import ReptuneError
from reptune.models import ModelHandle

# The built-in tasks: name -> "module:Class". A module is imported only when one of its tasks is
# asked for (as lm-evaluation-harness indexes its tasks), so importing the registry loads no task
# module and the task modules, which import the registry, are never imported back by it.
BUILTIN_TASKS: dict[str, str] = {
    "facts-ab": "reptune.evaluation.tasks.facts_ab:FactsAB",
    "facts-twin": "reptune.evaluation.tasks.facts:FactsTwin",
    "facts-word": "reptune.evaluation.tasks.facts:FactsWord",
    "tqa-ab": "reptune.evaluation.tasks.truthfulqa:TruthfulQAAB",
    "tqa-mc1": "reptune.evaluation.tasks.truthfulqa:TruthfulQAMC1",
    "tqa-mc2": "reptune.evaluation.tasks.truthfulqa:TruthfulQAMC2",
    "mmlu": "reptune.evaluation.tasks.mmlu:MMLU",
    "perplexity": "reptune.evaluation.tasks.perplexity:Perplexity",
    "kl": "reptune.evaluation.tasks.perplexity:KL",
    "caa": "reptune.evaluation.tasks.caa:CAA",
    "openended": "reptune.evaluation.tasks.openended:OpenEnded",
    "robustness": "reptune.evaluation.tasks.robustness:Robustness",
    "projection": "reptune.evaluation.tasks.projection:Projection",
    "lm-eval": "reptune.evaluation.tasks.lmeval:LMEvalTask",  # lm-eval itself is imported only when the task runs
    "gcg": "reptune.evaluation.tasks.gcg:GCGTask",  # nanogcg itself is imported only when the task runs
}
# the task classes: those registered with register_task, and the built-ins once loaded
TASKS: dict[str, type[Task]] = {}


@dataclass
class TaskResult:
    """What one task returns: summary metrics with CIs and the per-item records.

    ``binary_key``/``continuous_key`` name the record fields that paired comparisons use
    (McNemar on the binary one, a paired bootstrap on the continuous one).
    """

    task: str
    metrics: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]
    primary: str
    binary_key: str | None = None
    continuous_key: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    data_hash: str = ""
    seed: int = 0
    limit: int | None = None
    elapsed_s: float = 0.0
    resumed_items: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        """The primary metric's value."""
        return float(self.metrics[self.primary]["value"])

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "primary": self.primary,
            "metrics": self.metrics,
            "binary_key": self.binary_key,
            "continuous_key": self.continuous_key,
            "options": self.options,
            "data": self.data,
            "data_hash": self.data_hash,
            "seed": self.seed,
            "limit": self.limit,
            "n_items": len(self.records),
            "elapsed_s": self.elapsed_s,
            "resumed_items": self.resumed_items,
            **({"details": self.details} if self.details else {}),
            "records": self.records,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        try:
            return cls(
                task=data["task"], metrics=data["metrics"], records=data["records"], primary=data["primary"],
                binary_key=data.get("binary_key"), continuous_key=data.get("continuous_key"),
                options=data.get("options", {}), data=data.get("data", ""), data_hash=data.get("data_hash", ""),
                seed=int(data.get("seed", 0)), limit=data.get("limit"), elapsed_s=float(data.get("elapsed_s", 0.0)),
                resumed_items=int(data.get("resumed_items", 0)), details=data.get("details") or {},
            )
        except (KeyError, TypeError) as exc:
            raise ReptuneError(f"malformed task result: missing {exc}") from None


@dataclass
class RunContext:
    """What a task may need beyond the model.

    Attributes:
        steering: the active :class:`~reptune.steering.Steering` (``None`` when unsteered, and
            always ``None`` for tasks with ``uses_vector``: :func:`~reptune.evaluation.evaluate`
            does not steer those).
        vector: the vector given to ``evaluate`` (for ``uses_vector`` tasks such as
            ``robustness`` and ``projection``, which apply or read it themselves).
        multiplier, layers: the steering multiplier and the (parsed) layers given to ``evaluate``.
        allow_model_mismatch: whether the vector may come from another model id.
    """

    steering: Any = None
    vector: Any = None
    multiplier: float = 1.0
    layers: list[int] | None = None
    allow_model_mismatch: bool = False


class Task:
    """Base class of evaluation tasks.

    Subclasses set ``name``, ``description``, ``primary``, ``binary_key``/``continuous_key``,
    ``defaults`` (option name -> default; the type of the default is the option's type) and
    implement :meth:`load_items`, :meth:`score` and :meth:`summarize`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    primary: ClassVar[str] = "accuracy"
    binary_key: ClassVar[str | None] = "correct"
    continuous_key: ClassVar[str | None] = None
    parametrised: ClassVar[bool] = False  # True: the name needs ":<param>"
    param_label: ClassVar[str] = "behaviour"  # how available_tasks() shows the parameter
    uses_vector: ClassVar[bool] = False  # True: the task uses context.vector itself and is never steered by evaluate()
    defaults: ClassVar[dict[str, Any]] = {}
    # options added after the task shipped: left out of the cache fingerprint while at their default,
    # so an interrupted run's cached records stay valid across the upgrade (the prompts are the same)
    late_options: ClassVar[frozenset[str]] = frozenset()
    chunk_items: ClassVar[int] = 64  # items per checkpointed chunk (at least 4 batches)
    counts_items: ClassVar[bool] = True  # False: a wrapper whose inner task runs count the items scored

    def __init__(self, param: str | None = None, **options: Any) -> None:
        if self.parametrised and not param:
            raise ReptuneError(f"task {self.name!r} needs a parameter: {self.name}:<name>")
        if not self.parametrised and param:
            raise ReptuneError(f"task {self.name!r} takes no parameter (got {self.name}:{param})")
        self.param = param
        self.options = dict(self.defaults)
        for key, value in options.items():
            if key not in self.defaults:
                known = ", ".join(sorted(self.defaults)) or "none"
                raise ReptuneError(f"task {self.full_name!r} has no option {key!r} (options: {known})")
            self.options[key] = _coerce(value, self.defaults[key], f"{self.full_name}.{key}")

    @property
    def full_name(self) -> str:
        return f"{self.name}:{self.param}" if self.param else self.name

    # -- to implement -------------------------------------------------------------------
    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        """Return ``(items, data_origin, data_hash)``; items carry a unique string ``id``.

        ``limit`` may be used to read less data, but the first ``limit`` items must be the
        same as without it.
        """
        raise NotImplementedError

    def score(
        self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Callable[[int], None]
    ) -> list[dict[str, Any]]:
        """Score items into per-item records (same order, each with the item's ``id``)."""
        raise NotImplementedError

    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        """Metrics (with CIs) from the records."""
        raise NotImplementedError

    def details(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Task-specific data beyond metrics and records (saved as ``details``; default none)."""
        return {}

    def chunk_size(self, batch_size: int) -> int:
        """Items per checkpointed chunk."""
        return max(self.chunk_items, 4 * batch_size)

    # -- shared -------------------------------------------------------------------------
    def reuse(self, record: dict[str, Any]) -> bool:
        """Whether a record from an interrupted run's cache is reused (``False``: score the item again)."""
        return True

    def fingerprint(self, handle: ModelHandle, data_hash: str) -> str:
        """What must match for cached records to be reused (not the limit nor the batch size)."""
        options = {k: v for k, v in self.options.items() if not (k in self.late_options and v == self.defaults[k])}
        return sha256_json({"task": self.full_name, "options": options, "data": data_hash, "model": handle.model_id, "revision": handle.revision})

    def run(
        self,
        handle: ModelHandle,
        *,
        limit: int | None = None,
        batch_size: int = 16,
        seed: int = 0,
        progress: bool = False,
        context: RunContext | None = None,
        done: dict[str, dict[str, Any]] | None = None,
        on_records: Callable[[list[dict[str, Any]]], None] | None = None,
        prepared: tuple[list[dict[str, Any]], str, str] | None = None,
    ) -> TaskResult:
        """Load, score (in checkpointed chunks) and summarise.

        Args:
            limit: score only the first ``limit`` items (``None``: all).
            done: records already scored (by id), reused instead of scoring again.
            on_records: called with each newly scored chunk (for resumable caches).
            prepared: the result of :meth:`load_items`, when the caller already loaded it.
        """
        if limit is not None and limit < 1:
            raise ReptuneError(f"--limit must be at least 1, got {limit}")
        if batch_size < 1:
            raise ReptuneError(f"--batch-size must be at least 1, got {batch_size}")
        started = time.perf_counter()
        items, origin, data_hash = prepared if prepared is not None else self.load_items(handle, limit)
        if limit is not None:
            items = items[:limit]
        if not items:
            raise ReptuneError(f"task {self.full_name}: no items in {origin}")
        done = {key: record for key, record in (done or {}).items() if self.reuse(record)}
        pending = [item for item in items if item["id"] not in done]
        fresh: dict[str, dict[str, Any]] = {}
        chunk = self.chunk_size(batch_size)
        with progress_bar(self.full_name, total=len(items), enabled=progress) as advance:
            advance(len(items) - len(pending))
            for start in range(0, len(pending), chunk):
                part = pending[start : start + chunk]
                records = self.score(handle, part, batch_size=batch_size, context=context or RunContext(), advance=advance)
                if len(records) != len(part):
                    raise RuntimeError(f"task {self.full_name} returned {len(records)} records for {len(part)} items")
                for item, record in zip(part, records):
                    record["id"] = item["id"]
                    fresh[item["id"]] = record
                if self.counts_items:
                    work.count(work.ITEMS, len(part))
                if on_records is not None:
                    on_records(records)
        records = [done.get(item["id"]) or fresh[item["id"]] for item in items]
        return TaskResult(
            task=self.full_name,
            metrics=self.summarize(records, seed),
            records=records,
            primary=self.primary,
            binary_key=self.binary_key,
            continuous_key=self.continuous_key,
            options=dict(self.options),
            data=origin,
            data_hash=data_hash,
            seed=seed,
            limit=limit,
            elapsed_s=round(time.perf_counter() - started, 3),
            resumed_items=len(items) - len(pending),
            details=self.details(records),
        )


def _coerce(value: Any, default: Any, where: str) -> Any:
    if default is None or isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool)):
        return value
    text = str(value).strip()
    try:
        if isinstance(default, bool):
            if text.lower() in {"1", "true", "yes", "on"}:
                return True
            if text.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        return text
    except ValueError:
        raise ReptuneError(f"option {where}: expected {type(default).__name__}, got {value!r}") from None


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a :class:`Task` subclass available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    builtin = BUILTIN_TASKS.get(cls.name)
    if builtin is not None and builtin != f"{cls.__module__}:{cls.__qualname__}":
        raise ValueError(f"task name {cls.name!r} already registered by {builtin.rpartition(':')[2]}")
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task name {cls.name!r} already registered by {TASKS[cls.name].__name__}")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task] | None:
    """The class registered as ``name`` (no ``:param``), importing a built-in's module on first use; ``None`` if unknown."""
    cls = TASKS.get(name)
    if cls is None and name in BUILTIN_TASKS:
        module, _, attr = BUILTIN_TASKS[name].partition(":")
        cls = TASKS[name] = getattr(importlib.import_module(module), attr)
    return cls


def available_tasks() -> list[str]:
    """Registered task names (parametrised ones as ``name:<param>``); imports every built-in task module."""
    listed = []
    for name in dict.fromkeys([*BUILTIN_TASKS, *TASKS]):
        cls = task_class(name)
        if cls is not None:
            listed.append(f"{name}:<{cls.param_label}>" if cls.parametrised else name)
    return sorted(listed)


def get_task(name: str, **options: Any) -> Task:
    """Build the task called ``name`` (``caa:sycophancy`` style for parametrised tasks)."""
    base, _, param = name.strip().partition(":")
    cls = task_class(base)
    if cls is None:
        raise ReptuneError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    return cls(param or None, **options)
