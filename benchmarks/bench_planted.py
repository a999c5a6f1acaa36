#!/usr/bin/env python
"""Planted-behaviour benchmark: which discovery method recovers a hand-wired direction, and at what cost.

Run on demand (never part of the test suite)::

    .venv/bin/python benchmarks/bench_planted.py [--seeds 10] [--repeats 2] [--strengths 0.5,1,2] [--out PATH]

Model: the tiny seeded Llama of the tests (4 blocks, hidden 32) with one planted MLP neuron in
block 3 (as in ``tests/test_discovery.py``): it reads a unit direction ``w`` quadratically and
writes along the unembedding of a marker token, scaled by the planting ``strength``. Vectors are
added at layer 1 with norm ``R = 4`` and the change is measured at layer 3.

A run **recovers** the planted direction when any vector it returns has ``|cos(v, w)| > 0.9`` or
raises the marker's next-token probability above 0.5 (steered as ``reptune steer`` does).
**Cost** is counted on the slice in vector replays: forward passes (one per vector per replay of
blocks 2..3 over all prompts) and backward passes, summed as forward-pass equivalents
``forward + 2 x backward`` (a backward costs about two forwards). Model seeds ``first_seed ..
first_seed + seeds - 1`` (the seed sets the model's random weights and ``w``), each method run
``repeats`` times per model seed with method seeds :func:`method_seed` (never a seed the model or
``w`` was drawn from: the methods would draw the model's own weights as "random" vectors).

* ``random``: the best 4 of N random vectors (random search). Its success rate is computed
  exactly for **every** N up to ``--pool`` instead of from one draw per rung: per model seed a
  pool of ``pool`` random vectors is scored once (objective, cosine, marker probability), and the
  probability that the best 4 (by the objective) of a uniformly random N-subset include a
  recovered vector is a small dynamic programme over the pool in objective order
  (:func:`success_curve`). A random subset of an i.i.d. pool is an i.i.d. sample, so this is an
  unbiased estimate of random search's success at N, averaged over the model seeds; its cost
  at a success level is the smallest such N (no ladder rounding).
* ``melbo``: 4 MELBO vectors (lr 0.1) for S steps;
* ``dct``: 8 DCT factors, I iterations;
* ``anneal-grad``: ``discover --method anneal`` at its defaults (gradient mode for the MELBO
  objective) for 4 vectors and a budget of B evaluations: the best 4 of ``budget/2`` random
  vectors, then annealed projected gradient (:meth:`SearchSpec.pool_size`);
* ``anneal-free``: derivative-free annealing (4 chains from the best 4 of B/4 random vectors);
* ``cmaes``: CMA-ES in the full 32-dimensional space, budget B.

For each method and strength the result file gives the success rate (and the rate with
``|cos| > 0.9`` alone), the number of runs and the mean cost at every rung, and per rate level
(:data:`LEVELS`) each method's cheapest mean cost reaching it (:func:`summarize`). The goal of
issue #13: the best method needs at least 2x fewer forward-pass equivalents than random search
at the same success rate (``speedup_vs_random``; where random search never reaches the level
within ``pool`` vectors, ``speedup_lower_bound`` = ``pool`` over the method's cost). Results go
atomically to ``benchmarks/results/planted.json``, with the machine and its load average.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
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

import numpy as np
import torch
from conftest import build_model

from reptune._io import write_json_atomic
from reptune.activations import tokenize_examples
from reptune.data.pairs import Example
from reptune.discovery import build_slices, fit_dct, train_melbo
from reptune.discovery.anneal import anneal
from reptune.discovery.baselines import random_vectors
from reptune.discovery.ensemble import cmaes_search, subspace_basis
from reptune.discovery.objectives import slice_objective
from reptune.discovery.search import SearchSpec, run_search
from reptune.discovery.slice import LayerSlice
from reptune.hooks import add, install
from reptune.precision import machine_info

DEFAULT_OUT = HERE / "results" / "planted.json"
TEXTS = ["The sky is blue. The grass is green.", "Hello world", "Cats are mammals."]
HIDDEN, RADIUS, SOURCE, TARGET, MARKER = 32, 4.0, 1, 3, 100
GOAL = 2.0
KEEP = 4  # vectors every method returns (DCT: 8 factors)
LEVELS = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95)  # success-rate levels compared (random search's rate is an expectation: it reaches 1 only in the limit)
RANDOM_LADDER = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096)


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


def marker_probabilities(handle, vectors: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Mean next-token probability of the marker over the prompts, ``[k]``, for each row of
    ``vectors`` ``[k, hidden]`` added at the source layer (every token, multiplier 1: as ``reptune
    steer``), ``chunk`` vectors per forward pass (row ``v * N + i`` is vector ``v`` on prompt ``i``)."""
    batch = tokenize_examples(handle.tokenizer, [Example(t) for t in TEXTS], padding_side="left")
    n, out = len(TEXTS), []
    for first in range(0, vectors.shape[0], chunk):
        part = vectors[first : first + chunk]
        rows = part.repeat_interleave(n, dim=0).unsqueeze(1)  # [c * N, 1, hidden]
        tile = part.shape[0]
        with torch.no_grad(), install(handle.layers, {SOURCE: add(rows)}, prepend=True):
            logits = handle.model(input_ids=batch.input_ids.repeat(tile, 1), attention_mask=batch.attention_mask.repeat(tile, 1),
                                  position_ids=batch.position_ids.repeat(tile, 1)).logits
        out.append(logits[:, -1].softmax(-1)[:, MARKER].reshape(tile, n).mean(-1))
    return torch.cat(out)


