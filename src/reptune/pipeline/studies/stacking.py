"""Stacking: does the vector add to prompting, and to fine-tuning? (config section ``stacking``)

A factorial design on the same test items of the headline task (paired):

* prompt: ``none`` (no system message: what the main conditions saw; a chat template with a default
  system prompt, as SmolLM2's ChatML, inserts its own) / ``honest`` (``stacking.system_prompt`` as
  the system message, replacing any default);
* steering: 0 / ``m`` (``stacking.multiplier``, ``auto`` = the sweep's ``m+``) at the sweep's layer;
* weights: untuned / each tuned variant of ``stacking.variants`` at ``stacking.seeds``.

Cells that coincide with a main condition (no prompt: untuned, steered ``+v`` at ``m+``, a tuned
variant, and any main counter-steered condition that steers with the training vector at ``m``) are
read from the main run's evaluation files (``host.evals``), restricted to the factorial's items,
never evaluated again; the others are evaluated as cached stages ``stacking:<cell>`` through
``host.evaluate_condition`` with ``task_options={"system": ...}`` and/or steering. The items are the
first ``stacking.limit`` of the main conditions' headline items (all of them by default).
The statistics and the claims are in :mod:`reptune.pipeline.studies.stacking_analysis`.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from typing import Any

from reptune.errors import ReptuneError
from reptune.evaluation.registry import TaskResult
from reptune.models import ModelHandle
from reptune.pipeline.claims import ClaimSettings
from reptune.pipeline.studies.base import StudyHost
from reptune.pipeline.studies.stacking_analysis import (
    UNTUNED,
    Cell,
    CellData,
    cell_data,
    cell_rows,
    interactions,
    main_effects,
    plan_cells,
    stacking_claims,
    steering_effects,
)

NAME = "stacking"


def enabled(config: Any) -> bool:
    return bool(config.stacking.enabled)


def reads(config: Any) -> set[tuple[str, int]]:
    """The main run's (variant, seed) models and evaluations this study reads."""
    return {(name, seed) for name in config.stacking.variants for seed in config.stacking_seeds}


def cost(config: Any, unit: dict[str, float]) -> float:
    """The cells evaluated anew (the prompted ones, and each tuned model steered), for the run's ETA."""
    s = config.stacking
    return (2 + 3 * len(s.variants) * len(config.stacking_seeds)) * unit["eval_task"]


def check(host: StudyHost) -> None:
    """Before any model work: the headline task takes a system prompt, and ``limit`` fits the main conditions' items."""
    from reptune.evaluation.registry import task_class

    config, data, headline = host.config, host.data, host.headline
    cls = task_class(headline)
    if cls is None or "system" not in cls.defaults:
        raise ReptuneError(f"stacking: the headline task {headline} takes no system prompt (facts-twin, facts-word and facts-ab do)")
    twins = headline == "facts-twin" and data.get("pairs")
    n_test = int(data["pairs"]["test"] if twins else data["splits"]["test"])
    main = config.evaluation.limits.get(headline, config.evaluation.limit)
    available = n_test if main is None else min(n_test, int(main))
    limit = config.stacking.limit
    if limit is not None and limit > available:
        where = f"the test split has {n_test} {'twins' if twins else 'statements'}" + (f" and the main conditions were evaluated on {main}" if main is not None else "")
        raise ReptuneError(f"stacking.limit {limit} is more than the {available} test items the factorial can pair ({where})")


# ----------------------------------------------------------------------------- the cells


def _steer_key(steering: dict[str, Any] | None) -> tuple[int, float, str] | None:
    return None if not steering else (int(steering["layer"]), float(steering["multiplier"]), str(steering.get("vector", "training")))


def _restrict(result: TaskResult, ids: list[str]) -> TaskResult | None:
    """``result`` with only the factorial's items, in their order; ``None`` if it lacks one."""
    by_id = {r["id"]: r for r in result.records}
    if any(i not in by_id for i in ids):
        return None
    return dataclasses.replace(result, records=[by_id[i] for i in ids])


def _load(host: StudyHost, rel: str) -> TaskResult:
    from reptune.evaluation import load_eval_results

    tasks = load_eval_results(host.run_dir / rel).tasks
    if host.headline not in tasks:
        raise ReptuneError(f"stacking: {rel} holds no {host.headline} results")
    return tasks[host.headline]


def _from_main(host: StudyHost, cell: Cell, steering: dict[str, Any], ids: list[str]) -> tuple[TaskResult, dict[str, Any]] | None:
    """The main condition equal to ``cell`` (no prompt, same weights and seed, same steering), restricted to ``ids``."""
    if cell.prompt != "none":
        return None
    variant = None if cell.weights == UNTUNED else cell.weights
    want = _steer_key(steering if cell.steered else None)
    seed = str(host.config.seeds[0] if cell.seed is None else cell.seed)
    for cond in host.conditions:
        if cond.get("variant") != variant or _steer_key(cond.get("steering")) != want:
            continue
        out = host.evals.get(cond["id"], {}).get(seed)
        restricted = _restrict(_load(host, out["results"]), ids) if out else None
        if restricted is not None:
            return restricted, {"source": "main", "condition": cond["id"], "file": out["results"]}  # type: ignore[index]
    return None


