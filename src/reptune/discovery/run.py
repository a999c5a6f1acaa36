"""``discover()``: find, score, rank and save steering vectors without labels (``reptune discover``).

Output files for ``discover(..., output="VECS.safetensors")`` (or :meth:`DiscoveryResult.save`):

* ``VECS.safetensors`` (+ ``VECS.json``): the **best** vector (rank 1);
* ``VECS.rank2.safetensors`` ... ``VECS.rankK.safetensors`` (+ ``.json``): the others, by rank
  (stale ``VECS.rankN.*`` files from an earlier, larger run are removed);
* ``VECS.discovery.md``: the report (settings, ranked table, sample completions, radius calibration);
* ``VECS.discovery.json``: everything in the report, machine-readable (files by rank, scores,
  completions, training curves).

Each vector file is an ordinary reptune vector (the format of ``reptune extract``): one layer,
the source layer, with norm equal to the radius, so ``reptune steer --vector VECS.safetensors
-x 0 -x 1`` shows the unsteered and the discovered behaviour. Metadata: ``method`` is
``melbo``, ``random`` or ``dct``; ``normalization`` is ``radius``; ``extra`` holds ``radius``,
``rank``, ``index`` (training order), ``source_layer``, ``target_layer``, ``best_layers``
(``[source]``, read by ``reptune steer``), ``scores`` and the discovery settings.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reptune._io import sha256_json, write_json_atomic, write_text_atomic
from reptune._render import renderer
from reptune.discovery.baselines import RadiusSweep, random_search, sweep_radius
from reptune.discovery.common import (
    DiscoveryError,
    check_count,
    check_orthogonal_room,
    check_radius,
    orthonormal_basis,
)
from reptune.discovery.dct import DEFAULT_RATIO, Calibration, calibrate_radius, fit_dct
from reptune.discovery.melbo import PAPER_LR, check_orthogonal_order, train_melbo
from reptune.discovery.norm import NormCurve, check_grid, default_grid, norm_curves
from reptune.discovery.scoring import Baseline, Judge, VectorScores, score_vectors, token_id
from reptune.discovery.search import SEARCH_METHODS, SearchSpec, build_objective, check_search, run_search
from reptune.discovery.side_effects import SideEffects, resolve_side_effect_prompts, side_effect_scores
from reptune.discovery.slice import build_slices, check_layers
from reptune.models import ModelHandle
from reptune.sites import Positions
from reptune.steering import format_prompts
from reptune.vectors import SteeringVector, VectorMeta

METHODS = ("melbo", "random", "dct", "anneal", "cmaes")
RANK_KEYS = ("auto", "method", "diverge", "logit", "match", "judge", "side_effect")
METHOD_SCORE = {"melbo": "objective", "random": "objective", "dct": "alpha", "anneal": "objective", "cmaes": "objective"}


@dataclass
class DiscoveredVector:
    """One discovered vector, its rank (1 = best) and scores."""

    rank: int
    index: int
    vector: SteeringVector
    method_score: float
    scores: VectorScores | None = None
    file: str | None = None
    side_effect: float | None = None

    @property
    def tensor(self) -> torch.Tensor:
        return next(iter(self.vector.directions.values()))


@dataclass
class DiscoveryResult:
    """What :func:`discover` found; :meth:`save` writes the vector files and the report."""

    method: str
    model_id: str
    source: int
    target: int
    radius: float
    radius_source: str
    rank_by: str
    vectors: list[DiscoveredVector]
    prompts: list[str]
    eval_prompts: list[str]
    held_out: bool
    settings: dict[str, Any]
    baseline: Baseline | None = None
    calibration: Calibration | None = None
    sweep: RadiusSweep | None = None
    history: list[list[float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    norm: list[NormCurve] | None = None

    @property
    def best(self) -> SteeringVector:
        return self.vectors[0].vector

    @property
    def score_name(self) -> str:
        return METHOD_SCORE[self.method]

    def table(self) -> list[dict[str, Any]]:
        """One row per vector, by rank."""
        rows = []
        for item in self.vectors:
            row: dict[str, Any] = {"rank": item.rank, "index": item.index, "file": item.file, self.score_name: item.method_score,
                                   "norm": float(item.tensor.norm())}
            if item.scores is not None:
                row.update(item.scores.metrics())
            if item.side_effect is not None:
                row["side_effect"] = item.side_effect
            if self.norm is not None:
                curve = self.norm[item.rank - 1]
                row.update({"growth": curve.growth, "appear_radius": curve.appear_radius, "degenerate_radius": curve.degenerate_radius,
                            "best_radius": curve.best_radius})
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "model_id": self.model_id,
            "source_layer": self.source,
            "target_layer": self.target,
            "radius": self.radius,
            "radius_source": self.radius_source,
            "rank_by": self.rank_by,
            "settings": self.settings,
            "prompts": self.prompts,
            "eval_prompts": self.eval_prompts,
            "held_out": self.held_out,
            "table": self.table(),
            "baseline": None if self.baseline is None else {
                "completions": self.baseline.completions, "logit_diff": self.baseline.logit_diff,
                "match": self.baseline.match, "judge": self.baseline.judge,
            },
            "completions": {str(item.rank): item.scores.completions for item in self.vectors if item.scores is not None},
            "calibration": None if self.calibration is None else {
                "radius": self.calibration.radius, "target": self.calibration.target, "ratio": self.calibration.ratio,
                "grid": self.calibration.grid, "num_directions": self.calibration.num_directions,
            },
            "sweep": None if self.sweep is None else self.sweep.rows,
            "history": self.history,
            "timings": self.timings,
            "norm": None if self.norm is None else [curve.to_json() for curve in self.norm],
        }

    def markdown(self, samples: int = 4) -> str:
        """The report: settings, ranked table, sample completions, radius calibration (built by
        :mod:`reptune.reporting.discovery`, through :mod:`reptune._render`)."""
        return renderer("discovery_report")(self, samples)

    def save(self, path: str | Path) -> dict[str, Path]:
        """Write the vector files, ``STEM.discovery.md`` and ``STEM.discovery.json`` (each atomically).

        Returns:
            ``{"best": ..., "report": ..., "json": ..., "rank2": ..., ...}``.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise DiscoveryError(f"vector files end in .safetensors, got {path.name}")
        written: dict[str, Path] = {}
        for item in self.vectors:
            target = rank_path(path, item.rank)
            item.file = target.name
            item.vector.save(target)
            written["best" if item.rank == 1 else f"rank{item.rank}"] = target
        _remove_stale_ranks(path, len(self.vectors))
        stem = path.with_suffix("")
        written["json"] = stem.with_name(stem.name + ".discovery.json")
        written["report"] = stem.with_name(stem.name + ".discovery.md")
        figure = None
        if self.norm:
            labels = [f"rank {item.rank}" for item in self.vectors]
            written["norm"] = renderer("norm_curves")(self.norm, stem.with_name(stem.name + ".norm.png"), labels)
            figure = written["norm"].name
        write_json_atomic(written["json"], {**self.to_json(), "files": {str(item.rank): item.file for item in self.vectors}})
        write_text_atomic(written["report"], renderer("discovery_report")(self, 4, figure))
        return written