def recovered_flags(handle, w: torch.Tensor, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``vectors``: ``(recovered, |cos| > 0.9, marker probability)``, ``[k]`` each."""
    cosines = (vectors @ w).abs() / vectors.norm(dim=-1)
    prob = marker_probabilities(handle, vectors)
    return (cosines > 0.9) | (prob > 0.5), cosines > 0.9, prob


def recovered(handle, w: torch.Tensor, vectors: torch.Tensor) -> tuple[bool, float, float]:
    """``(any vector recovers w, best |cos|, best marker probability)`` for a method's vectors."""
    ok, _, prob = recovered_flags(handle, w, vectors)
    cosines = (vectors @ w).abs() / vectors.norm(dim=-1)
    return bool(ok.any()), float(cosines.max()), float(prob.max())


def success_curve(ok_sorted: np.ndarray, sizes: np.ndarray, keep: int = KEEP) -> np.ndarray:
    """``[len(sizes)]``: for each N, the probability that the best ``keep`` of a uniformly random
    N-subset (N >= ``keep``) of a pool hold a recovered vector; ``ok_sorted`` ``[pool]`` bool flags in
    descending order of the objective (ties as given).

    Going down the pool, ``alive[:, j]`` is the probability that ``j`` items were chosen so far,
    all unrecovered; item ``i`` is chosen with probability ``(N - j) / (pool - i)``. The best
    ``keep`` fail when the first ``keep`` chosen items all do.
    """
    ok = np.asarray(ok_sorted, dtype=bool)
    sizes = np.asarray(sizes, dtype=np.float64)
    alive = np.zeros((sizes.shape[0], keep))
    alive[:, 0] = 1.0
    fail = np.zeros(sizes.shape[0])
    chosen_so_far = np.arange(keep, dtype=np.float64)
    for index, good in enumerate(ok):
        chosen = alive * np.clip((sizes[:, None] - chosen_so_far) / (ok.shape[0] - index), 0.0, 1.0)
        alive -= chosen
        if not good:
            fail += chosen[:, keep - 1]
            alive[:, 1:] += chosen[:, :-1]
    return np.clip(1.0 - fail - alive.sum(-1), 0.0, 1.0)  # clip: rounding below 0 where no vector recovers


def random_curves(seeds: list[int], strength: float, pool: int) -> dict[str, np.ndarray]:
    """Random search's expected success (``recovered``) and cosine-only success (``cosine``) for
    every N in ``KEEP..pool`` (``sizes``), averaged over the model ``seeds`` (module docstring)."""
    sizes = np.arange(KEEP, pool + 1)
    curves = {"recovered": np.zeros(sizes.shape[0]), "cosine": np.zeros(sizes.shape[0])}
    for seed in seeds:
        handle, w = planted(seed, strength)
        slices = build_slices(handle, TEXTS, SOURCE, TARGET)
        vectors = random_vectors(HIDDEN, pool, RADIUS, seed=10_000 + seed)
        order = torch.argsort(slice_objective(slices)(vectors), descending=True, stable=True)
        ok, cosine, _ = recovered_flags(handle, w, vectors)
        curves["recovered"] += success_curve(ok[order].numpy(), sizes) / len(seeds)
        curves["cosine"] += success_curve(cosine[order].numpy(), sizes) / len(seeds)
    return {"sizes": sizes, **curves}


def random_rows(curves: dict[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
    """Rows of :data:`RANDOM_LADDER` (up to the pool) from :func:`random_curves` (cost N)."""
    sizes = curves["sizes"]
    return [{"rung": n, "success_rate": float(curves["recovered"][n - KEEP]), "cosine_rate": float(curves["cosine"][n - KEEP]),
             "mean_cost": float(n), "runs": runs, "expected": True} for n in RANDOM_LADDER if n <= int(sizes[-1])]


def random_cost(curves: dict[str, np.ndarray], level: float, key: str) -> int | None:
    """The smallest N at which random search's expected rate reaches ``level`` (``None``: not within the pool)."""
    reached = np.nonzero(curves[key] >= level - 1e-9)[0]
    return int(curves["sizes"][reached[0]]) if reached.size else None


Method = Callable[[list, int, int], torch.Tensor]


def _melbo(slices, rung: int, seed: int) -> torch.Tensor:
    return train_melbo(slices, KEEP, RADIUS, steps=rung, lr=0.1, seed=seed).vectors


def _dct(slices, rung: int, seed: int) -> torch.Tensor:
    return fit_dct(slices, 8, RADIUS, iters=rung, seed=seed).vectors


def _anneal_grad(slices, rung: int, seed: int) -> torch.Tensor:
    spec = SearchSpec(budget=rung)  # the shipped defaults: gradient mode, the best 4 of budget/2 random vectors
    vectors, _, _ = run_search("anneal", spec, slice_objective(slices), slices, KEEP, RADIUS, init=None, p=2.0, q=1.0, seed=seed)
    return vectors


def _anneal_free(slices, rung: int, seed: int) -> torch.Tensor:
    objective = slice_objective(slices)
    pool = random_vectors(HIDDEN, rung // 4, RADIUS, seed=seed)
    starts = pool[torch.argsort(objective(pool), descending=True)[:KEEP]]
    return anneal(objective, starts, RADIUS, budget=rung - rung // 4, proposals=4, sigma=0.5, seed=seed).vectors


def _cmaes(slices, rung: int, seed: int) -> torch.Tensor:
    return cmaes_search(slice_objective(slices), subspace_basis("full", HIDDEN), RADIUS, budget=rung, seed=seed).vectors


METHODS: dict[str, tuple[Method, list[int]]] = {
    "melbo": (_melbo, [1, 2, 4, 8, 16, 32]),
    "dct": (_dct, [1, 2, 4, 8]),
    "anneal-grad": (_anneal_grad, [16, 24, 32, 48, 64, 96, 128, 256]),
    "anneal-free": (_anneal_free, [64, 256, 1024]),
    "cmaes": (_cmaes, [64, 256, 1024]),
}


def method_seed(seed: int, repeat: int) -> int:
    """The method's RNG seed for model seed ``seed``, repeat ``repeat``: ``200000 + seed + 100000 r``.

    Never a seed the model was built from: :func:`planted` draws the weights after
    ``torch.manual_seed(seed)`` and ``w`` from a generator seeded ``1000 + seed``, and the methods'
    generators use the same algorithm, so a method seeded ``seed`` would draw the model's own
    embedding rows as its random vectors, and one seeded ``1000 + seed`` would start at ``w``
    (the first version of this benchmark seeded the methods with ``seed``). Random search's pool uses
    ``10000 + seed``.
    """
    return 200_000 + seed + 100_000 * repeat


def run_cell(method: str, rung: int, seeds: list[int], repeats: int, strength: float) -> dict[str, Any]:
    """One method at one rung: every model seed x ``repeats`` method seeds (:func:`method_seed`)."""
    fn = METHODS[method][0]
    outcomes, costs, cosines, probs, seconds = [], [], [], [], 0.0
    for seed in seeds:
        handle, w = planted(seed, strength)
        slices = build_slices(handle, TEXTS, SOURCE, TARGET)
        for repeat in range(repeats):
            started = time.perf_counter()
            with counting() as counter:
                vectors = fn(slices, rung, method_seed(seed, repeat))
            seconds += time.perf_counter() - started
            ok, cosine, prob = recovered(handle, w, vectors)
            outcomes.append(ok)
            costs.append(counter.equivalent)
            cosines.append(cosine)
            probs.append(prob)
    runs = len(outcomes)
    return {"rung": rung, "success_rate": sum(outcomes) / runs, "cosine_rate": sum(c > 0.9 for c in cosines) / runs,
            "mean_cost": sum(costs) / runs, "runs": runs, "costs": costs,
            "best_cosine": cosines, "marker_probability": probs, "seconds": seconds}


def cost_at_rate(rows: list[dict[str, Any]], rate: float, key: str = "success_rate") -> float | None:
    costs = [row["mean_cost"] for row in rows if row[key] >= rate - 1e-9]
    return min(costs) if costs else None


def _level(costs: dict[str, float | None], pool: int) -> dict[str, Any]:
    """One success level: each method's cost, the best non-random method and its speedup over random search."""
    others = {m: c for m, c in costs.items() if m != "random" and c is not None}
    best = min(others, key=others.get) if others else None
    entry: dict[str, Any] = {"costs": costs, "best_method": best}
    if best is not None and costs.get("random") is not None:
        entry["speedup_vs_random"] = costs["random"] / others[best]
    elif best is not None:
        entry["speedup_lower_bound"] = pool / others[best]
    return entry


def summarize(table: dict[str, list[dict[str, Any]]], curves: dict[str, np.ndarray] | None, pool: int) -> dict[str, Any]:
    """Per success level (:data:`LEVELS`): each method's cheapest mean cost reaching it (random
    search: the exact N from ``curves``), the best other method and its speedup over random search
    (``speedup_lower_bound`` = ``pool`` over its cost where random search never gets there)."""
    by_rate: dict[str, Any] = {}
    by_cosine: dict[str, Any] = {}
    for key, curve, out in (("success_rate", "recovered", by_rate), ("cosine_rate", "cosine", by_cosine)):
        for level in LEVELS:
            costs = {method: cost_at_rate(rows, level, key) for method, rows in table.items() if method != "random"}
            if curves is not None:
                costs = {"random": random_cost(curves, level, curve), **costs}
            out[str(level)] = _level(costs, pool)
    speedups = {}
    for name, out in (("recovered", by_rate), ("cosine", by_cosine)):
        values = [v for e in out.values() if (v := e.get("speedup_vs_random", e.get("speedup_lower_bound"))) is not None]
        speedups[name] = {"max": max(values, default=None), "min": min(values, default=None)}
    reached = [e for e in by_rate.values() if "speedup_vs_random" in e]
    return {"rungs": table, "by_rate": by_rate, "by_cosine_rate": by_cosine, "speedup": speedups,
            "goal_met_at_every_level_random_reaches": bool(reached) and all(e["speedup_vs_random"] >= GOAL for e in reached),
            "goal_met": any(e.get("speedup_vs_random", e.get("speedup_lower_bound", 0)) >= GOAL for e in (*by_rate.values(), *by_cosine.values())
                            if e.get("best_method"))}


def run_strength(strength: float, methods: list[str], seeds: list[int], repeats: int, pool: int) -> dict[str, Any]:
    """Every method's rungs at one planting strength, printed as they finish, and the summary."""
    table: dict[str, list[dict[str, Any]]] = {}
    curves = None
    for method in methods:
        if method == "random":
            curves = random_curves(seeds, strength, pool)
            table[method] = random_rows(curves, len(seeds))
        else:
            table[method] = [run_cell(method, rung, seeds, repeats, strength) for rung in METHODS[method][1]]
        for row in table[method]:
            print(f"strength {strength:g} {method:12s} rung {row['rung']:5d}: success {row['success_rate']:.3f} "
                  f"(cos>0.9 {row['cosine_rate']:.3f}) cost {row['mean_cost']:9.1f}", flush=True)
    summary = summarize(table, curves, pool)
    print(f"strength {strength:g}: " + ", ".join(f"rate {r}: {e['best_method']} {e.get('speedup_vs_random', e.get('speedup_lower_bound'))}"
                                                 for r, e in summary["by_rate"].items()), flush=True)
    return summary


def _machine() -> dict[str, Any]:
    """The machine (reptune's machine info, the bf16 flag the README quotes) and the load now."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    bf16 = next((flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags), "AVX2-only")
    return {**machine_info(), "bf16_flag": bf16, "threads": torch.get_num_threads(), "loadavg_start": list(os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="model seeds (planted model and direction)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first model seed (the defaults were chosen on seeds 100-109)")
    parser.add_argument("--repeats", type=int, default=2, help="method seeds per model seed (random search: exact, see --pool)")
    parser.add_argument("--pool", type=int, default=4096, help="random vectors per model seed for random search's success curve")
    parser.add_argument("--strengths", default="0.5,1,2")
    parser.add_argument("--methods", default=",".join(["random", *METHODS]))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine, started = _machine(), time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    methods = [name for name in args.methods.split(",") if name]
    results: dict[str, Any] = {"strengths": {}}
    for strength in (float(value) for value in args.strengths.split(",")):
        results["strengths"][str(strength)] = run_strength(strength, methods, seeds, args.repeats, args.pool)
    machine["loadavg_end"] = list(os.getloadavg())
    results.update({
        "goal": f"best method reaches random search's success rate with >= {GOAL:g}x fewer forward-pass equivalents",
        "cost_unit": "forward-pass equivalents on the slice: forward + 2 x backward vector replays (3 prompts, blocks 2..3)",
        "success": "|cos(v, w)| > 0.9 or marker probability > 0.5 for any returned vector",
        "random_search": f"expected success of the best {KEEP} of N, exact for every N <= pool over a scored pool per model seed",
        "levels": list(LEVELS), "seeds": seeds, "repeats": args.repeats, "pool": args.pool, "radius": RADIUS, "source": SOURCE,
        "target": TARGET, "machine": machine, "wall_s": time.perf_counter() - started,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
