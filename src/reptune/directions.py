"""Reducing contrast activations to one direction per layer, and scanning layers.

Methods (all in float32 on the CPU):

* ``mean-diff``: mean over pairs of ``positive - negative``.
* ``pca``: first principal axis of the pair differences, taken over the symmetric set
  ``{d_i, -d_i}`` (the deterministic form of RepE's random pair flipping), sign fixed so that
  positives project higher than negatives on average.
* ``probe``: weight vector of an L2-regularised logistic regression separating positive from
  negative activations (fit on standardised features, mapped back to activation space).

Normalisation (``normalize``): ``gap`` (default) scales the unit direction ``u`` to
``mean_i((pos_i - neg_i) . u) * u``, so multiplier 1 moves activations by the average
contrast along ``u`` and multipliers mean the same for every method (for mean-diff this is the
raw mean difference); ``unit`` gives norm 1; ``none`` keeps each method's raw output.

**Layer scan and the best-layer rule.** Pairs are split (seeded) into train (75%) and
held-out (25%). Per layer the scan fits the direction on train pairs and reports on held-out
pairs: ``pair_acc`` (fraction of pairs whose positive projects above its negative),
``probe_acc`` (a logistic probe's accuracy classifying single activations as positive or
negative), ``gap`` (mean projection difference, activation units), ``effect`` (gap over the
pooled within-class std of projections, Cohen's d), ``norm`` (norm of the final vector) and,
when pairs carry labels, ``label_acc`` (a probe's held-out accuracy reading the label, e.g. the
statement's truth, from positive-side activations). **Rule:** layers are ranked by
``pair_acc`` (rounded to 0.01), then by ``effect``, among the scanned layers in the middle
half of the model (``n/4 <= L < 3n/4``; all scanned layers if none is there). Late layers
separate contrasts best but steer worst (they feed the unembedding almost directly), and the
first quarter has not yet read the context; the best layers are the top ``k`` of that ranking.

**Why** :func:`extract_vector` **lives here, not in** :mod:`reptune.vectors`. It is the whole
extraction: it reads the contrast activations (:mod:`reptune.activations`), fits a direction per
layer (:func:`fit_direction`), scans the layers (:func:`scan_layers`) and only then wraps the
result in a :class:`~reptune.vectors.SteeringVector`. ``vectors`` is the file format and sits
below ``directions`` on the import ladder, so it cannot call the fitting code; the vector code
stays a format any producer (extraction, discovery, a GGUF file) writes into.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from reptune.activations import read_pair_activations
from reptune.data.pairs import pairs_hash
from reptune.errors import DataError, ReptuneError
from reptune.precision import machine_info
from reptune.sites import Positions
from reptune.vectors import SteeringVector, VectorMeta

METHODS = ("mean-diff", "pca", "probe")
NORMALIZATIONS = ("gap", "unit", "none")


def _check_inputs(positive: torch.Tensor, negative: torch.Tensor) -> None:
    if positive.ndim != 2 or positive.shape != negative.shape:
        raise ReptuneError(f"expected positive and negative activations of equal shape [pairs, hidden], got {tuple(positive.shape)} and {tuple(negative.shape)}")
    if positive.shape[0] < 1:
        raise DataError("no pairs to fit a direction on")


def fit_logistic(features: torch.Tensor, targets: torch.Tensor, *, l2: float = 1e-2, max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression on standardised features (LBFGS, float64).

    Args:
        features: ``[n, d]``. targets: ``[n]`` in {0, 1}.
        l2: penalty on the standardised weights (mean loss + ``l2/2 * ||w||^2``).

    Returns:
        ``(weight [d], bias [])`` in the *original* feature space, float32.
    """
    x = features.double()
    y = targets.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    raw_weight = weight.detach() / std
    raw_bias = bias.detach() - (raw_weight * mean).sum()
    return raw_weight.float(), raw_bias.float()


def fit_direction(positive: torch.Tensor, negative: torch.Tensor, method: str = "mean-diff", *, normalize: str = "gap") -> torch.Tensor:
    """One direction from paired activations.

    Args:
        positive, negative: ``[pairs, hidden]`` activations (row i of each is one pair).
        method: ``mean-diff``, ``pca`` or ``probe``.
        normalize: ``gap``, ``unit`` or ``none`` (see module docstring).

    Returns:
        ``[hidden]`` float32 vector, oriented so positives project higher.
    """
    if method not in METHODS:
        raise ReptuneError(f"unknown method {method!r}: choose {', '.join(METHODS)}")
    if normalize not in NORMALIZATIONS:
        raise ReptuneError(f"unknown normalization {normalize!r}: choose {', '.join(NORMALIZATIONS)}")
    _check_inputs(positive, negative)
    pos, neg = positive.float(), negative.float()
    diffs = pos - neg
    if method == "mean-diff":
        raw = diffs.mean(0)
    elif method == "pca":
        # top right-singular vector of the differences = first PC of {d_i, -d_i}
        _, _, vh = torch.linalg.svd(diffs.double(), full_matrices=False)
        raw = vh[0].float()
    else:
        features = torch.cat([pos, neg])
        targets = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        raw, _ = fit_logistic(features, targets)
    norm = raw.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ReptuneError(f"{method} direction is zero or not finite: positive and negative activations do not differ "
                           "(with positions last, last:N or marker:TEXT, read where the two sides differ: a position before "
                           "the first differing token sees the same text on both sides)")
    unit = raw / norm
    gap = float((diffs @ unit).mean())
    if gap < 0:  # orient: positives project higher
        unit, raw, gap = -unit, -raw, -gap
    if normalize == "unit":
        return unit
    if normalize == "none":
        return raw
    return unit * gap


