"""The run's record: the layer scan, where the time went, the resolved config, reproducibility."""

from __future__ import annotations

import platform
from typing import Any

from reptune.reporting.document import Bullets, Code, Heading, Plan, Span, Table, fmt
from reptune.reporting.figures import plot_scan_rows
from reptune.reporting.scan import SCAN_COLUMNS
from reptune.reporting.schema import ExperimentResults, ModelInfo, StageNames, Timings, VectorInfo
from reptune.reporting.sections.common import given
from reptune.reporting.sections.training import section_training_plan


def section_scan(plan: Plan, results: ExperimentResults) -> None:
    """The vector: file, method, positions, the selected layer, and the per-layer scan (table and figure)."""
    vector = results.vector or VectorInfo()
    scan = vector.scan or []
    if not plan.section("Layer scan", vector):
        return
    spans: list[Span | str] = []
    if vector.file:
        spans += ["Vector ", ("c", str(vector.file)), "; "]
    spans += [f"method {given(vector.method, '?')}, positions {given(vector.positions, '?')}, selected layer {fmt(vector.layer)} (", ("c", "*"), ")."]
    plan.para(*spans)
    if not scan:
        return
    columns = [c for c in SCAN_COLUMNS if any(c in row for row in scan)]
    rows = [[fmt(r.get(c)) + ("*" if c == "layer" and r.get("layer") == vector.layer else "") for c in columns] for r in scan]
    plan.add(Table(columns, rows))
    plan.figure("scan", "layer scan", lambda path: plot_scan_rows(scan, vector.layer, path))


def stage_kind(name: str) -> str:
    """The row of the time table a stage counts in: its first name part, with a study's own
    trainings and evaluations (sample efficiency ``train:se-32:...``, generalisation's train and
    eval) and the counter-steered evaluations kept apart from the main ones."""
    parts = name.split(":")
    if parts[0] in {"train", "eval"} and len(parts) > 1 and parts[1].startswith("se-"):
        return f"{parts[0]} (sample efficiency)"
    if parts[0] == "generalisation" and len(parts) > 1 and parts[1] in {"train", "eval"}:
        return f"{parts[0]} {parts[1]}"
    if parts[0] == "eval" and "@counter" in name:
        return "eval (counter-steered)"
    return parts[0]


def section_timing(plan: Plan, results: ExperimentResults) -> None:
    """Where the time went: seconds per kind of stage, with the items scored and the steps trained."""
    timings = results.timings or Timings()
    stages = timings.stages or {}
    if not stages:
        return
    plan.add(Heading(2, "Where the time went"))
    reused = set((results.stages or StageNames()).reused or [])
    counts = dict(timings.counts or {})
    # stages recorded before each stage counted its work: a main training's steps are still known
    for variant, by_seed in (results.training or {}).items():
        for seed, info in (by_seed or {}).items():
            name = f"train:{variant}:s{seed}"
            if name in stages and name not in counts and info is not None and info.steps is not None:
                counts[name] = {"steps": info.steps, "items": 0}  # a training scores no task items
    groups: dict[str, list[str]] = {}
    for name in stages:
        groups.setdefault(stage_kind(name), []).append(name)
    rows = []
    for kind, names in groups.items():
        seconds = sum(float(stages[n]) for n in names)
        rows.append([kind, fmt(len(names)), f"{seconds:.1f}", f"{seconds / len(names):.1f}", _counted(counts, names, "items"),
                     _counted(counts, names, "steps"), fmt(sum(n in reused for n in names))])
    model = results.model or ModelInfo()
    machine = model.machine or {}
    plan.para(f"Total {fmt(timings.total_s, '.1f')} s on {machine.get('cpu', 'this machine')} ({fmt(machine.get('cores'))} cores, torch {machine.get('cpu_capability', '?')} kernels, "
              f"precision {given(model.precision, '?')}); reused stages count the time they took when they ran. Items are task items "
              "scored (a robustness or sweep cell counts its items; a learnability check scores the validation twins); steps are optimiser steps.")
    if (timings.workers or 1) > 1:
        by_worker = len((results.stages or StageNames()).by_worker or [])
        plan.para(f"Two processes ran the stages, the main one and a stage worker ({by_worker} stages), with half the threads each, "
                  f"so the stage times overlap: they add up to more than this invocation's wall time, {fmt(timings.this_run_s, '.1f')} s."
                  + (f" The stage worker stopped early (exit code {fmt(timings.worker_exit)}, see worker.log); the main process ran the rest."
                     if timings.worker_exit not in (None, 0) else ""))
    plan.add(Table(["stage", "runs", "seconds", "per run", "items scored", "steps trained", "reused"], rows))


def _counted(counts: dict[str, dict[str, Any]], names: list[str], kind: str) -> str:
    """The ``kind`` units the ``names`` stages did, ``-`` for none; ``?`` marks stages recorded without counts."""
    known = [int((counts[n] or {}).get(kind) or 0) for n in names if n in counts and kind in (counts[n] or {})]
    total = sum(known)
    if len(known) == len(names):
        return fmt(total) if total else "-"
    return f"{fmt(total)} (+?)" if total else "?"


def section_config(plan: Plan, results: ExperimentResults) -> None:
    """The resolved experiment config (YAML) and what each loss term trains."""
    plan.add(Heading(2, "Config"))
    text = results.config_yaml
    if not text and results.config:
        import yaml

        text = yaml.safe_dump(results.config, sort_keys=False)
    if text:
        plan.add(Code(str(text).rstrip("\n"), "yaml"))
    else:
        plan.para("Not recorded.")
    section_training_plan(plan, results)


def section_footer(plan: Plan, results: ExperimentResults) -> None:
    """Reproducibility: the command, versions, model revision, seeds, the renderer, and every stage's time."""
    import matplotlib

    from reptune import __version__ as reptune_version

    plan.add(Heading(2, "Reproducibility"))
    model = results.model or ModelInfo()
    items: list[list[Span]] = []
    if results.command:
        items.append([("", "command: "), ("c", str(results.command))])
    items.append([("", f"reptune {given(results.reptune_version, '?')}, results format {given(results.format, '?')}, created {given(results.created, '?')}")])
    items.append([("", "model: "), ("c", str(model.model_id or "?")), ("", f" revision {model.revision or '-'}")])
    items.append([("", "seeds: " + (", ".join(fmt(s) for s in results.seeds or []) or "-"))])
    for key, value in (results.versions or {}).items():
        items.append([("", f"{key} {value}")])
    n_eval = sum(len(v or {}) for v in (results.eval_files or {}).values())
    if n_eval:
        items.append([("", f"{fmt(n_eval)} evaluation result files under "), ("c", "stages/")])
    items.append([("", f"rendered by reptune {reptune_version} with Python {platform.python_version()}, matplotlib {matplotlib.__version__}")])
    plan.add(Bullets(items))
    stages = (results.timings or Timings()).stages or {}
    if stages:
        plan.add(Table(["stage", "time (s)"], [[str(k), fmt(v)] for k, v in stages.items()]))
