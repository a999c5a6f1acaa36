"""``lm-eval:<task>``: any lm-evaluation-harness task, run on the handle's own model object.

The task wraps ``handle.model`` (and its tokenizer) in lm-eval's Hugging Face model class
(``lm_eval.models.huggingface.HFLM(pretrained=<model object>)``) and calls
``lm_eval.simple_evaluate`` with ``log_samples=True``. Because it is the same model object,
whatever is active on it applies: the steering hooks of ``reptune eval --vector`` (or of a
``with steer(...)`` block, or a robustness cell), and a tuned model is just another handle.
(``HFLM`` puts the model in ``eval()`` mode and calls ``tie_weights()``; the global random
generators that ``simple_evaluate`` seeds are restored afterwards.)

Works offline with local tasks: ``include_path=DIR`` points at a folder of task YAMLs (only that
folder is indexed when it defines the task, which is fast; otherwise lm-eval's built-in tasks
are indexed too, about 10 s), and a YAML can read a local file with ``dataset_path: json`` and
``dataset_kwargs: {data_files: {test: /path/data.jsonl}}``. Built-in tasks need their data set in
the Hugging Face cache (or a connection).

Options: ``include_path``, ``num_fewshot`` (-1: the task's own), ``batch_size`` (0: reptune's
``--batch-size``), ``chat`` (apply the chat template, lm-eval's ``apply_chat_template``),
``metric`` (the primary metric; default: the task's first), ``bootstrap_iters`` (for lm-eval's
bootstrapped standard errors of non-mean metrics).

Records (one per document; ``id`` = ``doc_id``, or ``<subtask>/<doc_id>`` for groups): every
per-sample metric lm-eval logs (``acc``, ``acc_norm``, ``exact_match``; ``name,filter`` for
filters other than ``none``), ``target``, ``correct`` (when the task has ``acc``), and for
multiple-choice tasks the choices' log-likelihoods (``logprobs``), the chosen index (``choice``)
and its letter (``answer``: A = first choice), for generation tasks the ``completion``.

Metrics are recomputed from the records with lm-eval's own aggregation functions (so a resumed
run gives the same numbers), with lm-eval's standard errors; **the CI is value ± 1.96 x stderr**
(``"ci": "normal-stderr"``; none when lm-eval has no stderr for the metric). A group's metrics
are pooled over all its documents, with per-subtask metrics as ``<metric>/<subtask>``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from reptune._io import sha256_json
from reptune.errors import DataError, ReptuneError
from reptune.evaluation.registry import RunContext, Task
from reptune.models import ModelHandle

INSTALL_HINT = "lm-eval is not installed: pip install 'reptune[lmeval]'"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
Z95 = 1.959963984540054


def require_lm_eval() -> None:
    """Raise the one-line install hint when lm-eval is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ReptuneError(INSTALL_HINT)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval logs every step at INFO/WARNING; keep only its errors while it runs."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def _keep_rng_state() -> Iterator[None]:
    """simple_evaluate seeds Python's, NumPy's and torch's global generators: restore them afterwards."""
    import random

    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _leaf_tasks(manager: Any, name: str) -> dict[str, Any]:
    """``{task_name: Task}`` of the leaf tasks of a task, group or tag."""
    if hasattr(manager, "load"):
        loaded = manager.load([name])
        if isinstance(loaded, dict) and "tasks" in loaded:
            return dict(loaded["tasks"])
    from lm_eval.tasks import get_task_dict  # older lm-eval: a nested {group: {name: Task}} dict

    leaves: dict[str, Any] = {}

    def walk(node: Any) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value)
            elif value is not None and not isinstance(value, tuple):
                leaves[str(getattr(value, "task_name", None) or key)] = value

    walk(get_task_dict([name], manager))
    return leaves


