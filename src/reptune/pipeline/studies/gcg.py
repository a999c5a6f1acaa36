"""GCG attacks: do tuned models resist adversarial suffixes? (config section ``gcg``)

Every model of ``gcg.models`` (``untuned``, or a variant's name at the study's seed) is attacked by
the ``gcg`` evaluation task (nanogcg, :mod:`reptune.evaluation.tasks.gcg`) on the same first
``gcg.limit`` test statements (twins with ``format: twin``), asked in ``gcg.format``, with the same budget (``steps`` x
``search_width`` x ``suffix_length``, ``topk``, ``attack_seed``): a cached evaluation stage
``gcg:<model>`` each, resumable item by item (the task checkpoints every item). With
``gcg.transfer`` the suffixes found on the untuned model are then applied, item by item, to each
tuned model (the task's ``suffixes=`` option): stage ``gcg:<model>+transfer``, whose inputs hold
the untuned attack's stage key, so a new untuned attack re-runs the transfers.

The statistics and the claim (``resists-gcg``) are in :mod:`reptune.pipeline.studies.gcg_analysis`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from reptune.errors import ReptuneError
from reptune.evaluation.registry import TaskResult
from reptune.models import ModelHandle
from reptune.pipeline.claims import ClaimSettings
from reptune.pipeline.studies.base import StudyHost
from reptune.pipeline.studies.gcg_analysis import UNTUNED, comparisons, gcg_claim, model_row

NAME = "gcg"
TASK = "gcg"
# one candidate forward of the embedded model on a ~70-token prompt, in units of a main evaluation task
# (measured: 0.14 s bf16 / 0.24 s fp32 a candidate on one core, where unit["eval_task"] = 12 s)
_CANDIDATE = 0.2 / 12.0


def enabled(config: Any) -> bool:
    return bool(config.gcg.enabled)


def reads(config: Any) -> set[tuple[str, int]]:
    """The main run's (variant, seed) models this study reads (attacked at ``gcg.seed``)."""
    return {(name, config.gcg_seed) for name in config.gcg.tuned}


def cost(config: Any, unit: dict[str, float]) -> float:
    """Rough cost for the ETA: per model and item, ``steps`` x (``search_width`` + 3) candidate forwards
    (3: nanogcg's gradient pass), and two scoring forwards per transferred item."""
    s = config.gcg
    candidate = _CANDIDATE * unit["eval_task"]
    attack = len(s.models) * s.limit * s.steps * (s.search_width + 3) * candidate
    transfer = len(s.tuned) * s.limit * 2 * candidate if s.transfer else 0.0
    return attack + transfer


def check(host: StudyHost) -> None:
    """Before any model work: nanogcg is installed (the task's preflight) and ``limit`` fits the test split's statements."""
    from reptune.evaluation import get_task

    get_task(TASK, **{**_options(host), "data": str(host.split_path("test"))}).preflight()
    if host.config.gcg.format == "twin":  # the limit counts twins
        n_twins = int((host.data.get("pairs") or {}).get("test") or 0)
        if not host.data.get("twins"):
            raise ReptuneError("gcg.format twin needs twin data (statements with pair ids, as the shipped honesty statements)")
        if host.config.gcg.limit > n_twins:
            raise ReptuneError(f"gcg.limit {host.config.gcg.limit} is more than the {n_twins} twins of the test split")
        return
    n_test = int(host.data["splits"]["test"])
    if host.config.gcg.limit > n_test:
        raise ReptuneError(f"gcg.limit {host.config.gcg.limit} is more than the {n_test} statements of the test split")


# ----------------------------------------------------------------------------- the attacks


def _options(host: StudyHost) -> dict[str, Any]:
    """The gcg task's options: the run's test statements and the study's budget, the same for every model."""
    s = host.config.gcg
    return {"data": str(host.split_path("test").relative_to(host.run_dir)), "format": s.format, "steps": s.steps, "search_width": s.search_width,
            "suffix_length": s.suffix_length, "topk": s.topk, "n_replace": 1, "early_stop": s.early_stop, "attack_seed": s.attack_seed}


def _load(host: StudyHost, rel: str) -> TaskResult:
    from reptune.evaluation import load_eval_results

    tasks = load_eval_results(host.run_dir / rel).tasks
    if TASK not in tasks:
        raise ReptuneError(f"gcg: {rel} holds no gcg results")
    return tasks[TASK]


