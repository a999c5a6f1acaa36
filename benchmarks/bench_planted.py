#!/usr/bin/env python
"""Planted-behaviour benchmark: which discovery method recovers a hand-wired direction, and at what cost.

Run on demand (never part of the test suite)::

    .venv/bin/python benchmarks/bench_planted.py [--seeds 5] [--strengths 0.5,1,2] [--out PATH]

Model: the tiny seeded Llama of the tests (4 blocks, hidden 32) with one planted MLP neuron in
block 3 (as in ``tests/test_discovery.py``): it reads a unit direction ``w`` quadratically and
writes along the unembedding of a marker token, scaled by the planting ``strength``. Vectors are
added at layer 1 with norm ``R = 4`` and the change is measured at layer 3.

A run **recovers** the planted direction when any vector it returns has ``|cos(v, w)| > 0.9`` or
raises the marker's next-token probability above 0.5 (steered as ``reptune steer`` does).
**Cost** is counted on the slice in vector replays: forward passes (one per vector per replay of
blocks 2..3 over all prompts) and backward passes, summed as forward-pass equivalents
``forward + 2 x backward`` (a backward costs about two forwards). Methods, each at a ladder of
budgets, ``--seeds`` seeds (the seed sets the model's random weights, ``w`` and the method's RNG):

* ``random``: the best 4 of N random vectors (random search);
* ``melbo``: 4 MELBO vectors (lr 0.1) for S steps;
* ``dct``: 8 DCT factors, I iterations;
* ``anneal-grad``: the best 4 of 64 random vectors, then annealed projected gradient for S steps;
* ``anneal-free``: derivative-free annealing (4 chains from the best 4 of B/4 random vectors);
* ``cmaes``: CMA-ES in the full 32-dimensional space, budget B.

For each method and strength the result file gives the success rate (and the rate with
``|cos| > 0.9`` alone) and mean cost at every rung, and per rate level 0.2 .. 1.0 each method's
cheapest mean cost reaching it (:func:`summarize`). The goal of issue #13: the best method needs
at least 2x fewer forward-pass equivalents than random search at the same success rate
(``speedup_vs_random``; where random search never reaches the level within its largest budget,
``speedup_lower_bound`` = that budget over the method's cost).
Results go atomically to ``benchmarks/results/planted.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for extra in (REPO / "src", REPO / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from conftest import build_model

from reptune._io import write_json_atomic
from reptune.activations import tokenize_examples
from reptune.data.pairs import Example
from reptune.discovery import build_slices, fit_dct, random_search, train_melbo
from reptune.discovery.anneal import anneal, anneal_gradient
from reptune.discovery.baselines import random_vectors
from reptune.discovery.ensemble import cmaes_search, subspace_basis
from reptune.discovery.objectives import slice_objective
from reptune.discovery.slice import LayerSlice
from reptune.steering import Steering

DEFAULT_OUT = HERE / "results" / "planted.json"
TEXTS = ["The sky is blue. The grass is green.", "Hello world", "Cats are mammals."]
HIDDEN, RADIUS, SOURCE, TARGET, MARKER = 32, 4.0, 1, 3, 100
GOAL = 2.0
ANNEAL_CANDIDATES = 64  # anneal-grad: random vectors scored to pick its 4 starts


class Counter:
    """Vector replays through :meth:`LayerSlice.delta` (forward; backward when theta needs grad)."""

    def __init__(self) -> None:
        self.forward = self.backward = 0

    @property
    def equivalent(self) -> int:
        return self.forward + 2 * self.backward


@contextlib.contextmanager
def counting() -> Iterator[Counter]:
    """Count every replay of any slice while the block runs."""
    counter, original = Counter(), LayerSlice.delta

    def delta(piece: LayerSlice, theta: torch.Tensor) -> torch.Tensor:
        counter.forward += int(theta.shape[0])
        counter.backward += int(theta.shape[0]) if theta.requires_grad else 0
        return original(piece, theta)

    LayerSlice.delta = delta  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        LayerSlice.delta = original  # type: ignore[method-assign]


def planted(seed: int, strength: float):
    """The planted model (see the module docstring) and its direction ``w``."""
    handle = build_model("llama", seed=seed)
    generator = torch.Generator().manual_seed(1000 + seed)
    w = torch.randn(HIDDEN, generator=generator)
    w /= w.norm()
    m = torch.randn(HIDDEN, generator=generator)
    m -= (m @ w) * w
    m /= m.norm()
    sharpness = 4.0
    mlp = handle.layers[TARGET].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[0] = sharpness * w
        mlp.up_proj.weight[0] = w
        mlp.down_proj.weight[:, 0] = strength * 0.1 * RADIUS / sharpness * m
        handle.model.lm_head.weight[MARKER] = 1.5 * m
    return handle, w


def marker_probability(handle, vector: torch.Tensor) -> float:
    batch = tokenize_examples(handle.tokenizer, [Example(t) for t in TEXTS], padding_side="left")
    with torch.no_grad(), Steering(handle, {SOURCE: vector}):
        logits = handle.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    return float(logits[:, -1].softmax(-1)[:, MARKER].mean())


def recovered(handle, w: torch.Tensor, vectors: torch.Tensor) -> tuple[bool, float, float]:
    cosines = (vectors @ w).abs() / vectors.norm(dim=-1)
    best = int(cosines.argmax())
    prob = max(marker_probability(handle, row) for row in vectors)
    return bool(float(cosines[best]) > 0.9 or prob > 0.5), float(cosines[best]), prob


Method = Callable[[list, int, int], torch.Tensor]


def _random(slices, rung: int, seed: int) -> torch.Tensor:
    return random_search(slices, 4, RADIUS, candidates=rung, seed=seed).vectors


def _melbo(slices, rung: int, seed: int) -> torch.Tensor:
    return train_melbo(slices, 4, RADIUS, steps=rung, lr=0.1, seed=seed).vectors


def _dct(slices, rung: int, seed: int) -> torch.Tensor:
    return fit_dct(slices, 8, RADIUS, iters=rung, seed=seed).vectors


def _anneal_grad(slices, rung: int, seed: int) -> torch.Tensor:
    starts = random_search(slices, 4, RADIUS, candidates=ANNEAL_CANDIDATES, seed=seed).vectors
    return anneal_gradient(slices, starts, RADIUS, steps=rung, seed=seed).vectors


def _anneal_free(slices, rung: int, seed: int) -> torch.Tensor:
    objective = slice_objective(slices)
    pool = random_vectors(HIDDEN, rung // 4, RADIUS, seed=seed)
    starts = pool[torch.argsort(objective(pool), descending=True)[:4]]
    return anneal(objective, starts, RADIUS, budget=rung - rung // 4, proposals=4, sigma=0.5, seed=seed).vectors


def _cmaes(slices, rung: int, seed: int) -> torch.Tensor:
    return cmaes_search(slice_objective(slices), subspace_basis("full", HIDDEN), RADIUS, budget=rung, seed=seed).vectors


METHODS: dict[str, tuple[Method, list[int]]] = {
    "random": (_random, [16, 64, 256, 1024, 4096]),
    "melbo": (_melbo, [1, 2, 4, 8, 16, 32]),
    "dct": (_dct, [1, 2, 4, 8]),
    "anneal-grad": (_anneal_grad, [1, 2, 4, 8, 16]),
    "anneal-free": (_anneal_free, [64, 256, 1024]),
    "cmaes": (_cmaes, [64, 256, 1024]),
}


def run_cell(method: str, rung: int, seeds: int, strength: float) -> dict[str, Any]:
    fn = METHODS[method][0]
    outcomes, costs, cosines, probs, seconds = [], [], [], [], 0.0
    for seed in range(seeds):
        handle, w = planted(seed, strength)
        slices = build_slices(handle, TEXTS, SOURCE, TARGET)
        started = time.perf_counter()
        with counting() as counter:
            vectors = fn(slices, rung, seed)
        seconds += time.perf_counter() - started
        ok, cosine, prob = recovered(handle, w, vectors)
        outcomes.append(ok)
        costs.append(counter.equivalent)
        cosines.append(cosine)
        probs.append(prob)
    return {"rung": rung, "success_rate": sum(outcomes) / seeds, "cosine_rate": sum(c > 0.9 for c in cosines) / seeds,
            "mean_cost": sum(costs) / seeds, "costs": costs,
            "best_cosine": cosines, "marker_probability": probs, "seconds": seconds}


def cost_at_rate(rows: list[dict[str, Any]], rate: float, key: str = "success_rate") -> float | None:
    costs = [row["mean_cost"] for row in rows if row[key] >= rate - 1e-9]
    return min(costs) if costs else None


def summarize(table: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per success-rate level: each method's cheapest mean cost reaching it, and the best other
    method's speedup over random search at every level random search reaches (``None`` where it
    never does: then ``lower_bound`` is random's largest budget over that method's cost)."""
    random_rows = table.get("random", [])
    largest = max((row["mean_cost"] for row in random_rows), default=None)
    by_rate, by_cosine, speedups = {}, {}, {}
    for key, out in (("success_rate", by_rate), ("cosine_rate", by_cosine)):
        for level in (0.2, 0.4, 0.6, 0.8, 1.0):
            costs = {method: cost_at_rate(rows, level, key) for method, rows in table.items()}
            others = {m: c for m, c in costs.items() if m != "random" and c is not None}
            best = min(others, key=others.get) if others else None
            reference = costs.get("random")
            entry: dict[str, Any] = {"costs": costs, "best_method": best}
            if best is not None and reference is not None:
                entry["speedup_vs_random"] = reference / others[best]
            elif best is not None and largest is not None:
                entry["speedup_lower_bound"] = largest / others[best]
            out[str(level)] = entry
    for name, out in (("recovered", by_rate), ("cosine", by_cosine)):
        values = [e.get("speedup_vs_random", e.get("speedup_lower_bound")) for e in out.values()]
        values = [v for v in values if v is not None]
        speedups[name] = {"max": max(values) if values else None, "min": min(values) if values else None}
    return {"rungs": table, "by_rate": by_rate, "by_cosine_rate": by_cosine, "speedup": speedups,
            "goal_met": any(e.get("speedup_vs_random", e.get("speedup_lower_bound", 0)) >= GOAL for e in (*by_rate.values(), *by_cosine.values())
                            if e.get("best_method"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--strengths", default="0.5,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    strengths = [float(value) for value in args.strengths.split(",")]
    methods = [name for name in args.methods.split(",") if name]
    results: dict[str, Any] = {"strengths": {}}
    for strength in strengths:
        table = {}
        for method in methods:
            table[method] = [run_cell(method, rung, args.seeds, strength) for rung in METHODS[method][1]]
            for row in table[method]:
                print(f"strength {strength:g} {method:12s} rung {row['rung']:5d}: success {row['success_rate']:.2f} "
                      f"(cos>0.9 {row['cosine_rate']:.2f}) cost {row['mean_cost']:9.1f} cos {max(row['best_cosine']):.3f}", flush=True)
        results["strengths"][str(strength)] = summarize(table)
        print(f"strength {strength:g}: " + ", ".join(f"rate {r}: {row}" for r, row in results["strengths"][str(strength)]["by_rate"].items()),
              flush=True)
    results.update({
        "goal": f"best method reaches random search's success rate with >= {GOAL:g}x fewer forward-pass equivalents",
        "cost_unit": "forward-pass equivalents on the slice: forward + 2 x backward vector replays (3 prompts, blocks 2..3)",
        "success": "|cos(v, w)| > 0.9 or marker probability > 0.5 for any returned vector",
        "seeds": args.seeds, "radius": RADIUS, "source": SOURCE, "target": TARGET,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__, "threads": 1},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