@dataclass
class LayerScore:
    """Held-out quality of one layer's direction (see module docstring for definitions)."""

    layer: int
    pair_acc: float
    probe_acc: float
    gap: float
    effect: float
    norm: float
    rel_norm: float
    label_acc: float | None = None


@dataclass
class LayerScan:
    """Per-layer scores plus the rule's choice of best layers."""

    method: str
    scores: list[LayerScore]
    num_train: int
    num_test: int
    seed: int
    num_layers: int = 0
    rule: str = field(default="rank by held-out pair_acc (0.01), then effect size, among layers n/4 <= L < 3n/4")

    def ranked(self) -> list[LayerScore]:
        """Scores best first by the documented rule (middle half of the model only)."""
        total = self.num_layers or max(s.layer for s in self.scores) + 1
        middle = [s for s in self.scores if total / 4 <= s.layer < 3 * total / 4] or self.scores
        return sorted(middle, key=lambda s: (round(s.pair_acc, 2), s.effect), reverse=True)

    def best_layers(self, k: int = 1) -> list[int]:
        """The ``k`` best layers by the rule, best first (``steer``'s default layer is the first)."""
        if k < 1:
            raise ReptuneError("k must be at least 1")
        return [score.layer for score in self.ranked()[:k]]

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "rule": self.rule,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "seed": self.seed,
            "num_layers": self.num_layers,
            "best_layers": self.best_layers(min(3, len(self.scores))),
            "layers": [asdict(score) for score in self.scores],
        }


