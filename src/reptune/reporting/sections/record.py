"""The run's record: the layer scan, where the time went, the resolved config, reproducibility."""

from __future__ import annotations

import platform
from typing import Any

from reptune.reporting.document import Bullets, Code, Heading, Plan, Span, Table, fmt
from reptune.reporting.figures import plot_scan_rows
from reptune.reporting.scan import SCAN_COLUMNS
from reptune.reporting.sections.training import section_training_plan


def section_scan(plan: Plan, results: dict[str, Any]) -> None:
    """The vector: file, method, positions, the selected layer, and the per-layer scan (table and figure)."""
    plan.add(Heading(2, "Layer scan"))
    vector = results.get("vector") or {}
    scan = vector.get("scan") or []
    if not vector:
        plan.para("Not run.")
        return
    spans: list[Span | str] = []
    if vector.get("file"):
        spans += ["Vector ", ("c", str(vector["file"])), "; "]
    spans += [f"method {vector.get('method', '?')}, positions {vector.get('positions', '?')}, selected layer {fmt(vector.get('layer'))} (", ("c", "*"), ")."]
    plan.para(*spans)
    if not scan:
        return
    columns = [c for c in SCAN_COLUMNS if any(c in row for row in scan)]
    rows = [[fmt(r.get(c)) + ("*" if c == "layer" and r.get("layer") == vector.get("layer") else "") for c in columns] for r in scan]
    plan.add(Table(columns, rows))
    plan.figure("scan", "layer scan", lambda path: plot_scan_rows(scan, vector.get("layer"), path))


def section_timing(plan: Plan, results: dict[str, Any]) -> None:
    """Where the time went: seconds per kind of stage, with the items scored and the steps trained."""
    stages = (results.get("timings") or {}).get("stages") or {}
    if not stages:
        return
    plan.add(Heading(2, "Where the time went"))
    reused = set((results.get("stages") or {}).get("reused") or [])
    groups: dict[str, list[str]] = {}
    for name in stages:
        groups.setdefault(name.split(":", 1)[0], []).append(name)
    steps = {f"train:{v}:s{seed}": (info or {}).get("steps") for v, by_seed in (results.get("training") or {}).items() for seed, info in (by_seed or {}).items()}
    rows = []
    for kind, names in groups.items():
        seconds = sum(float(stages[n]) for n in names)
        trained = sum(int(steps.get(n) or 0) for n in names)
        rows.append([kind, fmt(len(names)), f"{seconds:.1f}", f"{seconds / len(names):.1f}", fmt(trained) if trained else "-",
                     fmt(sum(n in reused for n in names))])
    total = (results.get("timings") or {}).get("total_s")
    machine = (results.get("model") or {}).get("machine") or {}
    plan.para(f"Total {fmt(total)} s on {machine.get('cpu', 'this machine')} ({fmt(machine.get('cores'))} cores, torch {machine.get('cpu_capability', '?')} kernels, "
              f"precision {(results.get('model') or {}).get('precision', '?')}); reused stages count the time they took when they ran.")
    plan.add(Table(["stage", "runs", "seconds", "per run", "steps trained", "reused"], rows))


def section_config(plan: Plan, results: dict[str, Any]) -> None:
    """The resolved experiment config (YAML) and what each loss term trains."""
    plan.add(Heading(2, "Config"))
    text = results.get("config_yaml")
    if not text and results.get("config"):
        import yaml

        text = yaml.safe_dump(results["config"], sort_keys=False)
    if text:
        plan.add(Code(str(text).rstrip("\n"), "yaml"))
    else:
        plan.para("Not recorded.")
    section_training_plan(plan, results)


def section_footer(plan: Plan, results: dict[str, Any]) -> None:
    """Reproducibility: the command, versions, model revision, seeds, the renderer, and every stage's time."""
    import matplotlib

    from reptune import __version__ as reptune_version

    plan.add(Heading(2, "Reproducibility"))
    model = results.get("model") or {}
    items: list[list[Span]] = []
    if results.get("command"):
        items.append([("", "command: "), ("c", str(results["command"]))])
    items.append([("", f"reptune {results.get('reptune_version', '?')}, results format {results.get('format', '?')}, created {results.get('created', '?')}")])
    items.append([("", "model: "), ("c", str(model.get("model_id") or "?")), ("", f" revision {model.get('revision') or '-'}")])
    items.append([("", "seeds: " + (", ".join(fmt(s) for s in results.get("seeds") or []) or "-"))])
    for key, value in (results.get("versions") or {}).items():
        items.append([("", f"{key} {value}")])
    n_eval = sum(len(v or {}) for v in (results.get("eval_files") or {}).values())
    if n_eval:
        items.append([("", f"{fmt(n_eval)} evaluation result files under "), ("c", "stages/")])
    items.append([("", f"rendered by reptune {reptune_version} with Python {platform.python_version()}, matplotlib {matplotlib.__version__}")])
    plan.add(Bullets(items))
    stages = (results.get("timings") or {}).get("stages") or {}
    if stages:
        plan.add(Table(["stage", "time (s)"], [[str(k), fmt(v)] for k, v in stages.items()]))