def rank_path(path: str | Path, rank: int) -> Path:
    """``VECS.safetensors`` for rank 1, ``VECS.rank<r>.safetensors`` for the others."""
    path = Path(path)
    return path if rank == 1 else path.with_name(f"{path.stem}.rank{rank}.safetensors")


def _remove_stale_ranks(path: Path, count: int) -> None:
    pattern = re.compile(re.escape(path.stem) + r"\.rank(\d+)\.(safetensors|json)")
    for candidate in path.parent.glob(f"{path.stem}.rank*.*"):
        match = pattern.fullmatch(candidate.name)
        if match and int(match.group(1)) > count:
            candidate.unlink(missing_ok=True)


def default_layers(num_layers: int) -> tuple[int, int]:
    """Default source and target: a quarter and three quarters of the way through the stack."""
    source = num_layers // 4
    return source, max(source + 1, (3 * num_layers) // 4)


def discover(
    handle: ModelHandle,
    prompts: Sequence[str],
    *,
    method: str = "melbo",
    source: int | None = None,
    target: int | None = None,
    radius: float | str = "auto",
    num: int = 8,
    positions: str | Positions = "all",
    chat: bool = True,
    steps: int = 300,
    lr: float = PAPER_LR,
    p: float = 2.0,
    q: float = 1.0,
    orthogonal: bool | None = None,
    orthogonal_order: str = "sequential",
    orthogonal_to: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    candidates: int | None = None,
    refine_steps: int = 0,
    dct_iters: int = 10,
    calibration_ratio: float = DEFAULT_RATIO,
    calibration_directions: int = 16,
    eval_prompts: Sequence[str] | None = None,
    score: bool = True,
    max_new_tokens: int = 32,
    diverge_within: int = 8,
    logit_tokens: tuple[str, str] | None = None,
    match: Sequence[str] = (),
    judge: Judge | None = None,
    rank_by: str = "auto",
    side_effects: str | Path | Sequence[str] | None = None,
    side_effect_penalty: float = 0.0,
    sweep: bool = False,
    tune_norm: bool | Sequence[float] = False,
    search: SearchSpec | None = None,
    seed: int = 0,
    prompt_batch_size: int = 16,
    vector_batch_size: int | None = None,
    dataset: str | None = None,
    output: str | Path | None = None,
    progress: bool = False,
) -> DiscoveryResult:
    """Discover ``num`` steering vectors at layer ``source`` without labels; score and rank them.

    Args:
        handle: the model.
        prompts: user prompts to discover on (the chat template is applied when ``chat``).
        method: ``melbo`` (learned, :mod:`~reptune.discovery.melbo`), ``random`` (norm-matched
            random vectors; with ``candidates``/``refine_steps`` a random search) or ``dct``
            (exponential deep causal transcoder, :mod:`~reptune.discovery.dct`).
        source, target: layers (site convention: output of block L); default ``n//4`` and ``3n//4``.
        radius: the norm ``R`` of every vector, or ``"auto"``: the DCT calibration (the radius
            where the slice's nonlinear response is ``calibration_ratio`` times its linear one).
        num: how many vectors (DCT: factors).
        positions: token positions whose change counts (``all``, ``last:N``, ``marker:TEXT``).
        steps, lr, p, q: MELBO training (paper defaults: 300 steps, lr 1e-3, p=2, q=1).
        orthogonal: vectors orthogonal to earlier ones (default: off for melbo/random, on for dct).
        orthogonal_order: melbo / random refinement with ``orthogonal``: ``sequential`` (the
            paper's: vector i trained after vectors 0..i-1 are frozen) or ``parallel`` (all at
            once, orthogonalised in order after every step; faster).
        orthogonal_to: ``[e, hidden]`` earlier vectors all new ones must be orthogonal to.
        init: ``[m, hidden]`` starting vectors for MELBO (search around promising vectors).
        candidates, refine_steps: method ``random`` only: keep the best ``num`` of ``candidates``
            random vectors by the objective, then take ``refine_steps`` local MELBO steps from each.
        dct_iters: DCT gradient iterations.
        eval_prompts: held-out prompts for scoring (default: the training prompts, flagged
            ``held_out: false`` in the report).
        score: generate and score completions (off: rank by the method's own score).
        max_new_tokens, diverge_within: greedy completion length; divergence window in tokens.
        logit_tokens: ``(A, B)``: report the next-token ``logit(A) - logit(B)`` readout.
        match: strings to look for in completions (case-insensitive).
        judge: ``judge(prompts, completions) -> scores`` (e.g. an LLM judge; the hook for the evaluation suite's judge).
        rank_by: ``auto`` (judge, else match, else logit, else the method's score), ``method``
            (MELBO objective / DCT alpha), ``diverge``, ``logit``, ``match``, ``judge`` or
            ``side_effect`` (smallest first).
        side_effects: ``"neutral"`` (the shipped neutral sentences), a prompts file or a list of
            plain texts: score every vector's KL to the unsteered model on them
            (:mod:`~reptune.discovery.side_effects`; column ``side_effect``, nats per token).
        side_effect_penalty: rank by ``primary - penalty * side_effect`` (needs ``side_effects``).
        sweep: also score random vectors on a log grid of radii (reported).
        search: settings of the ``anneal`` and ``cmaes`` methods (:class:`~reptune.discovery.search.SearchSpec`:
            budget, objective melbo/logit/match/judge, anneal mode, candidates, subspace, population);
            ``init`` gives anneal its starts and cmaes its starting directions.
        tune_norm: ``True`` (grid ``R x (1/4 .. 8)``) or a radius grid: each vector's effect over
            the grid (:func:`reptune.discovery.norm.norm_curves`: objective, and with ``score`` the
            divergence, readouts, judge, degeneration; appear / degenerate / best radius; the
            per-dimension ``growth`` statistic), in the table, the report and ``STEM.norm.png``.
        seed: seeds every random choice of this call (same seed, same vectors).
        prompt_batch_size, vector_batch_size: memory knobs (prompts per slice replay; vectors
            trained at once).
        dataset: a name for the prompts recorded in vector metadata.
        output: when given, :meth:`DiscoveryResult.save` to this ``.safetensors`` path.

    Raises:
        DiscoveryError: unknown method, source >= target, radius <= 0, no prompts, more
            orthogonal vectors than hidden dimensions, a metric asked for without its inputs.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if method not in METHODS:
        raise DiscoveryError(f"unknown discovery method {method!r}: use {', '.join(METHODS)}")
    prompts = [str(prompt) for prompt in prompts]
    if not prompts:
        raise DiscoveryError("no prompts: discovery needs at least one prompt")
    if empty := [index for index, prompt in enumerate(prompts) if not prompt.strip()]:
        raise DiscoveryError(f"prompt {empty[0]} is empty")
    default_source, default_target = default_layers(handle.num_layers)
    source, target = check_layers(handle, default_source if source is None else source, default_target if target is None else target)
    auto_radius = isinstance(radius, str)
    if auto_radius and radius != "auto":
        try:
            radius = float(radius)
            auto_radius = False
        except ValueError:
            raise DiscoveryError(f"radius must be a number > 0 or 'auto', got {radius!r}") from None
    if not auto_radius:
        radius = check_radius(radius)  # type: ignore[arg-type]
    num = check_count(num, "number of vectors")
    if init is not None and method not in ("melbo", "anneal", "cmaes"):
        raise DiscoveryError("starting vectors (init / --init) work with methods melbo, anneal and cmaes")
    if search is not None and method not in SEARCH_METHODS:
        raise DiscoveryError("search settings (budget, objective, subspace) work with methods anneal and cmaes")
    if (candidates is not None or refine_steps) and method != "random":
        raise DiscoveryError("candidates and refine_steps (random search) work with method random")
    if orthogonal is None:
        orthogonal = method == "dct"
    check_orthogonal_order(orthogonal_order)
    fixed = orthonormal_basis(orthogonal_to, handle.hidden_size)
    if orthogonal or fixed.shape[0]:
        check_orthogonal_room(num if orthogonal else 1, handle.hidden_size, fixed.shape[0])
    if rank_by not in RANK_KEYS:
        raise DiscoveryError(f"unknown rank_by {rank_by!r}: use {', '.join(RANK_KEYS)}")
    if logit_tokens is not None:
        if len(logit_tokens) != 2:
            raise DiscoveryError("logit_tokens must be two strings, e.g. ('Sure', 'Sorry')")
        token_id(handle.tokenizer, logit_tokens[0]), token_id(handle.tokenizer, logit_tokens[1])
    needs = {"logit": logit_tokens is not None, "match": bool(match), "judge": judge is not None}
    side_texts = resolve_side_effect_prompts(side_effects)
    needs["side_effect"] = side_texts is not None
    if isinstance(side_effect_penalty, bool) or not isinstance(side_effect_penalty, (int, float)) or not side_effect_penalty >= 0 \
            or side_effect_penalty == float("inf"):
        raise DiscoveryError(f"side-effect penalty must be a finite number >= 0, got {side_effect_penalty!r}")
    if side_effect_penalty and side_texts is None:
        raise DiscoveryError("a side-effect penalty needs side-effect prompts (side_effects / --side-effects)")
    if rank_by in needs and not needs[rank_by]:
        raise DiscoveryError(f"rank_by {rank_by!r} needs {'logit_tokens' if rank_by == 'logit' else rank_by} to be given")
    if rank_by == "auto":
        rank_by = next((key for key in ("judge", "match", "logit") if needs[key]), "method")
    if rank_by not in ("method", "side_effect") and not score:
        raise DiscoveryError(f"rank_by {rank_by!r} needs scoring (score=True)")
    if eval_prompts is not None and not list(eval_prompts):
        raise DiscoveryError("eval_prompts is empty")
    spec = search or SearchSpec()
    if method in SEARCH_METHODS:
        init_rows = 0 if init is None else int(torch.as_tensor(init).reshape(-1, handle.hidden_size).shape[0])
        check_search(method, spec, num, handle.hidden_size, logit_tokens=logit_tokens, match=match, judge=judge, init_rows=init_rows)
    norm_grid = None
    if tune_norm is not False and tune_norm is not None:
        norm_grid = None if tune_norm is True else check_grid(list(tune_norm))  # type: ignore[arg-type]
    positions = Positions.parse(positions)
    texts = format_prompts(handle, prompts, chat=chat)

    tick = time.perf_counter()
    slices = build_slices(handle, texts, source, target, positions, prompt_batch_size=prompt_batch_size)
    timings["cache_s"] = time.perf_counter() - tick

    calibration = None
    if auto_radius:
        tick = time.perf_counter()
        calibration = calibrate_radius(slices, ratio=calibration_ratio, num_directions=calibration_directions, seed=seed)
        radius = calibration.radius
        timings["calibrate_s"] = time.perf_counter() - tick
    assert isinstance(radius, float)

    tick = time.perf_counter()
    history: list[list[float]] = []
    settings: dict[str, Any] = {"num": num, "positions": positions.spec(), "chat": chat, "orthogonal": orthogonal,
                                "orthogonal_to": int(fixed.shape[0]), "seed": seed, "prompt_batch_size": prompt_batch_size}
    if method == "melbo":
        run = train_melbo(slices, num, radius, steps=steps, lr=lr, p=p, q=q, orthogonal=orthogonal, orthogonal_order=orthogonal_order, orthogonal_to=orthogonal_to,
                          init=init, seed=seed, vector_batch_size=vector_batch_size, progress=progress)
        vectors, method_scores = run.vectors, run.objective
        history = run.history.T.tolist()
        settings.update({"steps": steps, "lr": lr, "p": p, "q": q, "init": 0 if init is None else int(torch.as_tensor(init).reshape(-1, handle.hidden_size).shape[0]),
                         **run.settings})
    elif method == "random":
        run = random_search(slices, num, radius, candidates=candidates, orthogonal=orthogonal, orthogonal_order=orthogonal_order, orthogonal_to=orthogonal_to,
                            refine_steps=refine_steps, lr=lr, p=p, q=q, seed=seed, progress=progress)
        vectors, method_scores = run.vectors, run.objective
        history = run.history.T.tolist()
        settings.update({"p": p, "q": q, "lr": lr, **{k: v for k, v in run.settings.items() if k != "candidate_objective"}})
    elif method in SEARCH_METHODS:
        side = SideEffects(handle, source, side_texts) if side_texts is not None and side_effect_penalty else None
        objective = build_objective(spec, slices, handle, source, prompts, chat=chat, p=p, q=q, logit_tokens=logit_tokens, match=match,
                                    judge=judge, side_effects=side, penalty=float(side_effect_penalty))
        vectors, method_scores, found = run_search(method, spec, objective, slices, num, radius, init=init, p=p, q=q, seed=seed)
        settings.update({"p": p, "q": q, **found})
    else:
        dct = fit_dct(slices, num, radius, iters=dct_iters, orthogonal=orthogonal, seed=seed)
        vectors, method_scores = dct.vectors, dct.alpha
        history = [dct.history]
        settings.update({"dct_iters": dct_iters, "response": dct.response.tolist(), "max_overlap": dct.max_overlap})
    timings["train_s"] = time.perf_counter() - tick
    if auto_radius:
        settings.update({"calibration_ratio": calibration_ratio, "calibration_directions": calibration_directions})

    radius_sweep = None
    if sweep:
        tick = time.perf_counter()
        radius_sweep = sweep_radius(slices, p=p, q=q, seed=seed)
        timings["sweep_s"] = time.perf_counter() - tick

    baseline, scores = None, None
    held_out = eval_prompts is not None and list(eval_prompts) != prompts
    evaluation = list(eval_prompts) if eval_prompts is not None else prompts
    if score:
        tick = time.perf_counter()
        baseline, scores = score_vectors(
            handle, vectors, source, evaluation, chat=chat, max_new_tokens=max_new_tokens, diverge_within=diverge_within,
            logit_tokens=logit_tokens, match=match, judge=judge, progress=progress,
        )
        timings["score_s"] = time.perf_counter() - tick
        settings.update({"max_new_tokens": max_new_tokens, "diverge_within": diverge_within,
                         "logit_tokens": list(logit_tokens) if logit_tokens else None, "match": list(match), "judge": judge is not None})

    curves = None
    if tune_norm is not False and tune_norm is not None:
        tick = time.perf_counter()
        norm_grid = norm_grid or default_grid(float(radius))
        curves = norm_curves(
            slices, vectors, norm_grid, p=p, q=q, handle=handle if score else None, layer=source, prompts=evaluation, chat=chat,
            max_new_tokens=max_new_tokens, diverge_within=diverge_within, logit_tokens=logit_tokens, match=match, judge=judge,
        )
        timings["norm_s"] = time.perf_counter() - tick
        settings["norm_grid"] = norm_grid
    del slices
    side_values = None
    if side_texts is not None:
        tick = time.perf_counter()
        side_values = side_effect_scores(handle, vectors, source, side_texts).tolist()
        timings["side_effects_s"] = time.perf_counter() - tick
        settings.update({"side_effect_prompts": len(side_texts), "side_effect_penalty": float(side_effect_penalty)})
    order = _rank(method_scores, scores, rank_by, method, side_values, float(side_effect_penalty))
    settings["rank_by"] = rank_by
    ranked = []
    for rank, index in enumerate(order, 1):
        item_scores = scores[index] if scores is not None else None
        score_dict = {METHOD_SCORE[method]: float(method_scores[index])}
        if item_scores is not None:
            score_dict.update({key: value for key, value in item_scores.metrics().items() if value is not None})
        if side_values is not None:
            score_dict["side_effect"] = side_values[index]
        if curves is not None:
            score_dict.update({"growth": curves[index].growth, "appear_radius": curves[index].appear_radius,
                               "degenerate_radius": curves[index].degenerate_radius, "best_radius": curves[index].best_radius})
        meta = VectorMeta(
            model_id=handle.model_id, revision=handle.revision, hidden_size=handle.hidden_size, num_layers=handle.num_layers,
            method=method, positions=positions.spec(), normalization="radius", dataset=dataset or "prompts",
            dataset_hash=sha256_json(prompts),
            extra={
                "radius": radius, "radius_source": "calibrated" if auto_radius else "given", "rank": rank, "index": int(index),
                "num_vectors": num, "source_layer": source, "target_layer": target, "best_layers": [source],
                "rank_by": rank_by, "scores": score_dict, "discovery": {k: v for k, v in settings.items() if k != "response"},
            },
        )
        vector = SteeringVector({source: vectors[index]}, meta)
        ranked.append(DiscoveredVector(rank=rank, index=int(index), vector=vector, method_score=float(method_scores[index]), scores=item_scores,
                                       side_effect=None if side_values is None else side_values[index]))
    timings["total_s"] = time.perf_counter() - started
    result = DiscoveryResult(
        method=method, model_id=handle.model_id, source=source, target=target, radius=float(radius),
        radius_source="calibrated" if auto_radius else "given", rank_by=rank_by, vectors=ranked, prompts=prompts,
        eval_prompts=evaluation, held_out=held_out, settings=settings, baseline=baseline, calibration=calibration,
        sweep=radius_sweep, history=history, timings=timings,
        norm=None if curves is None else [curves[item.index] for item in ranked],
    )
    if output is not None:
        result.save(output)
    return result


def _rank(
    method_scores: torch.Tensor, scores: list[VectorScores] | None, rank_by: str, method: str,
    side_effects: list[float] | None = None, penalty: float = 0.0,
) -> list[int]:
    """Indices by rank: the primary metric descending (``side_effect``: ascending), minus
    ``penalty * side_effect`` when given; ties broken by the method's score."""
    count = int(method_scores.shape[0])
    own = [float(abs(value)) if method == "dct" else float(value) for value in method_scores]

    def primary(index: int) -> float:
        return base(index) - (penalty * side_effects[index] if side_effects is not None and penalty else 0.0)

    def base(index: int) -> float:
        if rank_by == "side_effect" and side_effects is not None:
            return -side_effects[index]
        if rank_by == "method" or scores is None:
            return own[index]
        value = {"diverge": scores[index].diverge, "logit": scores[index].logit_diff, "match": scores[index].match,
                 "judge": scores[index].judge}[rank_by]
        return float("-inf") if value is None else float(value)

    return sorted(range(count), key=lambda index: (-primary(index), -own[index], index))