def scan_layers(
    positive: dict[int, torch.Tensor],
    negative: dict[int, torch.Tensor],
    *,
    method: str = "mean-diff",
    labels: Sequence[int | None] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    num_layers: int | None = None,
) -> LayerScan:
    """Score each layer's direction on held-out pairs.

    Args:
        positive, negative: ``{layer: [pairs, hidden]}`` activations.
        labels: per-pair labels (e.g. statement truth) for ``label_acc``; ``None`` skips it.
        test_fraction: share of pairs held out (at least two pairs each side).
        num_layers: the model's layer count, for the best-layer rule (default: max layer + 1).
    """
    layers = sorted(positive)
    if not layers:
        raise DataError("no layers to scan")
    count = positive[layers[0]].shape[0]
    if count < 4:
        raise DataError(f"a layer scan needs at least 4 pairs, got {count}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    num_test = min(count - 2, max(2, round(count * test_fraction)))
    test, train = order[:num_test], order[num_test:]
    label_tensor = None
    if labels is not None and all(label is not None for label in labels) and len(set(labels)) == 2:
        label_tensor = torch.tensor([int(label) for label in labels])  # type: ignore[arg-type]
    scores = []
    for layer in layers:
        pos, neg = positive[layer].float(), negative[layer].float()
        direction = fit_direction(pos[train], neg[train], method, normalize="unit")
        proj_pos, proj_neg = pos[test] @ direction, neg[test] @ direction
        pair_acc = float((proj_pos > proj_neg).float().mean())
        gap = float((proj_pos - proj_neg).mean())
        pooled = torch.sqrt(0.5 * (proj_pos.var(unbiased=False) + proj_neg.var(unbiased=False))).clamp_min(1e-8)
        weight, bias = fit_logistic(torch.cat([pos[train], neg[train]]), torch.cat([torch.ones(len(train)), torch.zeros(len(train))]))
        test_logits = torch.cat([pos[test], neg[test]]) @ weight + bias
        test_targets = torch.cat([torch.ones(num_test), torch.zeros(num_test)])
        probe_acc = float(((test_logits > 0).float() == test_targets).float().mean())
        label_acc = None
        if label_tensor is not None and len(set(label_tensor[train].tolist())) == 2:
            w, b = fit_logistic(pos[train], label_tensor[train].float())
            label_acc = float((((pos[test] @ w + b) > 0).long() == label_tensor[test]).float().mean())
        full = fit_direction(pos, neg, method, normalize="gap")
        mean_norm = float(torch.cat([pos, neg]).norm(dim=-1).mean())
        scores.append(
            LayerScore(
                layer=layer,
                pair_acc=pair_acc,
                probe_acc=probe_acc,
                gap=gap,
                effect=float(gap / pooled),
                norm=float(full.norm()),
                rel_norm=float(full.norm()) / max(mean_norm, 1e-8),
                label_acc=label_acc,
            )
        )
    return LayerScan(method=method, scores=scores, num_train=len(train), num_test=num_test, seed=seed, num_layers=num_layers or max(layers) + 1)


def extract_vector(
    handle: Any,
    pairs: Sequence[Any],
    layers: str | int | Sequence[int] | None = None,
    *,
    method: str = "mean-diff",
    positions: str = "last",
    normalize: str = "gap",
    batch_size: int = 8,
    padding_side: str = "left",
    dataset: str | None = None,
    seed: int = 0,
    scan: bool = True,
    progress: bool = True,
    per_position: bool = False,
) -> tuple[SteeringVector, LayerScan | None]:
    """Read contrast activations once and build a :class:`~reptune.vectors.SteeringVector`.

    Args:
        handle: a :class:`~reptune.models.ModelHandle`.
        pairs: :class:`~reptune.data.ContrastPair` list.
        layers: layer spec (default: all layers).
        method, normalize: see module docstring.
        positions: token positions to read (see :mod:`reptune.sites`).
        dataset: where the pairs came from, stored in the metadata.
        scan: also score every layer on held-out pairs (same activations, no extra forward).
        per_position: with positions ``last:N``, fit one direction per position instead of
            one over their mean; returns ``(list of N vectors, list of N scans)`` in token order,
            each vector's ``meta.positions`` naming its position (e.g. ``last:3@-2``).

    Returns:
        ``(vector, scan)``; the vector holds one direction per requested layer.
    """
    if per_position:
        return _extract_per_position(handle, pairs, layers, method=method, positions=positions, normalize=normalize,
                                     batch_size=batch_size, padding_side=padding_side, dataset=dataset, seed=seed,
                                     scan=scan, progress=progress)

    if not pairs:
        raise DataError("no contrast pairs to extract a vector from")
    if method not in METHODS:
        raise ReptuneError(f"unknown method {method!r}: choose {', '.join(METHODS)}")
    if normalize not in NORMALIZATIONS:
        raise ReptuneError(f"unknown normalization {normalize!r}: choose {', '.join(NORMALIZATIONS)}")
    position_spec = Positions.parse(positions)
    positive, negative = read_pair_activations(
        handle, pairs, layers, position_spec, batch_size=batch_size, padding_side=padding_side, progress=progress
    )
    return _vector_from_activations(handle, pairs, positive, negative, method, position_spec.spec(), normalize, dataset, seed, scan)


def _vector_from_activations(
    handle: Any,
    pairs: Sequence[Any],
    positive: dict[int, torch.Tensor],
    negative: dict[int, torch.Tensor],
    method: str,
    positions: str,
    normalize: str,
    dataset: str | None,
    seed: int,
    scan: bool,
) -> tuple[SteeringVector, LayerScan | None]:

    directions = {layer: fit_direction(positive[layer], negative[layer], method, normalize=normalize) for layer in positive}
    layer_scan = None
    if scan and len(pairs) >= 4:
        layer_scan = scan_layers(positive, negative, method=method, labels=[pair.label for pair in pairs], seed=seed, num_layers=handle.num_layers)
    meta = VectorMeta(
        model_id=handle.model_id,
        revision=handle.revision,
        hidden_size=handle.hidden_size,
        num_layers=handle.num_layers,
        method=method,
        positions=positions,
        normalization=normalize,
        dataset=dataset,
        dataset_hash=pairs_hash(pairs),
        num_pairs=len(pairs),
        extra={
            # without a scan there is no best layer: the key is left out (load_vector refuses a null)
            **({"best_layers": layer_scan.best_layers(min(3, len(directions)))} if layer_scan else {}), "seed": seed,
            "precision": handle.describe()["precision"], "machine": machine_info(),
        },
    )
    return SteeringVector(directions, meta), layer_scan


def _extract_per_position(handle: Any, pairs: Sequence[Any], layers: Any, *, method: str, positions: str, normalize: str,
                          batch_size: int, padding_side: str, dataset: str | None, seed: int, scan: bool,
                          progress: bool) -> tuple[list[Any], list[LayerScan | None]]:

    spec = Positions.parse(positions)
    if spec.kind != "last":
        raise ReptuneError(f"per-position extraction needs positions last:N, not {spec.spec()!r}")
    positive, negative = read_pair_activations(
        handle, pairs, layers, spec, batch_size=batch_size, padding_side=padding_side, progress=progress, per_position=True
    )
    vectors, scans = [], []
    for index in range(spec.count):
        offset = index - spec.count  # -N .. -1
        vector, layer_scan = _vector_from_activations(
            handle, pairs, {k: v[:, index] for k, v in positive.items()}, {k: v[:, index] for k, v in negative.items()},
            method, f"{spec.spec()}@{offset}", normalize, dataset, seed, scan,
        )
        vectors.append(vector)
        scans.append(layer_scan)
    return vectors, scans