class LMEvalTask(Task):
    """``lm-eval:<task>``: an lm-evaluation-harness task on the handle's model (see module docstring)."""

    name = "lm-eval"
    description = "any lm-evaluation-harness task on the (steered or tuned) model object; offline with include_path=DIR of task YAMLs"
    parametrised = True
    param_label = "task"
    primary = "acc"
    binary_key = "correct"
    continuous_key = None
    defaults: ClassVar[dict[str, Any]] = {"include_path": "", "num_fewshot": -1, "batch_size": 0, "chat": False, "metric": "", "bootstrap_iters": 1000}

    def __init__(self, param: str | None = None, **options: Any) -> None:
        super().__init__(param, **options)
        require_lm_eval()
        if self.options["include_path"] and not Path(self.options["include_path"]).expanduser().is_dir():
            raise DataError(f"lm-eval include_path is not a folder: {self.options['include_path']}")

    def chunk_size(self, batch_size: int) -> int:
        return 1 << 30  # one lm-eval call per run: lm-eval batches (and sorts) the requests itself

    # ---------------------------------------------------------------- loading
    def _manager(self) -> Any:
        from lm_eval.tasks import TaskManager

        include = str(Path(self.options["include_path"]).expanduser()) if self.options["include_path"] else None
        if include:
            local = TaskManager(include_path=include, include_defaults=False)
            if self.param in local.all_tasks:
                return local
        manager = TaskManager(include_path=include) if include else TaskManager()
        if self.param not in manager.all_tasks:
            where = f" (in {include} or lm-eval's built-in tasks)" if include else " (use include_path=DIR for local task YAMLs)"
            raise ReptuneError(f"unknown lm-eval task {self.param!r}{where}")
        return manager

    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        with _quiet():
            manager = self._manager()
            try:
                leaves = _leaf_tasks(manager, str(self.param))
                docs = {name: list(task.eval_docs) for name, task in leaves.items()}
            except ReptuneError:
                raise
            except Exception as exc:  # noqa: BLE001  (datasets/hub errors: offline, missing file, bad YAML)
                raise DataError(f"lm-eval task {self.param}: cannot load its data ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not leaves:
            raise DataError(f"lm-eval task {self.param} has no subtasks")
        self._leaves = leaves
        self._task_manager = manager  # reused by simple_evaluate (its default indexes every built-in task, ~10 s)
        self._aggregations = {name: dict(task.aggregation()) for name, task in leaves.items()}
        self._output_types = {name: task.get_config("output_type") if hasattr(task, "get_config") else getattr(task, "OUTPUT_TYPE", None) for name, task in leaves.items()}
        first = next(iter(leaves))
        metric = self.options["metric"] or next(iter(self._aggregations[first]), "acc")
        if metric not in self._aggregations[first]:
            raise ReptuneError(f"lm-eval task {self.param} has no metric {metric!r} (metrics: {', '.join(self._aggregations[first])})")
        self.primary = metric
        self.binary_key = "correct" if "acc" in self._aggregations[first] else None
        grouped = len(leaves) > 1
        queues = {name: list(range(len(items))) for name, items in docs.items()}
        items = []
        while any(queues.values()):  # round-robin over subtasks, so a --limit samples every one
            for name, queue in queues.items():
                if queue:
                    doc_id = queue.pop(0)
                    items.append({"id": f"{name}/{doc_id}" if grouped else str(doc_id), "task": name, "doc_id": doc_id})
        configs = {name: _jsonable(task.dump_config()) if hasattr(task, "dump_config") else name for name, task in leaves.items()}
        digest = sha256_json({"configs": configs, "docs": {name: [_jsonable(d) for d in rows] for name, rows in docs.items()}})
        origin = f"lm-eval:{self.param}" + (f" ({self.options['include_path']})" if self.options["include_path"] else "")
        return items, origin, digest

    # ---------------------------------------------------------------- scoring
    def _lm(self, handle: ModelHandle, batch_size: int) -> Any:
        from lm_eval.models.huggingface import HFLM

        kwargs: dict[str, Any] = {"pretrained": handle.model, "tokenizer": handle.tokenizer, "batch_size": int(self.options["batch_size"] or batch_size)}
        if handle.autocast_dtype is not None and handle.autocast_dtype != handle.dtype:
            if "mixed_precision_dtype" not in inspect.signature(HFLM.__init__).parameters:
                raise ReptuneError("this lm-eval version cannot run with autocast; use --precision fp32 or a newer lm-eval")
            kwargs["mixed_precision_dtype"] = handle.autocast_dtype
        return HFLM(**kwargs)

    def score(self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Callable[[int], None]) -> list[dict[str, Any]]:
        import lm_eval

        wanted: dict[str, list[int]] = {}
        for item in items:
            wanted.setdefault(item["task"], []).append(int(item["doc_id"]))
        kwargs: dict[str, Any] = {
            "tasks": [self._leaves[name] for name in wanted], "task_manager": self._task_manager, "log_samples": True, "bootstrap_iters": 0,
            "num_fewshot": None if int(self.options["num_fewshot"]) < 0 else int(self.options["num_fewshot"]),
            "apply_chat_template": bool(self.options["chat"]),
        }
        if "samples" in inspect.signature(lm_eval.simple_evaluate).parameters:
            kwargs["samples"] = {name: sorted(ids) for name, ids in wanted.items()}
        else:  # older lm-eval: the first N documents of each subtask, filtered below
            kwargs["limit"] = max(max(ids) for ids in wanted.values()) + 1
        with _quiet(), _keep_rng_state():
            output = lm_eval.simple_evaluate(model=self._lm(handle, batch_size), **kwargs)
        if output is None or "samples" not in output:
            raise ReptuneError(f"lm-eval returned no per-sample results for {self.param}")
        by_doc: dict[tuple[str, int], dict[str, Any]] = {}
        for name, samples in output["samples"].items():
            for sample in samples:
                key = (name, int(sample["doc_id"]))
                record = by_doc.setdefault(key, {"task": name, "doc_id": key[1], "target": _jsonable(sample.get("target"))})
                self._fill(record, name, sample)
        records = []
        for item in items:
            record = by_doc.get((item["task"], int(item["doc_id"])))
            if record is None:
                raise ReptuneError(f"lm-eval returned no result for {item['task']} document {item['doc_id']}")
            if "acc" in record:
                record["correct"] = bool(record["acc"])
            records.append(record)
        advance(len(items))
        return records

    def _fill(self, record: dict[str, Any], name: str, sample: dict[str, Any]) -> None:
        filt = sample.get("filter", "none")
        for metric in sample.get("metrics", []):
            record[metric if filt == "none" else f"{metric},{filt}"] = _jsonable(sample.get(metric))
        if filt != "none":
            return
        responses = sample.get("filtered_resps") or []
        output_type = self._output_types.get(name)
        if output_type == "multiple_choice":
            logprobs = [float(r[0] if isinstance(r, (list, tuple)) else r) for r in responses]
            record["logprobs"] = logprobs
            if logprobs:
                choice = max(range(len(logprobs)), key=logprobs.__getitem__)
                record["choice"] = choice
                record["answer"] = LETTERS[choice] if choice < len(LETTERS) else str(choice)
        elif output_type == "generate_until" and responses:
            record["completion"] = _jsonable(responses[0])
        elif output_type in {"loglikelihood", "loglikelihood_rolling"} and responses:
            first = responses[0]
            record["logprob"] = float(first[0] if isinstance(first, (list, tuple)) else first)

    # ---------------------------------------------------------------- metrics
    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        from lm_eval.api.metrics import stderr_for_metric

        first = next(iter(self._aggregations))
        names = list(dict.fromkeys(key for r in records for key in r if key.split(",")[0] in self._aggregations[first]))
        grouped = len({r["task"] for r in records}) > 1

        def metric(values: list[Any], fn: Callable[[list[Any]], float]) -> dict[str, Any]:
            with _quiet():
                value = float(fn(values))
                stderr_fn = stderr_for_metric(fn, int(self.options["bootstrap_iters"])) if len(values) > 1 else None
                stderr = float(stderr_fn(values)) if stderr_fn is not None else math.nan
            if math.isfinite(stderr):
                return {"value": value, "ci_low": value - Z95 * stderr, "ci_high": value + Z95 * stderr, "n": len(values), "ci": "normal-stderr", "stderr": stderr}
            return {"value": value, "ci_low": math.nan, "ci_high": math.nan, "n": len(values), "ci": "none"}

        metrics: dict[str, dict[str, Any]] = {}
        for key in names:
            base = key.split(",")[0]
            rows = [r for r in records if key in r]
            metrics[key] = metric([r[key] for r in rows], self._aggregations[rows[0]["task"]][base])
            if grouped:
                for task in sorted({r["task"] for r in rows}):
                    metrics[f"{key}/{task}"] = metric([r[key] for r in rows if r["task"] == task], self._aggregations[task][base])
        if self.primary not in metrics:
            raise ReptuneError(f"lm-eval task {self.param}: no {self.primary!r} in its results")
        return metrics
