"""The stacking study's statistics: cells, paired effects, interactions and its two claims.

Everything here works on per-item arrays of the factorial's cells, all on the same items in the
same order (paired): ``correct`` (0/1) and ``margin`` (the task's continuous score, e.g. nats of
the true twin over the false one). Effects are differences ``b - a`` per item; an interaction of a
factor F with steering S is the per-item difference of differences
``(F+S - F) - (S - base)``: how much more (> 0, super-additive) or less (< 0, sub-additive)
steering adds when F is on than when it is off. Every estimate carries a paired bootstrap CI;
binary effects are tested by McNemar, interactions and margin differences by the paired
sign-flip test. Only the two claims go into the run's Holm family (see
:func:`stacking_claims`); the other rows are estimates with CIs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reptune.evaluation.registry import TaskResult
from reptune.evaluation.statistics import (
    bootstrap_ci,
    mcnemar_mde,
    mcnemar_min_p,
    mean_mde,
    mean_metric,
    paired_bootstrap_diff,
    paired_mcnemar,
    proportion_metric,
    sign_flip_min_p,
    sign_flip_test,
)
from reptune.pipeline.claims import ClaimSettings, claim_spec, degeneracy, new_problems
from reptune.reporting.document import fmt

PROMPTS = ("none", "honest")
UNTUNED = "untuned"


@dataclass(frozen=True)
class Cell:
    """One cell of the factorial: weights (``untuned`` or a tuned variant at ``seed``) x prompt x steering."""

    weights: str
    seed: int | None
    prompt: str  # "none" (no system message) or "honest" (the study's system prompt)
    steered: bool

    @property
    def level(self) -> str:
        """The weights level: ``untuned`` or ``<variant>:s<seed>``."""
        return self.weights if self.seed is None else f"{self.weights}:s{self.seed}"

    @property
    def id(self) -> str:
        return self.level + ("+prompt" if self.prompt == "honest" else "") + ("+steer" if self.steered else "")

    def other(self, *, prompt: str | None = None, steered: bool | None = None, weights: str | None = None, seed: int | None = -1) -> Cell:
        """This cell with some factors changed (``seed=-1``: keep it)."""
        return Cell(weights or self.weights, self.seed if seed == -1 else seed, prompt or self.prompt, self.steered if steered is None else steered)


def plan_cells(variants: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """The 4 untuned cells, then the 4 cells of every variant x seed (prompt x steering)."""
    grid = [(prompt, steered) for prompt in PROMPTS for steered in (False, True)]
    cells = [Cell(UNTUNED, None, prompt, steered) for prompt, steered in grid]
    for seed in seeds:
        cells += [Cell(variant, seed, prompt, steered) for variant in variants for prompt, steered in grid]
    return cells


@dataclass
class CellData:
    """A cell's per-item arrays (the factorial's items, in order) and its records (for degeneracy)."""

    correct: np.ndarray  # [n] float64 0/1
    margin: np.ndarray | None  # [n] float64, the task's continuous score; None when it has none
    records: list[dict[str, Any]]
    nll: float | None  # mean NLL per token (facts-twin's degeneration check), else None


def cell_data(result: TaskResult) -> CellData:
    """Arrays of a (restricted) task result."""
    records = result.records
    correct = np.array([float(bool(r[result.binary_key or "correct"])) for r in records], dtype=np.float64)
    key = result.continuous_key
    margin = np.array([float(r[key]) for r in records], dtype=np.float64) if key and all(r.get(key) is not None for r in records) else None
    nlls = [r["nll_per_token"] for r in records if r.get("nll_per_token") is not None]
    return CellData(correct, margin, records, float(np.mean(nlls)) if nlls else None)


def cell_rows(cells: Sequence[Cell], data: dict[Cell, CellData], sources: dict[Cell, dict[str, Any]], settings: ClaimSettings,
              max_nll_rise: float) -> list[dict[str, Any]]:
    """One row per cell: accuracy (Wilson CI), mean margin (bootstrap CI), NLL, degeneracy and where it came from.

    A cell is degenerate when :func:`~reptune.pipeline.claims.degeneracy` says so, or when its mean
    NLL per token is more than ``max_nll_rise`` nats above the untuned cell's (the sweep's rule).
    """
    base = data[Cell(UNTUNED, None, "none", False)].nll
    rows = []
    for cell in cells:
        d = data[cell]
        reason = degeneracy(d.records, settings.degenerate_share)
        if reason is None and d.nll is not None and base is not None and d.nll - base > max_nll_rise:
            reason = f"mean NLL per token {d.nll:.3f} is {d.nll - base:.3f} nats above the untuned model's (limit {max_nll_rise:g})"
        rows.append({
            "cell": cell.id, "weights": cell.weights, "seed": cell.seed, "prompt": cell.prompt, "steered": cell.steered, "n": len(d.correct),
            "accuracy": proportion_metric(int(d.correct.sum()), len(d.correct)),
            "margin": mean_metric(d.margin, seed=settings.seed) if d.margin is not None else None,
            "mean_nll": d.nll, "degenerate": reason, **sources[cell],
        })
    return rows


# ----------------------------------------------------------------------------- paired estimates


def _margin_diff(a: np.ndarray | None, b: np.ndarray | None, settings: ClaimSettings, seed: int) -> dict[str, Any] | None:
    if a is None or b is None:
        return None
    diff, low, high = paired_bootstrap_diff(a, b, n_resamples=settings.n_resamples, seed=settings.seed + seed)
    return {"effect": diff, "ci_low": low, "ci_high": high, "p_value": sign_flip_test(b - a, seed=settings.seed + seed)}


def paired_effect(a: CellData, b: CellData, settings: ClaimSettings, seed: int) -> dict[str, Any]:
    """``b - a`` on the same items: accuracy (McNemar, paired bootstrap CI, MDE) and margin (bootstrap CI, sign-flip p)."""
    n = len(a.correct)
    test = paired_mcnemar(a.correct.astype(bool).tolist(), b.correct.astype(bool).tolist())
    diff, low, high = paired_bootstrap_diff(a.correct, b.correct, n_resamples=settings.n_resamples, seed=settings.seed + seed)
    return {"n": n, "a_value": float(a.correct.mean()) if n else math.nan, "b_value": float(b.correct.mean()) if n else math.nan,
            "effect": diff, "effect_ok": diff > 0, "ci_low": low, "ci_high": high, "p_value": test.pvalue, "method": f"McNemar ({test.method})",
            "discordant": test.b + test.c, "min_p": mcnemar_min_p(test.b + test.c),
            "mde": mcnemar_mde(n, test.b + test.c, alpha=settings.alpha, power=settings.power), "margin": _margin_diff(a.margin, b.margin, settings, seed)}


def _floored_sd(values: np.ndarray) -> float:
    """The per-item SD for an MDE, at least that of one item differing by 1 (``sqrt(1/n)``), as the paper's claims use."""
    n = len(values)
    sd = float(values.std(ddof=1)) if n > 1 else math.nan
    return max(sd, math.sqrt(1.0 / n)) if math.isfinite(sd) else math.sqrt(1.0 / max(n, 1))


