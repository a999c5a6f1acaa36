"""Unsupervised discovery of steering vectors: MELBO, random baselines and search, DCT.

Users want vectors for behaviours they cannot write contrast prompts for (backdoors, latent
capabilities, refusal bypasses). Discovery finds them without labels, on the same site
convention (:mod:`reptune.sites`), hooks (:mod:`reptune.steering`) and vector files
(:mod:`reptune.vectors`) as the rest of reptune, so ``steer``, ``tune`` and ``eval`` take them.

* :mod:`~reptune.discovery.slice` — the engine: blocks ``source+1 .. target`` replayed on cached
  source-layer activations, ``k`` vectors per batch (:class:`LayerSlice`);
* :mod:`~reptune.discovery.melbo` — MELBO (Mack & Turner 2024), batched projected-gradient Adam,
  and local search around given vectors;
* :mod:`~reptune.discovery.baselines` — norm-matched random vectors, a log-grid sweep over R,
  random search;
* :mod:`~reptune.discovery.dct` — the exponential deep causal transcoder: radius calibration,
  orthogonalised gradient iteration, alpha by least squares;
* :mod:`~reptune.discovery.scoring` — greedy completions and metrics (divergence, logit readout,
  string match, a judge hook);
* :mod:`~reptune.discovery.side_effects` — KL to the unsteered model on neutral text (ranking
  column, search penalty, its gradient for MELBO and gradient annealing);
* :mod:`~reptune.discovery.norm` — norm tuning: curves over a radius grid, appear / degenerate
  radius, the per-dimension growth statistic;
* :mod:`~reptune.discovery.objectives`, :mod:`~reptune.discovery.anneal`,
  :mod:`~reptune.discovery.ensemble`, :mod:`~reptune.discovery.search` — search objectives
  (MELBO, readout, match, cached judge), annealing around promising vectors, CMA-ES in a
  subspace, and the ``anneal`` / ``cmaes`` methods;
* :mod:`~reptune.discovery.weights` — tuning a found vector in (``pos``) vs SFT on its generations;
* :mod:`~reptune.discovery.config` — :class:`DiscoverConfig`, every setting of a run, checked
  before any model work and saved beside the vectors;
* :mod:`~reptune.discovery.run` — :func:`discover` (the twin of ``reptune discover``), output
  files and the report (:mod:`~reptune.discovery.pipeline` is its former name, kept as a shim).
"""

from reptune.discovery.anneal import AnnealRun, anneal, anneal_gradient
from reptune.discovery.baselines import RadiusSweep, log_grid, random_search, random_vectors, sweep_radius
from reptune.discovery.common import DiscoveryError, load_prompts
from reptune.discovery.config import METHODS, DiscoverConfig
from reptune.discovery.dct import Calibration, DCTResult, calibrate_radius, fit_dct
from reptune.discovery.ensemble import EnsembleRun, cmaes_search, subspace_basis
from reptune.discovery.melbo import MelboRun, local_search, train_melbo
from reptune.discovery.norm import NormCurve, norm_curves
from reptune.discovery.objectives import (
    Objective,
    function_objective,
    judge_objective,
    match_objective,
    readout_objective,
    slice_objective,
)
from reptune.discovery.run import DiscoveredVector, DiscoveryResult, default_layers, discover, rank_path
from reptune.discovery.scoring import CompletionScorer, VectorScores, score_vectors
from reptune.discovery.search import SearchSpec
from reptune.discovery.side_effects import SideEffectPenalty, SideEffects, neutral_prompts, penalized, side_effect_scores
from reptune.discovery.slice import LayerSlice, build_slices

Judge = CompletionScorer  # the former name of CompletionScorer, kept for compatibility

__all__ = [
    "METHODS",
    "AnnealRun",
    "Calibration",
    "CompletionScorer",
    "DCTResult",
    "DiscoverConfig",
    "DiscoveredVector",
    "DiscoveryError",
    "DiscoveryResult",
    "EnsembleRun",
    "Judge",
    "LayerSlice",
    "MelboRun",
    "NormCurve",
    "Objective",
    "RadiusSweep",
    "SearchSpec",
    "SideEffectPenalty",
    "SideEffects",
    "VectorScores",
    "anneal",
    "anneal_gradient",
    "build_slices",
    "calibrate_radius",
    "cmaes_search",
    "default_layers",
    "discover",
    "fit_dct",
    "function_objective",
    "judge_objective",
    "load_prompts",
    "local_search",
    "log_grid",
    "match_objective",
    "neutral_prompts",
    "norm_curves",
    "penalized",
    "random_search",
    "random_vectors",
    "rank_path",
    "readout_objective",
    "score_vectors",
    "side_effect_scores",
    "slice_objective",
    "subspace_basis",
    "sweep_radius",
    "train_melbo",
]
