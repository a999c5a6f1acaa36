"""Counter-steering vectors the tuned models were not trained on (fair counter-steering).

The paper's robustness test counter-steers the honesty-tuned model with the very vector it was
tuned towards. That favours representation tuning: the model was trained to hold its
activations near that one direction. Here each tuned model is also attacked with

* an **other** vector for the same behaviour from different data: by default the *train*
  statements the main vector did not use, under another persona wording (``counter.other_data:
  persona``), or any contrast-pair set (JSONL pairs, CAA A/B items);
* **random** directions, the floor: what any push of that size does.

Both are rescaled to the norm of the training vector's direction at the steering layer, so a
counter-steering multiplier pushes equally hard with each (the files hold that layer only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reptune.data.pairs import ContrastPair, Statement, honesty_pairs
from reptune.errors import DataError
from reptune.models import ModelHandle
from reptune.vectors import SteeringVector, VectorMeta

OTHER_FILE = "counter-other.safetensors"
MIN_OTHER_PAIRS = 4


def random_name(index: int) -> str:
    """The name of the ``index``-th random direction (1-based): ``random1``, ``random2``, ..."""
    return f"random{index}"


def used_statements(pairs: Sequence[ContrastPair]) -> set[str]:
    """The statement texts a set of honesty persona pairs was built from (paired and unpaired)."""
    used: set[str] = set()
    for pair in pairs:
        meta = pair.meta or {}
        used.update(str(meta[key]) for key in ("statement", "true", "false") if key in meta)
    return used


def persona_pairs(statements: Sequence[Statement], used: set[str], tokenizer: Any, honest: str, dishonest: str,
                  limit: int | None) -> tuple[list[ContrastPair], str]:
    """Honesty pairs under other personas, from the statements the main vector did not use.

    Falls back to every statement (said in the returned note) when fewer than
    ``MIN_OTHER_PAIRS`` are unused: the wording then is the only difference.
    """
    unused = [s for s in statements if s.text not in used]
    note = f"{len(unused)} train statements the main vector did not use"
    if len(unused) < MIN_OTHER_PAIRS:
        unused, note = list(statements), "the main vector's own train statements (too few unused ones)"
    pairs = honesty_pairs(unused, tokenizer, honest_persona=honest, dishonest_persona=dishonest)
    return pairs[:limit] if limit is not None else pairs, note


def rescaled(direction: torch.Tensor, norm: float) -> torch.Tensor:
    """``direction`` [hidden] with its L2 norm set to ``norm`` (float32)."""
    direction = direction.detach().float()
    length = float(direction.norm())
    if not math.isfinite(length) or length == 0.0:
        raise DataError("a counter-steering direction has zero or non-finite norm")
    return direction * (norm / length)


def random_directions(hidden_size: int, count: int, norm: float, seed: int) -> list[torch.Tensor]:
    """``count`` seeded Gaussian directions [hidden_size], each with L2 norm ``norm``."""
    generator = torch.Generator().manual_seed(seed)
    return [rescaled(torch.randn(hidden_size, generator=generator, dtype=torch.float64).float(), norm) for _ in range(count)]


def single_layer_vector(handle: ModelHandle, layer: int, direction: torch.Tensor, method: str, dataset: str, **extra: Any) -> SteeringVector:
    """A vector file holding one direction at ``layer`` (what counter-steering adds)."""
    meta = VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers, method=method,
                      dataset=dataset, extra=dict(extra))
    return SteeringVector({layer: direction}, meta)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().reshape(1, -1), b.double().reshape(1, -1)).item())


def build_counter_vectors(
    handle: ModelHandle, vector: SteeringVector, layer: int, folder: Path, *, other_pairs: Sequence[ContrastPair] | None,
    other_note: str | None, random_count: int, random_seed: int, method: str, positions: str, normalize: str, batch_size: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Extract the other vector and draw the random directions; save each as a one-layer file.

    Args:
        vector: the training vector; its direction at ``layer`` sets the norm of every other one.
        other_pairs: contrast pairs for the other vector (``None``: no other vector).
        method, positions, normalize, batch_size: as the training vector was extracted.

    Returns:
        ``{"layer", "norm", "vectors": {name: {file, cosine_to_training, norm, pairs?, data?}}}`` with
        file names relative to ``folder``.
    """
    from reptune.directions import extract_vector

    reference = vector.directions[layer].float()
    norm = float(reference.norm())
    out: dict[str, Any] = {"layer": layer, "norm": norm, "vectors": {}}
    if other_pairs is not None:
        if len(other_pairs) < MIN_OTHER_PAIRS:
            raise DataError(f"the other counter-steering vector needs at least {MIN_OTHER_PAIRS} contrast pairs, got {len(other_pairs)}")
        other, _scan = extract_vector(handle, other_pairs, [layer], method=method, positions=positions, normalize=normalize,
                                      batch_size=batch_size, dataset=other_note, scan=False, progress=progress)
        raw = other.directions[layer].float()
        direction = rescaled(raw, norm)
        single_layer_vector(handle, layer, direction, f"{method} (other data, rescaled)", str(other_note), raw_norm=float(raw.norm())).save(folder / OTHER_FILE)
        out["vectors"]["other"] = {"file": OTHER_FILE, "cosine_to_training": cosine(direction, reference), "norm": norm,
                                   "raw_norm": float(raw.norm()), "pairs": len(other_pairs), "data": other_note}
    for index, direction in enumerate(random_directions(handle.hidden_size, random_count, norm, random_seed), start=1):
        name = random_name(index)
        single_layer_vector(handle, layer, direction, "random (norm-matched)", f"seed {random_seed}, draw {index}").save(folder / f"counter-{name}.safetensors")
        out["vectors"][name] = {"file": f"counter-{name}.safetensors", "cosine_to_training": cosine(direction, reference), "norm": norm}
    return out


