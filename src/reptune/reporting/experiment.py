"""The experiment report: ``runs/NAME/results.json`` -> figures, ``report.md`` and ``report.html``.

:func:`write_report` reads the ``reptune-experiment/1`` results file written by ``reptune run``,
draws every figure into ``RUN/figures/*.png`` and writes ``RUN/report.md`` (figures referenced by
relative path) and a self-contained ``RUN/report.html`` (figures embedded as base64 data URIs,
inline CSS, no scripts, nothing fetched). :func:`render_markdown` is the pure Markdown renderer.

Both outputs come from one list of blocks (headings, paragraphs, lists, tables, figures, code),
so they always say the same thing. Every number shown is the JSON value passed through
:func:`fmt` (p-values through :func:`fmt_p`); nothing is recomputed here. Optional sections
(sweep, training, robustness, projections, representation, paired tests, scan) that the run
did not produce say "Not run." instead of failing.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reptune._io import write_text_atomic
from reptune.errors import ReptuneError

FORMAT_PREFIX = "reptune-experiment/"
FIGURES_DIR = "figures"
KIND_ORDER = ("untuned", "steered", "tuned", "counter")
KIND_COLORS = {"untuned": "tab:gray", "steered": "tab:blue", "tuned": "tab:green", "counter": "tab:orange"}
EXTRA_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:red")
VERDICTS = ("supported", "not supported", "inconclusive", "not tested")
SCAN_COLUMNS = ("layer", "pair_acc", "probe_acc", "label_acc", "gap", "effect", "norm", "rel_norm")
_UNBOUNDED_METRICS = {"mean_margin", "perplexity", "kl", "nll", "loss", "mean_projection", "mean_cosine"}


# ----------------------------------------------------------------------------- number formatting


def fmt(x: Any) -> str:
    """The one number format of the report: floats with 3 decimals, ints as ints, None as ``-``."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def fmt_p(p: Any) -> str:
    """A p-value with 3 significant digits, ``<0.001`` below 0.001, ``-`` for None."""
    if p is None:
        return "-"
    p = float(p)
    if math.isnan(p):
        return "nan"
    if p < 0.001:
        return "<0.001"
    return f"{p:#.3g}"


def fmt_ci(low: Any, high: Any) -> str:
    """``[low, high]`` through :func:`fmt`, or ``-`` when the interval is absent."""
    if low is None and high is None:
        return "-"
    return f"[{fmt(low)}, {fmt(high)}]"


# ----------------------------------------------------------------------------- document blocks

Span = tuple[str, str]  # (style, text); style: "" plain, "b" bold, "c" code, "i" italic


@dataclass
class _Heading:
    level: int
    text: str


@dataclass
class _Para:
    spans: list[Span]


@dataclass
class _List:
    items: list[list[Span]]


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class _Figure:
    rel: str  # path relative to the run directory, always figures/NAME.png
    caption: str


@dataclass
class _Code:
    text: str
    lang: str = ""


@dataclass
class _Job:
    rel: str
    draw: Callable[[Path], Any]


@dataclass
class _Plan:
    blocks: list[Any] = field(default_factory=list)
    jobs: list[_Job] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def add(self, *blocks: Any) -> None:
        self.blocks.extend(blocks)

    def para(self, *spans: Span | str) -> None:
        self.blocks.append(_Para([("", s) if isinstance(s, str) else s for s in spans]))

    def figure(self, stem: str, caption: str, draw: Callable[[Path], Any]) -> None:
        base = _slug(stem)
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}-{k}"
        self.used.add(name)
        rel = f"{FIGURES_DIR}/{name}.png"
        self.jobs.append(_Job(rel, draw))
        self.blocks.append(_Figure(rel, caption))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "x"


# ----------------------------------------------------------------------------- helpers on the results