def mean_estimate(values: np.ndarray, settings: ClaimSettings, seed: int) -> dict[str, Any]:
    """Mean of per-item values with a bootstrap CI, the sign-flip p and the MDE at this n."""
    low, high = bootstrap_ci(values, n_resamples=settings.n_resamples, seed=settings.seed + seed)
    n = len(values)
    return {"n": n, "effect": float(values.mean()) if n else math.nan, "ci_low": low, "ci_high": high,
            "p_value": sign_flip_test(values, seed=settings.seed + seed) if n else math.nan, "min_p": sign_flip_min_p(values),
            "mde": mean_mde(_floored_sd(values), n, alpha=settings.alpha, power=settings.power) if n else None}


def reading(estimate: dict[str, Any]) -> str:
    """Plain words for an interaction's CI: sub-additive (< 0), super-additive (> 0), or additive within it."""
    low, high = estimate.get("ci_low"), estimate.get("ci_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "no interval"
    if high < 0:
        return "sub-additive"
    if low > 0:
        return "super-additive"
    return "additive within the CI"


def interaction(base: CellData, steer: CellData, factor: CellData, both: CellData, settings: ClaimSettings, seed: int) -> dict[str, Any]:
    """``(both - factor) - (steer - base)`` per item, on correctness and (when present) the margin."""
    accuracy = mean_estimate((both.correct - factor.correct) - (steer.correct - base.correct), settings, seed)
    out = {**accuracy, "reading": reading(accuracy), "method": "paired sign-flip test on the per-item difference of differences"}
    if all(d.margin is not None for d in (base, steer, factor, both)):
        margin = mean_estimate((both.margin - factor.margin) - (steer.margin - base.margin), settings, seed)  # type: ignore[operator]
        out["margin"] = {**margin, "reading": reading(margin)}
    return out


# ----------------------------------------------------------------------------- the grid's rows


def _levels(cells: Sequence[Cell], seed: int) -> list[tuple[str, int | None]]:
    """The weights levels of one seed's grid: untuned, then each variant at ``seed``."""
    tuned = list(dict.fromkeys(c.weights for c in cells if c.seed == seed))
    return [(UNTUNED, None)] + [(w, seed) for w in tuned]


def steering_effects(cells: Sequence[Cell], data: dict[Cell, CellData], seeds: Sequence[int], settings: ClaimSettings) -> list[dict[str, Any]]:
    """The steering effect (steered - unsteered) under each prompt and each weights level (untuned once)."""
    rows = []
    for k, seed in enumerate(seeds):
        for weights, wseed in _levels(cells, seed)[(1 if k else 0):]:
            for prompt in PROMPTS:
                off = Cell(weights, wseed, prompt, False)
                rows.append({"weights": off.level, "prompt": prompt, "seed": seed if wseed is not None else None,
                             **paired_effect(data[off], data[off.other(steered=True)], settings, seed)})
    return rows


def interactions(cells: Sequence[Cell], data: dict[Cell, CellData], seeds: Sequence[int], settings: ClaimSettings) -> list[dict[str, Any]]:
    """prompt x steering at every weights level, and weights x steering for every tuned level under each prompt."""
    rows = []
    for k, seed in enumerate(seeds):
        levels = _levels(cells, seed)
        for weights, wseed in levels[(1 if k else 0):]:
            base = Cell(weights, wseed, "none", False)
            quad = [data[base], data[base.other(steered=True)], data[base.other(prompt="honest")], data[base.other(prompt="honest", steered=True)]]
            rows.append({"factor": "prompt", "at": f"weights {base.level}", "weights": base.level, "prompt": None, "seed": seed if wseed is not None else None,
                         **interaction(*quad, settings, seed)})
        for weights, wseed in levels[1:]:
            for prompt in PROMPTS:
                base = Cell(UNTUNED, None, prompt, False)
                tuned = Cell(weights, wseed, prompt, False)
                quad = [data[base], data[base.other(steered=True)], data[tuned], data[tuned.other(steered=True)]]
                rows.append({"factor": f"weights {tuned.level}", "at": f"prompt {prompt}", "weights": tuned.level, "prompt": prompt, "seed": seed,
                             **interaction(*quad, settings, seed)})
    return rows


def _averaged(pairs: list[tuple[CellData, CellData]], settings: ClaimSettings, seed: int) -> dict[str, Any]:
    """The mean over ``pairs`` of ``b - a`` per item (a main effect: averaged over the other factors' levels)."""
    out = mean_estimate(np.mean([b.correct - a.correct for a, b in pairs], axis=0), settings, seed)
    if all(a.margin is not None and b.margin is not None for a, b in pairs):
        out["margin"] = mean_estimate(np.mean([b.margin - a.margin for a, b in pairs], axis=0), settings, seed)  # type: ignore[operator]
    return out


def main_effects(cells: Sequence[Cell], data: dict[Cell, CellData], seeds: Sequence[int], settings: ClaimSettings) -> list[dict[str, Any]]:
    """Per seed: prompt, steering and each tuned variant's effect, each averaged over the other factors' levels."""
    rows = []
    for seed in seeds:
        levels = _levels(cells, seed)
        grid = [Cell(w, s, p, st) for w, s in levels for p in PROMPTS for st in (False, True)]
        prompt = [(data[c], data[c.other(prompt="honest")]) for c in grid if c.prompt == "none"]
        steer = [(data[c], data[c.other(steered=True)]) for c in grid if not c.steered]
        rows.append({"factor": "prompt", "contrast": "honest - none", "seed": seed, **_averaged(prompt, settings, seed)})
        rows.append({"factor": "steering", "contrast": "steered - unsteered", "seed": seed, **_averaged(steer, settings, seed)})
        for weights, wseed in levels[1:]:
            pairs = [(data[c], data[c.other(weights=weights, seed=wseed)]) for c in grid if c.weights == UNTUNED]
            rows.append({"factor": f"weights {weights}", "contrast": f"{weights}:s{wseed} - untuned", "seed": seed, **_averaged(pairs, settings, seed)})
    return rows


# ----------------------------------------------------------------------------- the claims

CLAIM_PROMPTING = "vector-adds-to-prompting"
CLAIM_TUNING = "vector-adds-to-tuning"
MDE_TEXT = ("a difference of {mde:.3f} in accuracy (share of all items; McNemar, Connor's approximation with the observed "
            "discordance rate) at n = {n}")


def _f(x: Any, spec: str = ".3f") -> str:
    return fmt(x, spec, nan="-")


def _effect_text(t: dict[str, Any]) -> str:
    margin = t.get("margin")
    text = (f"{_f(t['b_value'])} vs {_f(t['a_value'])} (difference {_f(t['effect'], '+.3f')} [95% CI {_f(t['ci_low'], '+.3f')}, "
            f"{_f(t['ci_high'], '+.3f')}], {t['discordant']} discordant of {t['n']} items)")
    if margin:
        text += f"; margin {_f(margin['effect'], '+.3f')} [{_f(margin['ci_low'], '+.3f')}, {_f(margin['ci_high'], '+.3f')}]"
    return text


def _interaction_text(row: dict[str, Any] | None, what: str) -> str:
    if row is None:
        return ""
    text = (f"; {what} interaction (steering's gain with it minus without) {_f(row['effect'], '+.3f')} [95% CI {_f(row['ci_low'], '+.3f')}, "
            f"{_f(row['ci_high'], '+.3f')}], sign-flip p = {fmt(row['p_value'], '.3g')}: {row['reading']}")
    if row.get("margin"):
        m = row["margin"]
        text += f"; on the margin {_f(m['effect'], '+.3f')} [{_f(m['ci_low'], '+.3f')}, {_f(m['ci_high'], '+.3f')}] ({m['reading']})"
    return text


def _claim_test(effect: dict[str, Any], seed: int) -> dict[str, Any]:
    keep = ("n", "a_value", "b_value", "effect", "effect_ok", "ci_low", "ci_high", "p_value", "method", "discordant", "min_p", "mde", "margin")
    return {"seed": seed, **{k: effect[k] for k in keep}}


def _degenerate(rows: Sequence[dict[str, Any]], ids: Sequence[str], problems: dict[str, list[str]]) -> None:
    for row in rows:
        if row["cell"] in ids and row["degenerate"]:
            problems["degenerate"].append(f"{row['cell']}: {row['degenerate']}")


def _prompting_claim(section: dict[str, Any], task: str, first_seed: int) -> dict[str, Any]:
    """``vector-adds-to-prompting``: McNemar, untuned+prompt+steer vs untuned+prompt; the prompt x steering interaction beside it."""
    effects, inter = section["steering_effects"], section["interactions"]
    problems = new_problems()
    prompted = next((e for e in effects if e["weights"] == UNTUNED and e["prompt"] == "honest"), None)
    if prompted is None:
        problems["missing"].append("the untuned prompted cells were not evaluated")
    _degenerate(section["cells"], ["untuned+prompt", "untuned+prompt+steer"], problems)
    plain = next((e for e in effects if e["weights"] == UNTUNED and e["prompt"] == "none"), None)
    p_inter = next((r for r in inter if r["factor"] == "prompt" and r["weights"] == UNTUNED), None)
    evidence = (f"{task} accuracy of the untuned model under the honest system prompt, steered vs not: " + _effect_text(prompted) if prompted else "")
    evidence += (f"; without the prompt steering adds {_f(plain['effect'], '+.3f')}" if plain else "") + _interaction_text(p_inter, "prompt x steering") + "."
    return claim_spec(CLAIM_PROMPTING, "Steering with the honesty vector still raises accuracy under an honest system prompt (prompt + steering vs "
                      "prompt alone, untuned weights, the same held-out items).", [_claim_test(prompted, first_seed)] if prompted else [],
                      problems, evidence, MDE_TEXT)


def _tuning_claim(section: dict[str, Any], task: str, variant: str, seeds: Sequence[int]) -> dict[str, Any]:
    """``vector-adds-to-tuning``: McNemar per seed, variant+steer vs variant (no prompt); the weights x steering interaction beside it."""
    effects, inter = section["steering_effects"], section["interactions"]
    problems, tests, parts = new_problems(), [], []
    for seed in seeds:
        level = f"{variant}:s{seed}"
        tuned = next((e for e in effects if e["weights"] == level and e["prompt"] == "none"), None)
        if tuned is None:
            problems["missing"].append(f"the {level} cells were not evaluated")
            continue
        tests.append(_claim_test(tuned, seed))
        _degenerate(section["cells"], [level, f"{level}+steer"], problems)
        w_inter = next((r for r in inter if r["weights"] == level and r["prompt"] == "none"), None)
        parts.append((f"seed {seed}: " if len(seeds) > 1 else "") + f"{task} accuracy of {variant}, steered vs not: " + _effect_text(tuned)
                     + _interaction_text(w_inter, f"{variant} x steering"))
    return claim_spec(CLAIM_TUNING, f"Steering with the honesty vector still raises accuracy of the {variant}-tuned model ({variant} + steering vs "
                      f"{variant} alone, no system prompt, the same held-out items).", tests, problems, "; ".join(parts) + ".", MDE_TEXT)


def stacking_claims(section: dict[str, Any], task: str, variant: str, seeds: Sequence[int], first_seed: int) -> list[dict[str, Any]]:
    """The study's two claims, as :func:`~reptune.pipeline.claims.claim_spec` for the run's judge.

    The Holm family gets only their primary tests (one, plus one per seed): the simple effects,
    main effects and interactions beside them are estimates with CIs, not claims, so they do not
    dilute the power of the paper's claims that share the family.
    """
    return [_prompting_claim(section, task, first_seed), _tuning_claim(section, task, variant, seeds)]