def counter_rows(loaded: dict[str, dict[str, Any]], task: str, vectors: Sequence[str], *, n_resamples: int = 2000) -> list[dict[str, Any]]:
    """Each variant's drop under each counter-steering vector, per seed, with a paired bootstrap CI.

    Args:
        loaded: ``{condition: {seed (str): EvalResults}}`` of the run.
        vectors: ``training`` (``{variant}@counter``), ``other``, ``random1``, ...

    Returns:
        Rows ``{variant, vector, seed, n, unsteered, countered, drop, ci_low, ci_high}`` (accuracy on the
        shared items; drop = unsteered - countered, > 0: the attack lowered it).
    """
    from reptune.evaluation.statistics import paired_bootstrap_diff

    rows = []
    for cond, by_seed in loaded.items():
        variant, _, suffix = cond.partition("@counter")
        vector = "training" if suffix == "" else suffix.removeprefix("-")
        if not _ or vector not in vectors or variant not in loaded:
            continue
        for seed, countered in sorted(by_seed.items()):
            base = loaded[variant].get(seed)
            if base is None or task not in base.tasks or task not in countered.tasks:
                continue
            a, b = base.tasks[task], countered.tasks[task]
            key = a.binary_key or "correct"
            mine = {r["id"]: r for r in b.records}
            shared = [(r, mine[r["id"]]) for r in a.records if r["id"] in mine]
            x = [float(bool(r[key])) for r, _ in shared]
            y = [float(bool(s[key])) for _, s in shared]
            drop, low, high = paired_bootstrap_diff(y, x, n_resamples=n_resamples, seed=int(seed))
            rows.append({"variant": variant, "vector": vector, "seed": int(seed), "n": len(shared), "unsteered": sum(x) / len(x) if x else None,
                         "countered": sum(y) / len(y) if y else None, "drop": drop, "ci_low": low, "ci_high": high})
    order = {name: i for i, name in enumerate(vectors)}
    return sorted(rows, key=lambda r: (r["variant"], order[r["vector"]], r["seed"]))