def _conditions(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Condition id -> condition, including ids that only appear in ``scores``."""
    out: dict[str, dict[str, Any]] = {}
    for cond in results.get("conditions") or []:
        out[cond["id"]] = cond
    for cid in results.get("scores") or {}:
        out.setdefault(cid, {"id": cid, "label": cid, "kind": "other", "variant": None, "steering": None})
    return out


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _grouped(conds: dict[str, dict[str, Any]], ids: list[str]) -> list[str]:
    """``ids`` grouped by kind (untuned, steered, tuned, counter, others), stable inside a group."""
    first_kind_seen: dict[str, int] = {}
    for i, cid in enumerate(ids):
        first_kind_seen.setdefault(conds[cid].get("kind") or "other", i)
    return sorted(ids, key=lambda c: (_kind_rank(conds[c].get("kind") or "other"), first_kind_seen[conds[c].get("kind") or "other"]))


def _kind_color(kind: str, extra: dict[str, str]) -> str:
    if kind in KIND_COLORS:
        return KIND_COLORS[kind]
    if kind not in extra:
        extra[kind] = EXTRA_COLORS[len(extra) % len(EXTRA_COLORS)]
    return extra[kind]


def _tasks(results: dict[str, Any]) -> list[str]:
    tasks: list[str] = []
    head = (results.get("headline") or {}).get("task")
    if head and any(head in (by_task or {}) for by_task in (results.get("scores") or {}).values()):
        tasks.append(head)
    for by_task in (results.get("scores") or {}).values():
        for task in by_task or {}:
            if task not in tasks:
                tasks.append(task)
    return tasks


def _label(conds: dict[str, dict[str, Any]], cid: str) -> str:
    return str((conds.get(cid) or {}).get("label") or cid)


def _mpl(text: Any) -> str:
    """Text for matplotlib with ``$`` escaped (no accidental mathtext)."""
    return str(text).replace("$", r"\$")


def _short(text: Any, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


# ----------------------------------------------------------------------------- the plan


def _plan(results: dict[str, Any]) -> _Plan:
    plan = _Plan()
    conds = _conditions(results)
    _section_summary(plan, results, conds)
    _section_answer(plan, results, conds)
    _section_headline(plan, results)
    _section_claims(plan, results)
    _section_findings(plan, results)
    _section_tasks(plan, results, conds)
    _section_sweep(plan, results)
    _section_training(plan, results)
    _section_robustness(plan, results, conds)
    _section_projection(plan, results, conds)
    _section_representation(plan, results, conds)
    _section_paired(plan, results)
    _section_scan(plan, results)
    _section_timing(plan, results)
    _section_config(plan, results)
    _section_footer(plan, results)
    return plan


def _section_summary(plan: _Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    name = results.get("name") or "experiment"
    plan.add(_Heading(1, f"Representation-tuning experiment: {name}"))
    model = results.get("model") or {}
    spans: list[Span | str] = ["Model ", ("c", str(model.get("model_id") or "unknown"))]
    details = []
    if model.get("revision"):
        details.append(f"revision {model['revision']}")
    if model.get("num_layers") is not None:
        details.append(f"{fmt(model['num_layers'])} layers")
    if model.get("hidden_size") is not None:
        details.append(f"hidden size {fmt(model['hidden_size'])}")
    if model.get("precision"):
        details.append(str(model["precision"]))
    if details:
        spans.append(" (" + ", ".join(details) + ")")
    spans.append(". ")
    seeds = results.get("seeds") or []
    if seeds:
        word = "seed" if len(seeds) == 1 else "seeds"
        spans.append(f"{fmt(len(seeds))} {word} ({', '.join(fmt(s) for s in seeds)})")
        spans.append(f": {results['seed_note']}. " if results.get("seed_note") else ". ")
    timings = results.get("timings") or {}
    if timings.get("total_s") is not None:
        total = float(timings["total_s"])
        spans.append(f"Total time {fmt(total)} s ({int(total // 60)} min {round(total % 60)} s) over {fmt(len(timings.get('stages') or {}))} stages. ")
    data = results.get("data") or {}
    if data:
        splits = data.get("splits") or {}
        pairs = data.get("pairs") or {}
        split_text = ", ".join(f"{k} {fmt(v)}" + (f" ({fmt(pairs[k])} twins)" if k in pairs else "") for k, v in splits.items())
        spans += ["Statements ", ("c", str(data.get("statements") or "?"))]
        spans.append(f" ({split_text}). " if split_text else ". ")
    if conds:
        kinds: dict[str, int] = {}
        for cond in conds.values():
            kinds[cond.get("kind") or "other"] = kinds.get(cond.get("kind") or "other", 0) + 1
        spans.append(f"{fmt(len(conds))} conditions (" + ", ".join(f"{k} {fmt(v)}" for k, v in kinds.items()) + ") ")
        spans.append(f"evaluated on {fmt(len(_tasks(results)))} tasks. ")
    skipped = results.get("skipped") or []
    if skipped:
        spans.append("Skipped: " + "; ".join(f"{s.get('what', '?')} ({s.get('reason', 'no reason given')})" for s in skipped) + ".")
    else:
        spans.append("Nothing was skipped.")
    plan.para(*spans)


def _section_answer(plan: _Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    """The first screen: the headline behaviour per condition (figure, CIs), what the model knows,
    whether it can learn the behaviour at all, and the verdicts."""
    plan.add(_Heading(2, "The answer"))
    head = results.get("headline") or {}
    task = str(head.get("task") or "")
    entries = {cid: (results.get("scores") or {}).get(cid, {}).get(task) for cid in conds}
    ids = [cid for cid, entry in entries.items() if entry]
    if ids:
        metric = str(head.get("metric") or "accuracy")
        plan.figure("answer", f"{task}: {metric} per condition (95% CI; dots = seeds)",
                    lambda path: _plot_task(task, metric, ids, {cid: entries[cid] for cid in ids}, conds, path))
    knowledge = results.get("knowledge") or {}
    if knowledge.get("n"):
        topics = knowledge.get("by_topic") or {}
        weakest = sorted(topics.items(), key=lambda kv: kv[1].get("share", 0))[:2]
        plan.para(("b", "What the untuned model knows:"), f" it gets {fmt(knowledge.get('known'))} of {fmt(knowledge.get('n'))} test items right on ",
                  ("c", str(knowledge.get("task"))), f" ({fmt(knowledge.get('share'))})"
                  + (", weakest on " + ", ".join(f"{t} ({fmt(v.get('share'))} of {fmt(v.get('n'))})" for t, v in weakest) if weakest else "") + ".")
    gate = results.get("learnability") or results.get("gate") or {}
    if gate:
        plan.para(("b", "Learnability check " + ("passed:" if gate.get("passed") else "not passed:")), " " + str(gate.get("reason") or ""))
    claims = results.get("claims") or []
    if claims:
        plan.add(_List([[("b", str(c.get("verdict") or "not tested")), ("", " — "), ("c", str(c.get("id") or "?"))]
                        + ([("", f" (p = {fmt_p(c['p_value'])}" + (f", Holm {fmt_p(c['p_holm'])}" if c.get("p_holm") is not None else "") + ")")]
                           if c.get("p_value") is not None else []) for c in claims]))
        plan.para("Each verdict's evidence, test and minimum detectable effect are under ", ("i", "Claims"), " below.")


def _section_timing(plan: _Plan, results: dict[str, Any]) -> None:
    """Where the time went: seconds per kind of stage, with the items scored and the steps trained."""
    stages = (results.get("timings") or {}).get("stages") or {}
    if not stages:
        return
    plan.add(_Heading(2, "Where the time went"))
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
    plan.add(_Table(["stage", "runs", "seconds", "per run", "steps trained", "reused"], rows))


def _section_headline(plan: _Plan, results: dict[str, Any]) -> None:
    plan.add(_Heading(2, "Headline"))
    head = results.get("headline") or {}
    rows = head.get("rows") or []
    if not rows:
        plan.para("Not run.")
        return
    metric = str(head.get("metric") or "value")
    plan.para(("c", str(head.get("task") or "?")), f", {metric} per condition with its 95% confidence interval and the number of items.")
    plan.add(
        _Table(
            ["condition", "label", metric, "95% CI", "n"],
            [[str(r.get("condition")), str(r.get("label") or r.get("condition")), fmt(r.get("value")), fmt_ci(r.get("ci_low"), r.get("ci_high")), fmt(r.get("n"))] for r in rows],
        )
    )


def _claim_stats(claim: dict[str, Any]) -> list[Span]:
    """``p = raw (Holm-adjusted q)``, the test and the minimum detectable effect of one claim."""
    spans: list[Span] = []
    if claim.get("p_value") is not None:
        text = f" p = {fmt_p(claim['p_value'])}"
        if claim.get("p_holm") is not None:
            text += f" (Holm-adjusted {fmt_p(claim['p_holm'])})"
        spans.append(("", text + (f", {claim['method']}." if claim.get("method") else ".")))
    mde = claim.get("mde") or {}
    if mde.get("text"):
        spans.append(("", " " + str(mde["text"])))
    return spans


def _section_claims(plan: _Plan, results: dict[str, Any]) -> None:
    plan.add(_Heading(2, "Claims"))
    claims = results.get("claims") or []
    if not claims:
        plan.para("Not run.")
        return
    gate = results.get("gate") or {}
    if gate and not gate.get("passed", True):
        plan.para(("b", "Learnability gate not passed:"), " " + str(gate.get("reason") or "no reason given"))
    items = []
    context: list[dict[str, Any]] = []
    for claim in claims:
        spans: list[Span] = [("b", str(claim.get("verdict") or "not tested")), ("", " — ")]
        if claim.get("id"):
            spans += [("c", str(claim["id"])), ("", ": ")]
        spans.append(("", str(claim.get("claim") or "")))
        if claim.get("evidence"):
            spans += [("", " "), ("i", "Evidence:"), ("", " " + str(claim["evidence"]))]
        spans += _claim_stats(claim)
        items.append(spans)
        context += [dict(row, claim=claim.get("id")) for row in claim.get("context") or []]
    plan.add(_List(items))
    if results.get("claims_rule"):
        plan.para(("b", "Decision rule:"), " " + str(results["claims_rule"]))
    if context:
        plan.para("Context for ", ("c", "tuning-beats-steering"), " (not part of the decision): where the gain over steering comes from.")
        plan.add(_Table(
            ["a", "b", "what", "task", "seed", "n", "a_value", "b_value", "difference", "p", "MDE", "degenerate"],
            [[str(r.get("a")), str(r.get("b")), str(r.get("what") or "-"), str(r.get("task") or "-"), fmt(r.get("seed")), fmt(r.get("n")),
              fmt(r.get("a_value")), fmt(r.get("b_value")), fmt(r.get("effect")), fmt_p(r.get("p_value")), fmt(r.get("mde")),
              str(r.get("degenerate") or "-")] for r in context],
        ))


def _section_findings(plan: _Plan, results: dict[str, Any]) -> None:
    items = results.get("findings") or []
    if not items:
        return
    plan.add(_Heading(2, "What moved"))
    plan.para("Behaviour (held-out facts) beside the representation (cosine of the last-token residual with the vector at its layer).")
    plan.add(_List([[("", str(item))] for item in items]))


def _section_tasks(plan: _Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    plan.add(_Heading(2, "Results per task"))
    scores = results.get("scores") or {}
    tasks = _tasks(results)
    if not tasks:
        plan.para("Not run.")
    for task in tasks:
        ids = _grouped(conds, [cid for cid in conds if task in (scores.get(cid) or {})])
        entries = {cid: scores[cid][task] or {} for cid in ids}
        primary = next((e.get("primary") for e in entries.values() if e.get("primary")), None)
        if primary is None:
            primary = next((m for e in entries.values() for m in (e.get("metrics") or {})), "value")
        others: list[str] = []
        for entry in entries.values():
            for metric in entry.get("metrics") or {}:
                if metric != primary and metric not in others:
                    others.append(metric)
        multi_seed = any(len(((e.get("metrics") or {}).get(primary) or {}).get("per_seed") or []) > 1 for e in entries.values())
        plan.add(_Heading(3, task))
        plan.para(
            "Primary metric ",
            ("c", primary),
            "; bars grouped by condition kind, error bars are 95% confidence intervals"
            + (", dots are single seeds." if multi_seed else "."),
        )
        plan.figure(
            f"task-{task}",
            f"{task}: {primary} per condition (95% CI)",
            lambda path, task=task, ids=ids, entries=entries, primary=primary: _plot_task(task, primary, ids, entries, conds, path),
        )
        header = ["condition", "label", "kind", primary, "95% CI", "n"] + (["per seed"] if multi_seed else []) + others
        rows = []
        for cid in ids:
            metrics = entries[cid].get("metrics") or {}
            m = metrics.get(primary) or {}
            row = [cid, _label(conds, cid), str(conds[cid].get("kind") or "other"), fmt(m.get("value")), fmt_ci(m.get("ci_low"), m.get("ci_high")), fmt(m.get("n"))]
            if multi_seed:
                row.append(", ".join(fmt(v) for v in m.get("per_seed") or []) or "-")
            row += [fmt((metrics.get(o) or {}).get("value")) for o in others]
            rows.append(row)
        plan.add(_Table(header, rows))
    skipped = results.get("skipped") or []
    if skipped:
        plan.add(_Heading(3, "Skipped"))
        plan.add(_List([[("c", str(s.get("what", "?"))), ("", ": " + str(s.get("reason", "no reason given")))] for s in skipped]))


def _sweep_selected(sweep: dict[str, Any]) -> tuple[Any, set[float]]:
    selected = sweep.get("selected") or {}
    chosen = {float(selected[k]) for k in ("positive", "negative") if isinstance(selected.get(k), (int, float))}
    return selected.get("layer", sweep.get("layer")), chosen


def _section_sweep(plan: _Plan, results: dict[str, Any]) -> None:
    plan.add(_Heading(2, "Steering sweep"))
    sweep = results.get("sweep") or {}
    rows = sorted(sweep.get("rows") or [], key=lambda r: (_num(r.get("layer")) if r.get("layer") is not None else -1, _num(r.get("multiplier"))))
    if not rows:
        plan.para("Not run.")
        return
    selected = sweep.get("selected") or {}
    layer, chosen = _sweep_selected(sweep)
    plan.para(
        f"{sweep.get('metric', 'value')} on ",
        ("c", str(sweep.get("task", "?"))),
        f" ({sweep.get('split', '?')} split) against the steering multiplier, one line per layer; "
        "crosses = degenerate cells, stars = the selected layer's multipliers.",
    )
    plan.figure("sweep", "steering sweep", lambda path: _plot_sweep(sweep, rows, path))
    if sweep.get("rule"):
        plan.para(("b", "Selection rule:"), " " + str(sweep["rule"]))
    if selected:
        plan.para(("b", "Selected:"), f" layer {fmt(layer)}, m+ x{fmt(selected.get('positive'))} (effect {fmt(selected.get('effect_positive'))}), "
                  f"m- x{fmt(selected.get('negative'))} (effect {fmt(selected.get('effect_negative'))})"
                  + ("." if selected.get("moved", True) else "; steering did not move the behaviour on the validation split."))
    extra = [k for k in ("mean_nll", "same_answer_rate", "effect") if any(r.get(k) is not None for r in rows)]
    table = _Table(
        ["layer", "multiplier", str(sweep.get("metric", "value")), "95% CI", "n", *extra, "degenerate", "selected"],
        [
            [fmt(r.get("layer")) if r.get("layer") is not None else "-", fmt(r.get("multiplier")), fmt(r.get("value")), fmt_ci(r.get("ci_low"), r.get("ci_high")), fmt(r.get("n"))]
            + [fmt(r.get(k)) for k in extra]
            + [str(r.get("degenerate_reason") or ("yes" if r.get("degenerate") else "")),
               "yes" if r.get("layer") == layer and _num(r.get("multiplier")) in chosen else ""]
            for r in rows
        ],
    )
    plan.add(table)


def _section_training(plan: _Plan, results: dict[str, Any]) -> None:
    plan.add(_Heading(2, "Training"))
    training = results.get("training") or {}
    runs = [(variant, seed, info or {}) for variant, by_seed in training.items() for seed, info in (by_seed or {}).items()]
    if not runs:
        plan.para("Not run.")
        return
    plan.para("Every loss term per step, one panel per variant (line style = seed); dots = validation loss; dotted line = best step.")
    plan.figure("training-loss", "training loss curves", lambda path: _plot_training(training, path))
    rows = []
    for variant, seed, info in runs:
        curves = info.get("loss_curves") or {}
        total = curves.get("total") or []
        val = curves.get("val_loss") or []
        metrics = info.get("metrics") or {}
        rows.append(
            [
                variant,
                str(seed),
                str(info.get("preset") or "-"),
                fmt(info.get("steps")),
                fmt(info.get("best_step")),
                fmt(total[-1] if total else None),
                fmt(min(val) if val else None),
                fmt(info.get("elapsed_s")),
                fmt((metrics.get("final_val") or {}).get("cos")),
                str(metrics.get("stopped") or "-"),
            ]
        )
    plan.add(_Table(["variant", "seed", "preset", "steps", "best step", "final total loss", "best val loss", "time (s)", "val cos", "stopped"], rows))


def _section_robustness(plan: _Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    plan.add(_Heading(2, "Robustness"))
    robustness = results.get("robustness") or {}
    if not robustness:
        plan.para("Not run.")
        return
    plan.para("Layers × multipliers; ", ("c", "x"), " marks degenerate cells (one answer letter at or above the threshold).")
    for cid, grid in robustness.items():
        grid = grid or {}
        title = f"{_label(conds, cid)}: {grid.get('task', '?')} {grid.get('metric', '')}".strip()
        plan.add(_Heading(3, _label(conds, cid)))
        plan.para(
            ("c", str(grid.get("task", "?"))),
            f", {grid.get('metric', 'value')}; degenerate threshold {fmt(grid.get('degenerate_threshold'))}.",
        )
        plan.figure(f"robustness-{cid}", title, lambda path, grid=grid, title=title: _draw_robustness(grid, path, title))
        layers, mults, cells = _grid(grid)
        if layers and mults:
            rows = []
            for layer in layers:
                row = [fmt(layer)]
                for mult in mults:
                    cell = cells.get((layer, float(mult)))
                    row.append("-" if cell is None else fmt(cell.get("value")) + (" x" if cell.get("degenerate") else ""))
                rows.append(row)
            plan.add(_Table(["layer \\ multiplier", *[fmt(m) for m in mults]], rows))


def _section_projection(plan: _Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    plan.add(_Heading(2, "Projections"))
    projection = results.get("projection") or {}
    by_condition = projection.get("by_condition") or {}
    if not by_condition:
        plan.para("Not run.")
        return
    plan.para("Cosine of each token's hidden state to the honesty vector, layers × tokens.")
    if projection.get("layer_note"):
        plan.para(str(projection["layer_note"]))
    for cid, items in by_condition.items():
        items = items or []
        plan.add(_Heading(3, _label(conds, cid)))
        if not items:
            plan.para("No prompts.")
            continue
        title = f"projection: {_label(conds, cid)}"
        plan.figure(f"projection-{cid}", title, lambda path, items=items, title=title: _draw_projection(items, path, title))
        plan.add(_List([[("", f"prompt {i + 1}: "), ("", str(item.get("prompt", "")))] for i, item in enumerate(items)]))


def _section_representation(plan: _Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    plan.add(_Heading(2, "Representation-level evidence"))
    rows = results.get("representation") or []
    if not rows:
        plan.para("Not run.")
        return
    keys = ["condition"] + [k for k in dict.fromkeys(k for r in rows for k in r) if k != "condition"]
    plan.add(_Table(keys, [[str(r.get(k)) if k == "condition" else fmt(r.get(k)) for k in keys] for r in rows]))


def _section_paired(plan: _Plan, results: dict[str, Any]) -> None:
    plan.add(_Heading(2, "Paired tests"))
    rows = results.get("comparisons") or []
    if not rows:
        plan.para("Not run.")
        return
    plan.para(
        "McNemar tests on per-item outcomes of two conditions (same items, same seed); Holm = Holm-Bonferroni adjusted p over this "
        "table (exploratory; the claims have their own family). A row whose seed is missing is not tested (no other seed stands in)."
    )
    header = ["task", "a", "b", "seed", "n", "metric", "a_value", "b_value", "p", "Holm", "method"]
    plan.add(
        _Table(
            header,
            [
                [str(r.get("task")), str(r.get("a")), str(r.get("b")), fmt(r.get("seed")), fmt(r.get("n")), str(r.get("metric") or "-"),
                 fmt(r.get("a_value")), fmt(r.get("b_value")), fmt_p(r.get("p_value")), fmt_p(r.get("p_holm")),
                 str(r.get("method") or ("not tested: " + str(r["reason"]) if r.get("reason") else "-"))]
                for r in rows
            ],
        )
    )


def _section_scan(plan: _Plan, results: dict[str, Any]) -> None:
    plan.add(_Heading(2, "Layer scan"))
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
    plan.add(_Table(columns, rows))
    plan.figure("scan", "layer scan", lambda path: _plot_scan_rows(scan, vector.get("layer"), path))


def _section_config(plan: _Plan, results: dict[str, Any]) -> None:
    plan.add(_Heading(2, "Config"))
    text = results.get("config_yaml")
    if not text and results.get("config"):
        import yaml

        text = yaml.safe_dump(results["config"], sort_keys=False)
    if text:
        plan.add(_Code(str(text).rstrip("\n"), "yaml"))
    else:
        plan.para("Not recorded.")
    _section_training_plan(plan, results)


def _section_training_plan(plan: _Plan, results: dict[str, Any]) -> None:
    """Per variant: which loss term updates which tensors, at which layers and positions (first seed)."""
    rows = []
    for variant, by_seed in (results.get("training") or {}).items():
        info = next(iter((by_seed or {}).values()), None) or {}
        for term, spec in ((info.get("plan") or {}).get("terms") or {}).items():
            updates = spec.get("updates")
            if isinstance(updates, dict):
                updates = "; ".join(f"{name} ({blocks})" for name, blocks in updates.items())
            rows.append([variant, term, fmt(spec.get("weight")), str(spec.get("loss") or "-"), str(spec.get("layers") or "-"),
                         str(spec.get("position") or spec.get("positions") or "-"), _short(updates or "-", 160)])
    if rows:
        plan.add(_Heading(3, "What each loss term trains"))
        plan.para("Resolved on the model (from each variant's tune_config.json): the loss terms, their weights, the layers and positions they read, and the tensors they update (blocks in brackets).")
        plan.add(_Table(["variant", "term", "weight", "loss", "layers", "positions", "updates"], rows))


def _section_footer(plan: _Plan, results: dict[str, Any]) -> None:
    import matplotlib

    plan.add(_Heading(2, "Reproducibility"))
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
    from reptune import __version__ as reptune_version

    items.append([("", f"rendered by reptune {reptune_version} with Python {platform.python_version()}, matplotlib {matplotlib.__version__}")])
    plan.add(_List(items))
    stages = (results.get("timings") or {}).get("stages") or {}
    if stages:
        plan.add(_Table(["stage", "time (s)"], [[str(k), fmt(v)] for k, v in stages.items()]))


# ----------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_task(task: str, primary: str, ids: list[str], entries: dict[str, Any], conds: dict[str, Any], path: Path) -> Path:
    from matplotlib.patches import Patch

    from reptune.reporting import save_figure

    plt = _pyplot()
    extra: dict[str, str] = {}
    xs, values, colors, labels, kinds = [], [], [], [], []
    x, prev_kind = 0.0, None
    for cid in ids:
        kind = conds[cid].get("kind") or "other"
        if prev_kind is not None and kind != prev_kind:
            x += 0.6
        prev_kind = kind
        xs.append(x)
        x += 1.0
        m = ((entries[cid].get("metrics") or {}).get(primary)) or {}
        values.append(m)
        colors.append(_kind_color(kind, extra))
        labels.append(_mpl(_short(_label(conds, cid), 28)))
        kinds.append(kind)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.75 * len(ids) + 2.5), 4.0))
    heights = [_num(m.get("value")) for m in values]
    ax.bar(xs, heights, color=colors, width=0.8, edgecolor="black", linewidth=0.5)
    for xi, m, h in zip(xs, values, heights):
        lo, hi = m.get("ci_low"), m.get("ci_high")
        if lo is not None and hi is not None and not math.isnan(h):
            ax.errorbar([xi], [h], yerr=[[max(0.0, h - lo)], [max(0.0, hi - h)]], color="black", capsize=4, lw=1)
        seeds = m.get("per_seed") or []
        if len(seeds) > 1:
            ax.scatter([xi] * len(seeds), seeds, s=10, color="black", zorder=3)
        if not math.isnan(h):
            ax.annotate(fmt(m.get("value")), (xi, hi if hi is not None else h), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    base = next((h for cid, h in zip(ids, heights) if (conds[cid].get("kind") == "untuned" and not math.isnan(h))), None)
    if base is not None:
        ax.axhline(base, color="gray", lw=0.8, ls="--")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(_mpl(primary))
    ax.set_title(_mpl(f"{task}: {primary} (95% CI)"))
    numbers = [v for m in values for v in (m.get("value"), m.get("ci_low"), m.get("ci_high")) if v is not None]
    if numbers and primary not in _UNBOUNDED_METRICS and min(numbers) >= 0.0 and max(numbers) <= 1.0:
        ax.set_ylim(0.0, 1.1)
    seen = list(dict.fromkeys(kinds))
    ax.legend(handles=[Patch(color=_kind_color(k, extra), label=_mpl(k)) for k in seen], fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return save_figure(fig, path)


def _plot_sweep(sweep: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> Path:
    from reptune.reporting import save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    base = next((r for r in rows if _num(r.get("multiplier")) == 0), None)
    layers = sorted({r.get("layer") for r in rows if r.get("layer") is not None})
    chosen_layer, chosen = _sweep_selected(sweep)
    for index, layer in enumerate(layers):
        cells = sorted([r for r in rows if r.get("layer") == layer] + ([base] if base else []), key=lambda r: _num(r.get("multiplier")))
        mult, val = [_num(r.get("multiplier")) for r in cells], [_num(r.get("value")) for r in cells]
        color = f"C{index % 10}"
        ax.plot(mult, val, "o-" if layer == chosen_layer else "o--", color=color, lw=2.0 if layer == chosen_layer else 1.0, label=_mpl(f"layer {layer}"))
        if layer == chosen_layer:
            ax.fill_between(mult, [_num(r.get("ci_low")) for r in cells], [_num(r.get("ci_high")) for r in cells], alpha=0.2, color=color)
            picked = [(m, v) for m, v in zip(mult, val) if m in chosen]
            ax.scatter([p[0] for p in picked], [p[1] for p in picked], marker="*", s=220, color=color, edgecolor="black", zorder=5, label="selected")
        bad = [(m, v) for m, v, r in zip(mult, val, cells) if r.get("degenerate")]
        if bad:
            ax.scatter([b[0] for b in bad], [b[1] for b in bad], marker="x", s=70, color="tab:red", zorder=4)
    ax.axhline(_num(base.get("value")) if base else float("nan"), color="gray", lw=0.8, ls=":")
    ax.set_xlabel("steering multiplier (x the vector)")
    ax.set_ylabel(_mpl(sweep.get("metric", "value")))
    ax.set_title(_mpl(f"steering sweep: {sweep.get('task', '?')} ({sweep.get('split', '?')}); red x = degenerate"))
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def _plot_training(training: dict[str, Any], path: Path) -> Path:
    from reptune.reporting import save_figure

    plt = _pyplot()
    variants = [v for v in training if training[v]]
    ncols = min(3, len(variants))
    nrows = math.ceil(len(variants) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    styles = ("-", "--", "-.", ":")
    term_colors: dict[str, str] = {}
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")
    for ax, variant in zip(axes.flat, variants):
        for si, (seed, info) in enumerate((training[variant] or {}).items()):
            curves = (info or {}).get("loss_curves") or {}
            steps = curves.get("step") or []
            suffix = f" s{seed}" if len(training[variant]) > 1 else ""
            for term, values in curves.items():
                if term in ("step", "val_step", "val_loss") or not values or len(values) != len(steps):
                    continue
                color = term_colors.setdefault(term, palette[len(term_colors) % len(palette)])
                ax.plot(steps, [_num(v) for v in values], styles[si % len(styles)], color=color, lw=1, label=_mpl(term + suffix))
            if curves.get("val_step") and curves.get("val_loss"):
                ax.plot(curves["val_step"], [_num(v) for v in curves["val_loss"]], "o", color="black", ms=4, label="val" + suffix)
            if info.get("best_step") is not None:
                ax.axvline(info["best_step"], color="tab:green", ls=":", lw=1.2)
        ax.set_title(_mpl(variant))
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    return save_figure(fig, path)


def _plot_scan_rows(scan: list[dict[str, Any]], selected: Any, path: Path) -> Path:
    from reptune.reporting import save_figure

    plt = _pyplot()
    layers = [r.get("layer") for r in scan]
    fig, (ax_acc, ax_eff) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, marker in (("pair_acc", "o"), ("probe_acc", "s"), ("label_acc", "^")):
        if any(r.get(key) is not None for r in scan):
            ax_acc.plot(layers, [_num(r.get(key)) for r in scan], marker=marker, label=key)
    ax_acc.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax_acc.set_ylim(0.0, 1.05)
    ax_acc.set_xlabel("layer (output of block L)")
    ax_acc.set_ylabel("held-out accuracy")
    ax_acc.legend(fontsize=8)
    ax_eff.plot(layers, [_num(r.get("effect")) for r in scan], marker="o", color="tab:red")
    ax_eff.set_xlabel("layer (output of block L)")
    ax_eff.set_ylabel("effect size (Cohen's d)")
    if selected is not None:
        for ax in (ax_acc, ax_eff):
            ax.axvline(selected, color="tab:green", alpha=0.4)
    fig.suptitle("layer scan")
    return save_figure(fig, path)


def _grid(grid: dict[str, Any]) -> tuple[list[Any], list[Any], dict[tuple[Any, float], dict[str, Any]]]:
    cells = {(c.get("layer"), _num(c.get("multiplier"))): c for c in grid.get("cells") or []}
    layers = list(grid.get("layers") or dict.fromkeys(k[0] for k in cells))
    mults = list(grid.get("multipliers") or sorted({k[1] for k in cells}))
    return layers, mults, cells


def _draw_robustness(grid: dict[str, Any], path: Path, title: str) -> Any:
    try:
        from reptune.reporting.heatmaps import plot_robustness
    except ImportError:
        return _fallback_robustness(grid, path, title)
    try:
        return plot_robustness(grid, path, title)
    except Exception as exc:  # noqa: BLE001  their figure failing must not lose the report: draw the simple one
        warnings.warn(f"plot_robustness failed ({exc!r}); using the simple heatmap", stacklevel=2)
        return _fallback_robustness(grid, path, title)


def _draw_projection(items: list[dict[str, Any]], path: Path, title: str) -> Any:
    try:
        from reptune.reporting.heatmaps import plot_projection
    except ImportError:
        return _fallback_projection(items, path, title)
    try:
        return plot_projection(items, path, title)
    except Exception as exc:  # noqa: BLE001  see _draw_robustness
        warnings.warn(f"plot_projection failed ({exc!r}); using the simple heatmap", stacklevel=2)
        return _fallback_projection(items, path, title)


def _fallback_robustness(grid: dict[str, Any], path: Path, title: str) -> Path:
    import numpy as np

    from reptune.reporting import save_figure

    plt = _pyplot()
    layers, mults, cells = _grid(grid)
    mat = np.full((max(1, len(layers)), max(1, len(mults))), np.nan)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(mults) + 2), max(3.0, 0.35 * len(layers) + 1.5)))
    for i, layer in enumerate(layers):
        for j, mult in enumerate(mults):
            cell = cells.get((layer, float(mult)))
            if cell is not None and cell.get("value") is not None:
                mat[i, j] = cell["value"]
            if cell is not None and cell.get("degenerate"):
                ax.text(j, i, "x", ha="center", va="center", color="red", fontsize=12, fontweight="bold")
    image = ax.imshow(mat, aspect="auto", cmap="viridis", origin="lower")
    fig.colorbar(image, ax=ax, label=_mpl(grid.get("metric", "value")))
    ax.set_xticks(range(len(mults)))
    ax.set_xticklabels([fmt(m) for m in mults], fontsize=8)
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels([fmt(layer) for layer in layers], fontsize=8)
    ax.set_xlabel("multiplier")
    ax.set_ylabel("layer")
    ax.set_title(_mpl(title))
    return save_figure(fig, path)


def _fallback_projection(items: list[dict[str, Any]], path: Path, title: str) -> Path:
    import numpy as np

    from reptune.reporting import save_figure

    plt = _pyplot()
    items = items[:6]
    fig, axes = plt.subplots(len(items), 1, figsize=(9.0, 2.6 * len(items)), squeeze=False)
    for ax, item in zip(axes[:, 0], items):
        tokens, layers = list(item.get("tokens") or []), list(item.get("layers") or [])
        mat = np.array(item.get("cosine") or [[np.nan]], dtype=float)
        if mat.ndim == 2 and mat.shape == (len(tokens), len(layers)) and len(tokens) != len(layers):
            mat = mat.T  # tokens x layers -> layers x tokens
        bound = float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0
        image = ax.imshow(mat, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower")
        fig.colorbar(image, ax=ax, label="cosine")
        if len(tokens) == mat.shape[1]:
            ax.set_xticks(range(len(tokens)))
            ax.set_xticklabels([_mpl(_short(t, 12)) for t in tokens], rotation=60, fontsize=7)
        if len(layers) == mat.shape[0]:
            ax.set_yticks(range(len(layers)))
            ax.set_yticklabels([fmt(layer) for layer in layers], fontsize=7)
        ax.set_ylabel("layer")
        ax.set_title(_mpl(_short(item.get("prompt", ""), 90)), fontsize=8)
    fig.suptitle(_mpl(title))
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- renderers

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(text: str) -> str:
    """Plain text for Markdown: anything that could open an HTML tag is escaped, one line."""
    return _TAG_START.sub("&lt;", " ".join(str(text).splitlines()))


def _md_code(text: str) -> str:
    text = " ".join(str(text).splitlines())
    ticks = "`"
    while ticks in text:
        ticks += "`"
    pad = " " if text.startswith("`") or text.endswith("`") or ticks != "`" else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _md_spans(spans: list[Span], cell: bool = False) -> str:
    out = []
    for style, text in spans:
        if style == "c":
            piece = _md_code(text)
        elif style == "b":
            piece = f"**{_md_text(text.strip())}**" if text.strip() else ""
        elif style == "i":
            piece = f"*{_md_text(text.strip())}*" if text.strip() else ""
        else:
            piece = _md_text(text)
        out.append(piece.replace("|", "\\|") if cell else piece)
    return "".join(out)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|")


def _to_markdown(blocks: list[Any], failed: dict[str, str] | None = None) -> str:
    failed = failed or {}
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append("#" * block.level + " " + _md_text(block.text))
        elif isinstance(block, _Para):
            parts.append(_md_spans(block.spans))
        elif isinstance(block, _List):
            parts.append("\n".join("- " + _md_spans(item) for item in block.items))
        elif isinstance(block, _Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        elif isinstance(block, _Figure):
            if block.rel in failed:
                parts.append(f"*Figure {_md_code(block.rel)} could not be drawn: {_md_text(failed[block.rel])}*")
            else:
                parts.append(f"![{_md_text(block.caption).replace(']', ')')}]({block.rel})")
        elif isinstance(block, _Code):
            fence = "```"
            while fence in block.text:
                fence += "`"
            parts.append(f"{fence}{block.lang}\n{block.text}\n{fence}")
    return "\n\n".join(parts) + "\n"


def render_markdown(results: dict[str, Any]) -> str:
    """The report as Markdown (pure: figures are referenced as ``figures/NAME.png``, not drawn)."""
    return _to_markdown(_plan(results).blocks)


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:right;white-space:nowrap}th{background:#f6f8fa}
td:first-child,th:first-child{text-align:left}
code{background:#f6f8fa;padding:.1em .3em;border-radius:4px;font-size:.9em}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;border-radius:6px}pre code{padding:0}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#57606a;font-size:.85em}
.missing{color:#cf222e}
""".strip()


def _html_spans(spans: list[Span]) -> str:
    tags = {"b": "strong", "c": "code", "i": "em"}
    return "".join(f"<{tags[s]}>{html.escape(t)}</{tags[s]}>" if s in tags else html.escape(t) for s, t in spans)


def _to_html(blocks: list[Any], run_dir: Path, title: str, failed: dict[str, str]) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            body.append(f'<h{block.level} id="{_slug(block.text).lower()}">{html.escape(block.text)}</h{block.level}>')
        elif isinstance(block, _Para):
            body.append(f"<p>{_html_spans(block.spans)}</p>")
        elif isinstance(block, _List):
            body.append("<ul>\n" + "\n".join(f"<li>{_html_spans(item)}</li>" for item in block.items) + "\n</ul>")
        elif isinstance(block, _Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>")
        elif isinstance(block, _Figure):
            png = run_dir / block.rel
            if block.rel in failed or not png.is_file():
                reason = failed.get(block.rel, "file missing")
                body.append(f'<p class="missing">Figure {html.escape(block.rel)} could not be drawn: {html.escape(reason)}</p>')
                continue
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            caption = html.escape(block.caption)
            body.append(f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>')
        elif isinstance(block, _Code):
            body.append(f'<pre><code class="language-{html.escape(block.lang)}">{html.escape(block.text)}</code></pre>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------- entry point


# the JSON type of the top-level entries the report reads (null is allowed for each)
_RESULT_SHAPES: dict[str, type] = {
    "model": dict, "config": dict, "seeds": list, "data": dict, "tasks": list, "skipped": list, "vector": dict,
    "sweep": dict, "training": dict, "conditions": list, "scores": dict, "eval_files": dict, "comparisons": list,
    "robustness": dict, "projection": dict, "representation": list, "claims": list, "findings": list,
    "headline": dict, "timings": dict, "versions": dict,
}
_LIST_OF_OBJECTS = ("skipped", "conditions", "comparisons", "representation", "claims")


def _check_shape(results: dict[str, Any], path: Path) -> None:
    """One-line ReptuneError when a (hand-edited) results file has an entry of the wrong JSON type."""
    names = {dict: "an object", list: "a list"}
    for key, kind in _RESULT_SHAPES.items():
        value = results.get(key)
        if value is not None and not isinstance(value, kind):
            raise ReptuneError(f"{path}: {key!r} must be {names[kind]}, got {type(value).__name__}; rebuild the file with `reptune run`")
    for key in _LIST_OF_OBJECTS:
        bad = next((i for i, item in enumerate(results.get(key) or []) if not isinstance(item, dict)), None)
        if bad is not None:
            raise ReptuneError(f"{path}: {key}[{bad}] must be an object; rebuild the file with `reptune run`")


def load_results(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``run_dir/results.json`` (format and the type of every entry the report reads)."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ReptuneError(f"{path}: not found (write it with `reptune run EXPERIMENT.yaml -o {run_dir}`)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReptuneError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise ReptuneError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(results, dict) or not str(results.get("format", "")).startswith(FORMAT_PREFIX):
        found = results.get("format") if isinstance(results, dict) else type(results).__name__
        raise ReptuneError(f"{path}: not a reptune experiment results file (format {found!r}, expected {FORMAT_PREFIX}N)")
    _check_shape(results, path)
    return results


def write_report(run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Draw the figures and write ``report.md`` and the self-contained ``report.html`` of a run.

    Returns ``{"md": ..., "html": ..., "figure:NAME": ...}``. A figure that fails to draw is
    reported in both documents (and warned about) instead of aborting the report.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    try:
        plan = _plan(results)
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as exc:  # a hand-edited entry deeper down
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
        raise ReptuneError(f"{run_dir / 'results.json'}: unexpected content ({detail}); rebuild the file with `reptune run`") from exc
    (run_dir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for job in plan.jobs:
        target = run_dir / job.rel
        try:
            job.draw(target)
        except Exception as exc:  # noqa: BLE001  one broken figure must not cost the whole report
            failed[job.rel] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"{target}: figure failed: {exc!r}", stacklevel=2)
            import matplotlib.pyplot as plt

            plt.close("all")
            continue
        paths["figure:" + Path(job.rel).stem] = target
    title = f"reptune experiment: {results.get('name') or run_dir.name}"
    paths["md"] = run_dir / "report.md"
    paths["html"] = run_dir / "report.html"
    write_text_atomic(paths["md"], _to_markdown(plan.blocks, failed))
    write_text_atomic(paths["html"], _to_html(plan.blocks, run_dir, title, failed))
    return paths


__all__ = ["fmt", "fmt_ci", "fmt_p", "load_results", "render_markdown", "write_report"]