def _evaluate(host: StudyHost, cell: Cell, steering: dict[str, Any], ids: list[str], trained: tuple[int, str] | None,
              loader: Callable[[], ModelHandle]) -> tuple[TaskResult, dict[str, Any]]:
    """Evaluate ``cell`` as the cached stage ``stacking:<cell>`` on the first ``len(ids)`` test items."""
    name = f"{NAME}:{cell.id}"
    cond = {"id": name, "label": cell.id, "kind": "study", "variant": None if cell.weights == UNTUNED else cell.weights,
            "steering": steering if cell.steered else None, "stage": name, "tasks": [host.headline], "limit": len(ids),
            "task_options": {"system": host.config.stacking.system_prompt} if cell.prompt == "honest" else {}, "representation": False}
    out = host.evaluate_condition(cond, trained, [host.headline], loader)
    result = _load(host, out["results"])
    if [r["id"] for r in result.records] != ids:  # the first len(ids) test items, as the main conditions' first ones
        raise ReptuneError(f"stacking: {name} was not evaluated on the factorial's items")
    return result, {"source": "study", "condition": name, "file": out["results"]}


def _release(held: dict[str, Any]) -> None:
    handle = held.pop("handle", None)
    if handle is not None:
        handle.model = None
    gc.collect()


def _gather(host: StudyHost, cells: list[Cell], steering: dict[str, Any], ids: list[str]) -> tuple[dict[Cell, TaskResult], dict[Cell, dict[str, Any]]]:
    """Every cell's results on ``ids``: read from the main run where one equals it, else evaluated (one model loaded at a time)."""
    results: dict[Cell, TaskResult] = {}
    sources: dict[Cell, dict[str, Any]] = {}
    for level in host.walk(list(dict.fromkeys(cell.level for cell in cells))):
        mine = [cell for cell in cells if cell.level == level]
        held: dict[str, Any] = {}
        first = mine[0]
        if first.weights == UNTUNED:
            trained, loader = None, host.base
        else:
            key = f"train:{first.weights}:s{first.seed}"
            trained, loader = (int(first.seed), host.stage_key(key)), host.tuned_loader(host.training[first.weights][str(first.seed)], held)  # type: ignore[arg-type]
        for cell in mine:
            got = _from_main(host, cell, steering, ids) or _evaluate(host, cell, steering, ids, trained, loader)
            results[cell], sources[cell] = got
        if first.weights == UNTUNED:
            host.release_base()
        _release(held)
    return results, sources


def _item_ids(host: StudyHost) -> list[str]:
    """The factorial's items: the first ``stacking.limit`` of the untuned model's headline items."""
    out = host.evals.get("untuned", {}).get(str(host.config.seeds[0]))
    if out is None:
        raise ReptuneError("stacking: the untuned condition was not evaluated")
    ids = [r["id"] for r in _load(host, out["results"]).records]
    limit = host.config.stacking.limit
    return ids if limit is None else ids[:limit]


def _prompts(host: StudyHost) -> dict[str, str]:
    """The first item's rendered prompt under each prompt level (what ``none`` means for this model's template).

    A cached stage, so a re-run whose cells are all cached does not load the model for it.
    """
    from reptune.evaluation import get_task

    config = host.config
    own = config.evaluation.options.get(host.headline, {})
    options = {**own, "data": str(host.split_path("test"))}
    inputs = {"model": config.model, "revision": config.revision, "data": host.stage_key("data"), "task": host.headline, "options": own,
              "system": config.stacking.system_prompt}

    def work(folder: Any) -> dict[str, Any]:
        handle = host.base()
        return {level: get_task(host.headline, **options, **system).load_items(handle, 1)[0][0]["prompt"]
                for level, system in (("none", {}), ("honest", {"system": config.stacking.system_prompt}))}

    return host.stage(f"{NAME}:prompts", inputs, work, 0.1)


def run(host: StudyHost) -> dict[str, Any]:
    """The factorial: every cell on the same items, the effects and interactions, and the two claims."""
    config = host.config
    s = config.stacking
    multiplier = host.m_plus if s.multiplier == "auto" else float(s.multiplier)
    steering = {"layer": host.layer, "multiplier": multiplier}
    seeds = config.stacking_seeds
    ids = _item_ids(host)
    prompts = _prompts(host)
    cells = plan_cells(s.variants, seeds)
    results, sources = _gather(host, cells, steering, ids)
    settings = ClaimSettings.from_thresholds(config.claims)
    data: dict[Cell, CellData] = {cell: cell_data(results[cell]) for cell in cells}
    section: dict[str, Any] = {
        "task": host.headline, "metric": "accuracy", "continuous": results[cells[0]].continuous_key, "split": "test", "n": len(ids),
        "layer": host.layer, "multiplier": multiplier, "multiplier_source": "the sweep's m+" if s.multiplier == "auto" else "stacking.multiplier",
        "system_prompt": s.system_prompt, "prompts": prompts, "variants": list(s.variants), "seeds": seeds, "claim_variant": s.judged_variant,
        "cells": cell_rows(cells, data, sources, settings, config.sweep.max_nll_rise),
        "steering_effects": steering_effects(cells, data, seeds, settings),
        "interactions": interactions(cells, data, seeds, settings),
        "main_effects": main_effects(cells, data, seeds, settings),
    }
    section["claims"] = stacking_claims(section, host.headline, s.judged_variant, seeds, config.seeds[0])
    return section
