"""``discover()``: find, score, rank and save steering vectors without labels (``reptune discover``).

:func:`discover` reads as its steps: check the config and the inputs (:func:`_prepare`), cache the
source-layer slice, calibrate the radius, fit the vectors (:func:`_fit`), score them
(:func:`_measure`, side effects), rank them and wrap each as a vector file (:func:`_ranked`).

Output files for ``discover(..., output="VECS.safetensors")`` (or :meth:`DiscoveryResult.save`):

* ``VECS.safetensors`` (+ ``VECS.json``): the **best** vector (rank 1);
* ``VECS.rank2.safetensors`` ... ``VECS.rankK.safetensors`` (+ ``.json``): the others, by rank
  (stale ``VECS.rankN.*`` files from an earlier, larger run are removed);
* ``VECS.discovery.md``: the report (settings, ranked table, sample completions, radius calibration);
* ``VECS.discovery.json``: everything in the report, machine-readable (files by rank, scores,
  completions, training curves);
* ``VECS.discover_config.json``: the :class:`~reptune.discovery.config.DiscoverConfig` of the run
  (:meth:`DiscoverConfig.load` reads it back).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reptune._io import sha256_json, write_json_atomic, write_text_atomic
from reptune._render import renderer
from reptune.discovery.baselines import RadiusSweep, random_search, sweep_radius
from reptune.discovery.common import DiscoveryError, check_orthogonal_room, orthonormal_basis
from reptune.discovery.config import METHODS, RANK_KEYS, DiscoverConfig, config_path
from reptune.discovery.dct import Calibration, calibrate_radius, fit_dct
from reptune.discovery.melbo import train_melbo
from reptune.discovery.norm import NormCurve, default_grid, norm_curves
from reptune.discovery.scoring import Baseline, CompletionScorer, VectorScores, score_vectors, token_id
from reptune.discovery.search import SEARCH_METHODS, SearchSpec, build_objective, check_search, run_search
from reptune.discovery.side_effects import SideEffectPenalty, SideEffects, resolve_side_effect_prompts, side_effect_scores
from reptune.discovery.slice import LayerSlice, build_slices, check_layers
from reptune.models import ModelHandle
from reptune.sites import Positions
from reptune.steering import format_prompts
from reptune.vectors import SteeringVector, VectorMeta

__all__ = ["METHODS", "RANK_KEYS", "DiscoverConfig", "DiscoveredVector", "DiscoveryResult", "default_layers", "discover", "rank_path"]

METHOD_SCORE = {"melbo": "objective", "random": "objective", "dct": "alpha", "anneal": "objective", "cmaes": "objective"}
PENALISED_METHODS = ("melbo", "anneal", "cmaes")  # their objective subtracts side_effect_penalty x side_effect


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
    config: DiscoverConfig | None = None  # the settings of the run (saved as STEM.discover_config.json)

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
            ``{"best": ..., "report": ..., "json": ..., "config": ..., "rank2": ..., ...}`` (``config``
            when the result holds its :class:`DiscoverConfig`).
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
        if self.config is not None:
            written["config"] = self.config.save(config_path(path))
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


@dataclass
class _Inputs:
    """What :func:`discover` works on, resolved and checked before any model work."""

    prompts: list[str]
    texts: list[str]  # the prompts as model input (chat template applied when ``chat``)
    evaluation: list[str]  # the prompts completions are scored on
    held_out: bool
    source: int
    target: int
    positions: Positions
    radius: float | None  # None: calibrated on the slice
    orthogonal: bool
    fixed: int  # rows of the orthonormal basis of ``orthogonal_to``
    rank_by: str
    side_texts: list[str] | None
    norm_grid: list[float] | None
    spec: SearchSpec
    init: torch.Tensor | None
    orthogonal_to: torch.Tensor | None
    judge: CompletionScorer | None

    @property
    def radius_source(self) -> str:
        return "given" if self.radius is not None else "calibrated"


@dataclass
class _Measured:
    """The readouts of the found vectors, in training order (``None``: not asked for)."""

    sweep: RadiusSweep | None = None
    baseline: Baseline | None = None
    scores: list[VectorScores] | None = None
    curves: list[NormCurve] | None = None
    side_values: list[float] | None = None


def discover(
    handle: ModelHandle,
    prompts: Sequence[str],
    config: DiscoverConfig | None = None,
    *,
    eval_prompts: Sequence[str] | None = None,
    init: torch.Tensor | None = None,
    orthogonal_to: torch.Tensor | None = None,
    judge: CompletionScorer | None = None,
    output: str | Path | None = None,
    progress: bool = False,
    **settings: Any,
) -> DiscoveryResult:
    """Discover ``config.num`` steering vectors at layer ``config.source`` without labels; score and rank them.

    Args:
        handle: the model.
        prompts: user prompts to discover on (the chat template is applied when ``config.chat``).
        config: the settings (:class:`~reptune.discovery.config.DiscoverConfig`; default: its defaults).
        eval_prompts: held-out prompts for scoring (default: the training prompts, flagged
            ``held_out: false`` in the report).
        init: ``[m, hidden]`` starting vectors for MELBO (search around promising vectors), the
            starts of anneal and the starting directions of cmaes.
        orthogonal_to: ``[e, hidden]`` earlier vectors all new ones must be orthogonal to.
        judge: ``judge(prompts, completions) -> scores`` (e.g. an LLM judge; the hook for the
            evaluation suite's :class:`~reptune.evaluation.judges.PairwiseScorer`).
        output: when given, :meth:`DiscoveryResult.save` to this ``.safetensors`` path (with the
            config as ``STEM.discover_config.json``).
        progress: progress bars.
        **settings: :class:`DiscoverConfig` fields by name, replacing those of ``config``
            (``discover(handle, prompts, method="random", num=4)``).

    Raises:
        DiscoveryError: unknown method, source >= target, radius <= 0, no prompts, more
            orthogonal vectors than hidden dimensions, a metric asked for without its inputs.
    """
    started = time.perf_counter()
    config = DiscoverConfig.from_options(config, **settings).validate()
    inputs = _prepare(handle, prompts, config, eval_prompts=eval_prompts, init=init, orthogonal_to=orthogonal_to, judge=judge)
    timings: dict[str, float] = {}
    slices = _timed(timings, "cache_s", build_slices, handle, inputs.texts, inputs.source, inputs.target, inputs.positions,
                    prompt_batch_size=config.prompt_batch_size)
    calibration = None
    radius = inputs.radius
    if radius is None:
        calibration = _timed(timings, "calibrate_s", calibrate_radius, slices, ratio=config.calibration_ratio,
                             num_directions=config.calibration_directions, seed=config.seed, progress=progress)
        radius = calibration.radius
    vectors, method_scores, history, found = _timed(timings, "train_s", _fit, handle, slices, config, inputs, radius, progress)
    run_settings = _base_settings(config, inputs) | found
    if inputs.radius is None:
        run_settings.update({"calibration_ratio": config.calibration_ratio, "calibration_directions": config.calibration_directions})
    measured = _measure(handle, slices, config, inputs, vectors, radius, run_settings, progress, timings)
    del slices
    if inputs.side_texts is not None:
        measured.side_values = _timed(timings, "side_effects_s", side_effect_scores, handle, vectors, inputs.source, inputs.side_texts).tolist()
        run_settings.update({"side_effect_prompts": len(inputs.side_texts), "side_effect_penalty": float(config.side_effect_penalty)})
    own_penalised = _penalty_inside(config, inputs)
    order = _rank(method_scores, measured.scores, inputs.rank_by, config.method, measured.side_values, float(config.side_effect_penalty),
                  own_penalised=own_penalised)
    run_settings["rank_by"] = inputs.rank_by
    ranked = _ranked(handle, config, inputs, radius, vectors, method_scores, order, measured, run_settings)
    timings["total_s"] = time.perf_counter() - started
    result = DiscoveryResult(
        method=config.method, model_id=handle.model_id, source=inputs.source, target=inputs.target, radius=float(radius),
        radius_source=inputs.radius_source, rank_by=inputs.rank_by, vectors=ranked, prompts=inputs.prompts,
        eval_prompts=inputs.evaluation, held_out=inputs.held_out, settings=run_settings, baseline=measured.baseline, calibration=calibration,
        sweep=measured.sweep, history=history, timings=timings,
        norm=None if measured.curves is None else [measured.curves[item.index] for item in ranked], config=config,
    )
    if output is not None:
        result.save(output)
    return result


def _timed(timings: dict[str, float], key: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, its wall time recorded as ``timings[key]`` (seconds)."""
    tick = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[key] = time.perf_counter() - tick
    return out


def _rows(vectors: torch.Tensor | None, hidden_size: int) -> int:
    """How many ``[hidden]`` rows ``vectors`` holds (0 for ``None``)."""
    return 0 if vectors is None else int(torch.as_tensor(vectors).reshape(-1, hidden_size).shape[0])


def _prepare(
    handle: ModelHandle, prompts: Sequence[str], config: DiscoverConfig, *, eval_prompts: Sequence[str] | None,
    init: torch.Tensor | None, orthogonal_to: torch.Tensor | None, judge: CompletionScorer | None,
) -> _Inputs:
    """The checks that need the model or the inputs beside the config (one-line errors), and what they resolve."""
    prompts = [str(prompt) for prompt in prompts]
    if not prompts:
        raise DiscoveryError("no prompts: discovery needs at least one prompt")
    if empty := [index for index, prompt in enumerate(prompts) if not prompt.strip()]:
        raise DiscoveryError(f"prompt {empty[0]} is empty")
    default_source, default_target = default_layers(handle.num_layers)
    source, target = check_layers(handle, default_source if config.source is None else config.source,
                                  default_target if config.target is None else config.target)
    if init is not None and config.method not in ("melbo", "anneal", "cmaes"):
        raise DiscoveryError("starting vectors (init / --init) work with methods melbo, anneal and cmaes")
    orthogonal = config.method == "dct" if config.orthogonal is None else config.orthogonal
    fixed = orthonormal_basis(orthogonal_to, handle.hidden_size)
    if orthogonal or fixed.shape[0]:
        check_orthogonal_room(config.num if orthogonal else 1, handle.hidden_size, fixed.shape[0])
    if config.logit_tokens is not None:
        token_id(handle.tokenizer, config.logit_tokens[0]), token_id(handle.tokenizer, config.logit_tokens[1])
    side_texts = resolve_side_effect_prompts(config.side_effects)
    rank_by = config.rank_key(judge is not None)
    if eval_prompts is not None and not list(eval_prompts):
        raise DiscoveryError("eval_prompts is empty")
    spec = config.search or SearchSpec()
    if config.method in SEARCH_METHODS:
        check_search(config.method, spec, config.num, handle.hidden_size, logit_tokens=config.logit_tokens, match=config.match,
                     judge=judge, init_rows=_rows(init, handle.hidden_size))
    norm_grid = config.norm_grid()
    positions = Positions.parse(config.positions)
    return _Inputs(
        prompts=prompts, texts=format_prompts(handle, prompts, chat=config.chat),
        evaluation=list(eval_prompts) if eval_prompts is not None else prompts,
        held_out=eval_prompts is not None and list(eval_prompts) != prompts, source=source, target=target, positions=positions,
        radius=config.radius_value(), orthogonal=orthogonal, fixed=int(fixed.shape[0]), rank_by=rank_by, side_texts=side_texts,
        norm_grid=norm_grid, spec=spec, init=init, orthogonal_to=orthogonal_to, judge=judge,
    )


def _base_settings(config: DiscoverConfig, inputs: _Inputs) -> dict[str, Any]:
    """The settings every method records first (in this order: the report and the vector metadata list them so)."""
    return {"num": config.num, "positions": inputs.positions.spec(), "chat": config.chat, "orthogonal": inputs.orthogonal,
            "orthogonal_to": inputs.fixed, "seed": config.seed, "prompt_batch_size": config.prompt_batch_size}


Fitted = tuple[torch.Tensor, torch.Tensor, list[list[float]], dict[str, Any]]  # vectors [k, hidden], method scores [k], history, settings


def _fit(handle: ModelHandle, slices: Sequence[LayerSlice], config: DiscoverConfig, inputs: _Inputs, radius: float, progress: bool) -> Fitted:
    """Train / search / fit the vectors with ``config.method``."""
    if config.method == "melbo":
        return _fit_melbo(handle, slices, config, inputs, radius, progress)
    if config.method == "random":
        return _fit_random(slices, config, inputs, radius, progress)
    if config.method in SEARCH_METHODS:
        return _fit_search(handle, slices, config, inputs, radius)
    dct = fit_dct(slices, config.num, radius, iters=config.dct_iters, orthogonal=inputs.orthogonal, seed=config.seed)
    return dct.vectors, dct.alpha, [dct.history], {"dct_iters": config.dct_iters, "response": dct.response.tolist(), "max_overlap": dct.max_overlap}


def _penalty(handle: ModelHandle, config: DiscoverConfig, inputs: _Inputs) -> SideEffectPenalty | None:
    """The side-effect penalty the optimising methods (melbo, anneal, cmaes) subtract from their
    objective: ``None`` without ``side_effect_penalty`` (or without side-effect texts)."""
    penalty = float(config.side_effect_penalty)
    if inputs.side_texts is None or not penalty:
        return None
    return SideEffectPenalty(SideEffects(handle, inputs.source, inputs.side_texts), penalty)


def _fit_melbo(handle: ModelHandle, slices: Sequence[LayerSlice], config: DiscoverConfig, inputs: _Inputs, radius: float, progress: bool) -> Fitted:
    run = train_melbo(slices, config.num, radius, steps=config.steps, lr=config.lr, p=config.p, q=config.q, orthogonal=inputs.orthogonal,
                      orthogonal_order=config.orthogonal_order, orthogonal_to=inputs.orthogonal_to, init=inputs.init, seed=config.seed,
                      vector_batch_size=config.vector_batch_size, penalty=_penalty(handle, config, inputs), progress=progress)
    settings = {"steps": config.steps, "lr": config.lr, "p": config.p, "q": config.q, "init": _rows(inputs.init, handle.hidden_size), **run.settings}
    return run.vectors, run.objective, run.history.T.tolist(), settings


def _fit_random(slices: Sequence[LayerSlice], config: DiscoverConfig, inputs: _Inputs, radius: float, progress: bool) -> Fitted:
    run = random_search(slices, config.num, radius, candidates=config.candidates, orthogonal=inputs.orthogonal,
                        orthogonal_order=config.orthogonal_order, orthogonal_to=inputs.orthogonal_to, refine_steps=config.refine_steps,
                        lr=config.lr, p=config.p, q=config.q, seed=config.seed, progress=progress)
    settings = {"p": config.p, "q": config.q, "lr": config.lr, **{k: v for k, v in run.settings.items() if k != "candidate_objective"}}
    return run.vectors, run.objective, run.history.T.tolist(), settings


def _fit_search(handle: ModelHandle, slices: Sequence[LayerSlice], config: DiscoverConfig, inputs: _Inputs, radius: float) -> Fitted:
    penalty = _penalty(handle, config, inputs)
    objective = build_objective(inputs.spec, slices, handle, inputs.source, inputs.prompts, chat=config.chat, p=config.p, q=config.q,
                                logit_tokens=config.logit_tokens, match=config.match, judge=inputs.judge, penalty=penalty)
    vectors, method_scores, found = run_search(config.method, inputs.spec, objective, slices, config.num, radius, init=inputs.init,
                                               p=config.p, q=config.q, seed=config.seed, penalty=penalty)
    return vectors, method_scores, [], {"p": config.p, "q": config.q, **found}


def _measure(
    handle: ModelHandle, slices: Sequence[LayerSlice], config: DiscoverConfig, inputs: _Inputs, vectors: torch.Tensor, radius: float,
    settings: dict[str, Any], progress: bool, timings: dict[str, float],
) -> _Measured:
    """The radius sweep, the completions' scores and the norm curves (what needs the slice); records their settings."""
    measured = _Measured()
    if config.sweep:
        measured.sweep = _timed(timings, "sweep_s", sweep_radius, slices, p=config.p, q=config.q, seed=config.seed)
    readouts = {"max_new_tokens": config.max_new_tokens, "diverge_within": config.diverge_within, "logit_tokens": config.logit_tokens,
                "match": config.match, "judge": inputs.judge}
    if config.score:
        measured.baseline, measured.scores = _timed(timings, "score_s", score_vectors, handle, vectors, inputs.source, inputs.evaluation,
                                                    chat=config.chat, progress=progress, **readouts)
        settings.update({"max_new_tokens": config.max_new_tokens, "diverge_within": config.diverge_within,
                         "logit_tokens": list(config.logit_tokens) if config.logit_tokens else None, "match": list(config.match),
                         "judge": inputs.judge is not None})
    if config.tune_norm is not False:
        grid = inputs.norm_grid or default_grid(radius)
        measured.curves = _timed(timings, "norm_s", norm_curves, slices, vectors, grid, p=config.p, q=config.q,
                                 handle=handle if config.score else None, layer=inputs.source, prompts=inputs.evaluation, chat=config.chat,
                                 **readouts)
        settings["norm_grid"] = grid
    return measured


def _ranked(
    handle: ModelHandle, config: DiscoverConfig, inputs: _Inputs, radius: float, vectors: torch.Tensor, method_scores: torch.Tensor,
    order: Sequence[int], measured: _Measured, settings: dict[str, Any],
) -> list[DiscoveredVector]:
    """The vectors by rank, each a :class:`SteeringVector` at the source layer with its scores in the metadata."""
    ranked = []
    for rank, index in enumerate(order, 1):
        item_scores = measured.scores[index] if measured.scores is not None else None
        score_dict = {METHOD_SCORE[config.method]: float(method_scores[index])}
        if item_scores is not None:
            score_dict.update({key: value for key, value in item_scores.metrics().items() if value is not None})
        if measured.side_values is not None:
            score_dict["side_effect"] = measured.side_values[index]
        if measured.curves is not None:
            curve = measured.curves[index]
            score_dict.update({"growth": curve.growth, "appear_radius": curve.appear_radius, "degenerate_radius": curve.degenerate_radius,
                               "best_radius": curve.best_radius})
        meta = VectorMeta(
            model_id=handle.model_id, revision=handle.revision, hidden_size=handle.hidden_size, num_layers=handle.num_layers,
            method=config.method, positions=inputs.positions.spec(), normalization="radius", dataset=config.dataset or "prompts",
            dataset_hash=sha256_json(inputs.prompts),
            extra={
                "radius": radius, "radius_source": inputs.radius_source, "rank": rank, "index": int(index), "num_vectors": config.num,
                "source_layer": inputs.source, "target_layer": inputs.target, "best_layers": [inputs.source], "rank_by": inputs.rank_by,
                "scores": score_dict, "discovery": {k: v for k, v in settings.items() if k != "response"},
            },
        )
        ranked.append(DiscoveredVector(rank=rank, index=int(index), vector=SteeringVector({inputs.source: vectors[index]}, meta),
                                       method_score=float(method_scores[index]), scores=item_scores,
                                       side_effect=None if measured.side_values is None else measured.side_values[index]))
    return ranked


def _penalty_inside(config: DiscoverConfig, inputs: _Inputs) -> bool:
    """Whether the method's own score already is ``objective - penalty x side_effect`` (:func:`_penalty`)."""
    return config.method in PENALISED_METHODS and inputs.side_texts is not None and bool(config.side_effect_penalty)


def _rank(
    method_scores: torch.Tensor, scores: list[VectorScores] | None, rank_by: str, method: str,
    side_effects: list[float] | None = None, penalty: float = 0.0, *, own_penalised: bool = False,
) -> list[int]:
    """Indices by rank: the primary metric descending (``side_effect``: ascending), minus
    ``penalty * side_effect`` when given (not again when the primary is the method's own score
    and that already subtracts it: ``own_penalised``); ties broken by the method's score."""
    count = int(method_scores.shape[0])
    own = [float(abs(value)) if method == "dct" else float(value) for value in method_scores]
    by_own = rank_by == "method" or (scores is None and rank_by != "side_effect")

    def primary(index: int) -> float:
        if side_effects is None or not penalty or (by_own and own_penalised):
            return base(index)
        return base(index) - penalty * side_effects[index]

    def base(index: int) -> float:
        if rank_by == "side_effect" and side_effects is not None:
            return -side_effects[index]
        if rank_by == "method" or scores is None:
            return own[index]
        value = {"diverge": scores[index].diverge, "logit": scores[index].logit_diff, "match": scores[index].match,
                 "judge": scores[index].judge}[rank_by]
        return float("-inf") if value is None else float(value)

    return sorted(range(count), key=lambda index: (-primary(index), -own[index], index))
