"""The training sections: loss curves and one row per trained model; what each loss term trains."""

from __future__ import annotations

from typing import Any

from reptune.reporting.document import Heading, Plan, Table, fmt, short
from reptune.reporting.figures import plot_training
from reptune.reporting.schema import ExperimentResults, TrainingRun


def _run_row(variant: str, seed: Any, info: TrainingRun) -> list[str]:
    curves = info.loss_curves or {}
    total = curves.get("total") or []
    val = curves.get("val_loss") or []
    metrics = info.metrics or {}
    return [
        variant,
        str(seed),
        str(info.preset or "-"),
        fmt(info.steps),
        fmt(info.best_step),
        fmt(total[-1] if total else None),
        fmt(min(val) if val else None),
        fmt(info.elapsed_s),
        fmt((metrics.get("final_val") or {}).get("cos")),
        str(metrics.get("stopped") or "-"),
    ]


def section_training(plan: Plan, results: ExperimentResults) -> None:
    """The loss curves of every variant and seed, and a table of the runs."""
    training = results.training or {}
    runs = [(variant, seed, info or TrainingRun()) for variant, by_seed in training.items() for seed, info in (by_seed or {}).items()]
    if not plan.section("Training", runs):
        return
    plan.para("Every loss term per step, one panel per variant (line style = seed); dots = validation loss; dotted line = best step.")
    plan.figure("training-loss", "training loss curves", lambda path: plot_training(training, path))
    rows = [_run_row(variant, seed, info) for variant, seed, info in runs]
    plan.add(Table(["variant", "seed", "preset", "steps", "best step", "final total loss", "best val loss", "time (s)", "val cos", "stopped"], rows))


def section_training_plan(plan: Plan, results: ExperimentResults) -> None:
    """Per variant: which loss term updates which tensors, at which layers and positions (first seed)."""
    rows = []
    for variant, by_seed in (results.training or {}).items():
        info = next(iter((by_seed or {}).values()), None) or TrainingRun()
        for term, spec in ((info.plan or {}).get("terms") or {}).items():
            updates = spec.get("updates")
            if isinstance(updates, dict):
                updates = "; ".join(f"{name} ({blocks})" for name, blocks in updates.items())
            rows.append([variant, term, fmt(spec.get("weight")), str(spec.get("loss") or "-"), str(spec.get("layers") or "-"),
                         str(spec.get("position") or spec.get("positions") or "-"), short(updates or "-", 160)])
    if rows:
        plan.add(Heading(3, "What each loss term trains"))
        plan.para("Resolved on the model (from each variant's tune_config.json): the loss terms, their weights, the layers and positions they read, and the tensors they update (blocks in brackets).")
        plan.add(Table(["variant", "term", "weight", "loss", "layers", "positions", "updates"], rows))