def _evaluate(host: StudyHost, name: str, variant: str | None, options: dict[str, Any], trained: tuple[int, str] | None,
              loader: Callable[[], ModelHandle], **extra: Any) -> dict[str, Any]:
    """One attack (or transfer) as the cached stage ``gcg:<name>``: ``{"result", "file", "stage"}``."""
    stage = f"{NAME}:{name}"
    cond = {"id": stage, "label": name, "kind": "study", "variant": variant, "steering": None, "stage": stage, "tasks": [TASK],
            "limit": host.config.gcg.limit, "task_options": options, "run_paths": [key for key in ("data", "suffixes") if key in options],
            "representation": False, **extra}
    out = host.evaluate_condition(cond, trained, [TASK], loader)
    return {"result": _load(host, out["results"]), "file": out["results"], "stage": stage}


def _release(held: dict[str, Any]) -> None:
    handle = held.pop("handle", None)
    if handle is not None:
        handle.model = None
    gc.collect()


def _attack_untuned(host: StudyHost, options: dict[str, Any]) -> dict[str, Any]:
    out = _evaluate(host, UNTUNED, None, options, None, host.base)
    host.release_base()
    return out


def _attack_tuned(host: StudyHost, variant: str, options: dict[str, Any], source: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The direct attack on ``variant`` (at the study's seed) and, given the untuned attack ``source``, the transfer."""
    seed = host.config.gcg_seed
    held: dict[str, Any] = {}
    trained = (seed, host.stage_key(f"train:{variant}:s{seed}"))
    loader = host.tuned_loader(host.training[variant][str(seed)], held)
    level = f"{variant}:s{seed}"
    runs = {"direct": _evaluate(host, level, variant, options, trained, loader)}
    if source is not None:  # the untuned model's suffixes, item by item; its stage key ties this stage to that attack
        transfer = {**options, "suffixes": source["file"]}  # relative to the run folder, as "data"
        runs["transfer"] = _evaluate(host, f"{level}+transfer", variant, transfer, trained, loader, suffix_stage=host.stage_key(source["stage"]))
    _release(held)
    return runs


def _attacks(host: StudyHost) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {"direct": ..., "transfer"?: ...}}``, the untuned model first (its suffixes feed the transfers)."""
    s = host.config.gcg
    options = _options(host)
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    source = None
    if UNTUNED in s.models:
        runs[UNTUNED] = {"direct": _attack_untuned(host, options)}
        source = runs[UNTUNED]["direct"] if s.transfer else None
    for variant in s.tuned:
        runs[variant] = _attack_tuned(host, variant, options, source)
    return runs


def _same_items(runs: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The items' ids, which every attack must share (paired comparisons)."""
    ids: list[str] | None = None
    for model, modes in runs.items():
        for mode, run in modes.items():
            mine = [r["id"] for r in run["result"].records]
            if ids is None:
                ids = mine
            elif mine != ids:
                raise ReptuneError(f"gcg: the {mode} attack on {model} was not run on the same items as the others")
    return ids or []


def run(host: StudyHost) -> dict[str, Any]:
    """Attack every model, transfer the untuned suffixes, the per-model rows, the paired comparisons and the claim."""
    s = host.config.gcg
    settings = ClaimSettings.from_thresholds(host.config.claims)
    runs = _attacks(host)
    ids = _same_items(runs)
    seed = host.config.gcg_seed
    rows = [model_row(model, None if model == UNTUNED else seed, mode, run["result"], run["file"], settings)
            for model, modes in runs.items() for mode, run in modes.items()]
    budget = {key: getattr(s, key) for key in ("steps", "search_width", "suffix_length", "topk", "early_stop", "attack_seed")}
    section: dict[str, Any] = {
        "task": TASK, "format": s.format, "split": "test", "n": len(ids), "budget": budget, "seed": seed, "models": list(s.models),
        "baseline": s.baseline, "candidate": s.candidate, "measure": s.measure, "transfer": s.transfer, "rows": rows,
        "comparisons": comparisons(runs, s.baseline, s.candidate, settings),
    }
    section["claims"] = [gcg_claim(section, seed, s.measure)]
    return section
