"""Discovery configuration: one dataclass, checked before any model work, JSON round trip.

:class:`DiscoverConfig` holds every setting of :func:`reptune.discovery.discover` (the twin of
``reptune discover``); the inputs that are data rather than settings (prompts, held-out prompts,
starting vectors, a judge) are arguments of ``discover`` itself. :meth:`DiscoverConfig.validate`
raises one-line :class:`~reptune.discovery.common.DiscoveryError` messages for everything that
can be checked without the model; the CLI builds a config from its options and calls it with
its flag names, so both front ends refuse the same inputs with the same words. The config is
saved as ``STEM.discover_config.json`` beside the vector files (:meth:`DiscoverConfig.save`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reptune._io import write_json_atomic
from reptune.discovery.common import DiscoveryError, check_number, check_radius
from reptune.discovery.dct import DEFAULT_RATIO
from reptune.discovery.melbo import ORTHOGONAL_ORDERS, PAPER_LR
from reptune.discovery.norm import check_grid
from reptune.discovery.search import SEARCH_METHODS, SearchSpec
from reptune.discovery.side_effects import resolve_side_effect_prompts
from reptune.sites import Positions

METHODS = ("melbo", "random", "dct", "anneal", "cmaes")
RANK_KEYS = ("auto", "method", "diverge", "logit", "match", "judge", "side_effect")
# what the messages call a field when no names are given (the Python API's wording)
_PYTHON_NAMES = {
    "method": "discovery method",
    "orthogonal_order": "orthogonal order",
    "num": "number of vectors",
    "side_effect_penalty": "side-effect penalty",
    "side_effects": "side-effect prompts (side_effects / --side-effects)",
}
# (field, low, low excluded, integer, None allowed): the numeric settings and their ranges
_NUMBERS = (
    ("lr", 0, True, False, False),
    ("p", 0, True, False, False),
    ("q", 0, True, False, False),
    ("num", 1, False, True, False),
    ("steps", 0, False, True, False),
    ("dct_iters", 1, False, True, False),
    ("refine_steps", 0, False, True, False),
    ("candidates", 1, False, True, True),
    ("max_new_tokens", 1, False, True, False),
    ("diverge_within", 1, False, True, False),
    ("side_effect_penalty", 0, False, False, False),
)


@dataclass
class DiscoverConfig:
    """Every setting of a discovery run; saved as ``STEM.discover_config.json`` beside the vectors.

    Attributes:
        method: ``melbo`` (learned, :mod:`~reptune.discovery.melbo`), ``random`` (norm-matched
            random vectors; with ``candidates``/``refine_steps`` a random search), ``dct``
            (exponential deep causal transcoder, :mod:`~reptune.discovery.dct`), ``anneal`` or
            ``cmaes`` (:mod:`~reptune.discovery.search`).
        source, target: layers (site convention: output of block L); default ``n//4`` and ``3n//4``.
        radius: the norm ``R`` of every vector, or ``"auto"``: the DCT calibration (the radius
            where the slice's nonlinear response is ``calibration_ratio`` times its linear one).
        num: how many vectors (DCT: factors).
        positions: token positions whose change counts (``all``, ``last:N``, ``marker:TEXT``).
        chat: apply the chat template to the prompts.
        steps, lr, p, q: MELBO training (paper defaults: 300 steps, lr 1e-3, p=2, q=1).
        orthogonal: vectors orthogonal to earlier ones (default: off for melbo/random, on for dct).
        orthogonal_order: melbo / random refinement with ``orthogonal``: ``sequential`` (the
            paper's: vector i trained after vectors 0..i-1 are frozen) or ``parallel`` (all at
            once, orthogonalised in order after every step; faster).
        candidates, refine_steps: method ``random`` only: keep the best ``num`` of ``candidates``
            random vectors by the objective, then take ``refine_steps`` local MELBO steps from each.
        dct_iters: DCT gradient iterations.
        calibration_ratio, calibration_directions: the ``radius="auto"`` calibration.
        score: generate and score completions (off: rank by the method's own score).
        max_new_tokens, diverge_within: greedy completion length; divergence window in tokens.
        logit_tokens: ``(A, B)``: report the next-token ``logit(A) - logit(B)`` readout.
        match: strings to look for in completions (case-insensitive).
        rank_by: ``auto`` (judge, else match, else logit, else the method's score), ``method``
            (MELBO objective / DCT alpha), ``diverge``, ``logit``, ``match``, ``judge`` or
            ``side_effect`` (smallest first).
        side_effects: ``"neutral"`` (the shipped neutral sentences), a prompts file or a list of
            plain texts: score every vector's KL to the unsteered model on them
            (:mod:`~reptune.discovery.side_effects`; column ``side_effect``, nats per token).
        side_effect_penalty: ``W >= 0``: melbo, anneal and cmaes optimise ``objective - W x side_effect``
            (melbo and gradient annealing with its gradient: a forward and a backward pass per vector
            and step on the side-effect texts), and vectors are ranked by ``primary - W x side_effect``
            (subtracted once: not again from a method score that already includes it). Needs ``side_effects``.
        sweep: also score random vectors on a log grid of radii (reported).
        tune_norm: ``True`` (grid ``R x (1/4 .. 8)``) or a radius grid: each vector's effect over
            the grid (:func:`reptune.discovery.norm.norm_curves`: objective, and with ``score`` the
            divergence, readouts, judge, degeneration; appear / degenerate / best radius; the
            per-dimension ``growth`` statistic), in the table, the report and ``STEM.norm.png``.
        search: settings of the ``anneal`` and ``cmaes`` methods (:class:`~reptune.discovery.search.SearchSpec`:
            budget, objective melbo/logit/match/judge, anneal mode, candidates, subspace, population).
        seed: seeds every random choice of the run (same seed, same vectors).
        prompt_batch_size, vector_batch_size: memory knobs (prompts per slice replay; vectors
            trained at once).
        dataset: a name for the prompts recorded in vector metadata.
    """

    method: str = "melbo"
    source: int | None = None
    target: int | None = None
    radius: float | str = "auto"
    num: int = 8
    positions: str = "all"
    chat: bool = True
    steps: int = 300
    lr: float = PAPER_LR
    p: float = 2.0
    q: float = 1.0
    orthogonal: bool | None = None
    orthogonal_order: str = "sequential"
    candidates: int | None = None
    refine_steps: int = 0
    dct_iters: int = 10
    calibration_ratio: float = DEFAULT_RATIO
    calibration_directions: int = 16
    score: bool = True
    max_new_tokens: int = 32
    diverge_within: int = 8
    logit_tokens: tuple[str, str] | None = None
    match: tuple[str, ...] = ()
    rank_by: str = "auto"
    side_effects: str | list[str] | None = None
    side_effect_penalty: float = 0.0
    sweep: bool = False
    tune_norm: bool | list[float] = False
    search: SearchSpec | None = None
    seed: int = 0
    prompt_batch_size: int = 16
    vector_batch_size: int | None = None
    dataset: str | None = None

    def __post_init__(self) -> None:
        # the spellings the Python API has always accepted, brought to one JSON-able form
        if isinstance(self.positions, Positions):
            self.positions = self.positions.spec()
        if isinstance(self.radius, str) and self.radius != "auto":
            try:
                self.radius = float(self.radius)
            except ValueError:
                pass  # validate() names it
        if self.logit_tokens is not None and not isinstance(self.logit_tokens, tuple):
            self.logit_tokens = tuple(self.logit_tokens)  # type: ignore[assignment]
        self.match = tuple(self.match or ())
        if isinstance(self.side_effects, Path):
            self.side_effects = str(self.side_effects)
        elif self.side_effects is not None and not isinstance(self.side_effects, str):
            self.side_effects = [str(text) for text in self.side_effects]
        if self.tune_norm is None:
            self.tune_norm = False
        elif not isinstance(self.tune_norm, bool):
            self.tune_norm = list(self.tune_norm)

    # ------------------------------------------------------------------ checks
    def validate(self, names: Mapping[str, str] | None = None) -> DiscoverConfig:
        """Raise a one-line :class:`DiscoveryError` on any setting that is wrong on its own or with
        the others (before any model work); returns the config.

        ``names``: what the messages call each field (the CLI passes its flags, so a message says
        ``--lr``; the default is the Python wording). The checks that need the model (layers,
        hidden size, tokens) or the other inputs (a judge, starting vectors) run in
        :func:`~reptune.discovery.discover`.
        """
        name = _namer(names)
        if self.method not in METHODS:
            raise DiscoveryError(f"unknown {name('method')} {self.method!r}: use {', '.join(METHODS)}")
        for key, low, above, integer, optional in _NUMBERS:
            check_number(name(key), getattr(self, key), low, above=above, integer=integer, optional=optional)
        if isinstance(self.radius, str) and self.radius != "auto":
            raise DiscoveryError(f"{name('radius')} must be a number > 0 or 'auto', got {self.radius!r}")
        self.radius_value()
        if self.source is not None and self.target is not None and 0 <= self.target <= self.source:
            raise DiscoveryError(f"{name('source')} {self.source} must come before {name('target')} {self.target}")
        if self.orthogonal_order not in ORTHOGONAL_ORDERS:
            raise DiscoveryError(f"{name('orthogonal_order')} must be sequential or parallel, got {self.orthogonal_order!r}")
        self._check_method_settings(name)
        self._check_ranking(name)
        if self.tune_norm is not False:
            self.norm_grid()
        Positions.parse(self.positions)
        if self.search is not None:
            self.search.validate(names)
        return self

    def _check_method_settings(self, name: Callable[[str], str]) -> None:
        """Settings that only one kind of method takes."""
        if self.search is not None and self.method not in SEARCH_METHODS:
            raise DiscoveryError("search settings (budget, objective, subspace) work with methods anneal and cmaes")
        if (self.candidates is not None or self.refine_steps) and self.method != "random":
            raise DiscoveryError(f"{name('candidates')} and {name('refine_steps')} (random search) work with method random")

    def _check_ranking(self, name: Callable[[str], str]) -> None:
        """The ranking key, the readouts it may rank by, and the side-effect penalty."""
        if self.rank_by not in RANK_KEYS:
            raise DiscoveryError(f"unknown {name('rank_by')} {self.rank_by!r}: use {', '.join(RANK_KEYS)}")
        if self.logit_tokens is not None and len(self.logit_tokens) != 2:
            raise DiscoveryError(f"{name('logit_tokens')} must be two strings, e.g. ('Sure', 'Sorry')")
        texts = resolve_side_effect_prompts(self.side_effects)
        if self.side_effect_penalty and texts is None:
            raise DiscoveryError(f"{name('side_effect_penalty')} needs {name('side_effects')}")

    def radius_value(self) -> float | None:
        """The given radius as a float, or ``None`` for ``"auto"`` (calibrated on the slice)."""
        if isinstance(self.radius, str):
            if self.radius == "auto":
                return None
            raise DiscoveryError(f"radius must be a number > 0 or 'auto', got {self.radius!r}")
        return check_radius(self.radius)

    def norm_grid(self) -> list[float] | None:
        """The checked radius grid of ``tune_norm``; ``None`` for the default grid (or no norm tuning)."""
        if self.tune_norm is True or self.tune_norm is False:
            return None
        return check_grid(list(self.tune_norm))

    def rank_key(self, judge: bool) -> str:
        """What ``rank_by`` ranks by for a run with (``judge=True``) or without a judge: ``auto``
        resolved (judge, else match, else logit, else the method's score); a one-line error when
        the key's readout is not asked for or the run does not score completions."""
        needs = {
            "logit": self.logit_tokens is not None,
            "match": bool(self.match),
            "judge": judge,
            "side_effect": self.side_effects is not None,
        }
        rank_by = self.rank_by
        if rank_by in needs and not needs[rank_by]:
            raise DiscoveryError(f"rank_by {rank_by!r} needs {'logit_tokens' if rank_by == 'logit' else rank_by} to be given")
        if rank_by == "auto":
            rank_by = next((key for key in ("judge", "match", "logit") if needs[key]), "method")
        if rank_by not in ("method", "side_effect") and not self.score:
            raise DiscoveryError(f"rank_by {rank_by!r} needs scoring (score=True)")
        return rank_by

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON values (``search`` through :meth:`SearchSpec.to_dict`)."""
        data = {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)}
        data["logit_tokens"] = None if self.logit_tokens is None else list(self.logit_tokens)
        data["match"] = list(self.match)
        data["search"] = None if self.search is None else self.search.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiscoverConfig:
        """The inverse of :meth:`to_dict`; unknown keys are a one-line error."""
        unknown = set(data) - {spec.name for spec in dataclasses.fields(cls)}
        if unknown:
            raise DiscoveryError(f"unknown discovery setting(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        if isinstance(values.get("search"), Mapping):
            values["search"] = SearchSpec.from_dict(values["search"])
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically); returns the path."""
        write_json_atomic(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> DiscoverConfig:
        """Read a config written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DiscoveryError(f"cannot read the discovery config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise DiscoveryError(f"{path}: expected a JSON object of discovery settings")
        return cls.from_dict(data)

    @classmethod
    def from_options(cls, config: DiscoverConfig | None = None, **settings: Any) -> DiscoverConfig:
        """``config`` with ``settings`` (fields by name) replacing its values; a new config from
        the defaults when ``config`` is ``None``."""
        if config is None:
            return cls(**settings)
        return dataclasses.replace(config, **settings) if settings else config


def _namer(names: Mapping[str, str] | None) -> Callable[[str], str]:
    """``name(field)``: what a message calls the field: ``names[field]``, else the field itself; the
    Python wording (:data:`_PYTHON_NAMES`) when no names are given."""
    given, fallback = dict(names or {}), _PYTHON_NAMES if names is None else {}
    return lambda key: given.get(key, fallback.get(key, key))


def config_path(path: str | Path) -> Path:
    """``STEM.discover_config.json`` beside the best vector file ``STEM.safetensors``."""
    stem = Path(path).with_suffix("")
    return stem.with_name(stem.name + ".discover_config.json")


__all__ = ["METHODS", "RANK_KEYS", "DiscoverConfig", "config_path"]
