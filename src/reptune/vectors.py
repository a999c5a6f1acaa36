"""The steering-vector file: safetensors (one tensor per layer) + JSON metadata.

``VEC.safetensors`` holds tensors ``layer.<L>`` (float32, ``[hidden_size]``, L in the site
convention of :mod:`reptune.sites`) and, in its header, the metadata as JSON under the key
``reptune``. A human-readable copy of the metadata is written beside it as ``VEC.json``.
Both are written atomically. Loading never unpickles anything.

llama.cpp export (:func:`export_gguf`): tensor ``direction.L`` is added by llama.cpp to the
output of its block L (0-based), the same block reptune calls layer L, so the numbers carry
over unchanged. llama.cpp has no slot for block 0, so a vector at layer 0 cannot be exported.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reptune._io import atomic_path, write_json_atomic
from reptune._version import __version__
from reptune.errors import ReptuneError, VectorError
from reptune.sites import SITE_CONVENTION, SITE_CONVENTION_DOC, normalize_layer, parse_layers

FORMAT_VERSION = 1


def _reptune_version() -> str:
    return __version__


# the JSON type of every metadata field (None: may be null); a hand-edited header must keep them
_META_TYPES: dict[str, tuple[type, ...]] = {
    "model_id": (str,), "hidden_size": (int,), "num_layers": (int,), "method": (str,), "positions": (str,),
    "normalization": (str,), "revision": (str, type(None)), "dataset": (str, type(None)), "dataset_hash": (str, type(None)),
    "num_pairs": (int, type(None)), "site": (str,), "site_doc": (str,), "reptune_version": (str,), "format_version": (int,),
    "extra": (dict,),
}


def _check_meta_type(key: str, value: Any, where: str) -> None:
    """Raise VectorError unless metadata field ``key`` holds its JSON type (no bools for numbers)."""
    types = _META_TYPES[key]
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join("null" if t is type(None) else {"str": "a string", "int": "an integer", "dict": "an object"}[t.__name__] for t in types)
        raise VectorError(f"{where}: metadata field {key!r} must be {names}, got {json.dumps(value)[:60]}")
    if key in {"hidden_size", "num_layers"} and value < 1:
        raise VectorError(f"{where}: metadata field {key!r} must be at least 1, got {value}")
    if key == "extra" and "best_layers" in value:
        best = value["best_layers"]
        if not isinstance(best, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in best):
            raise VectorError(f"{where}: metadata field extra.best_layers must be a list of layer numbers, got {json.dumps(best)[:60]}")


@dataclass
class VectorMeta:
    """Where a steering vector came from; saved with it and checked when it is loaded."""

    model_id: str
    hidden_size: int
    num_layers: int
    method: str = "unknown"
    positions: str = "last"
    normalization: str = "none"
    revision: str | None = None
    dataset: str | None = None
    dataset_hash: str | None = None
    num_pairs: int | None = None
    site: str = SITE_CONVENTION
    site_doc: str = SITE_CONVENTION_DOC
    reptune_version: str = field(default_factory=_reptune_version)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> VectorMeta:
        if not isinstance(data, dict):
            raise VectorError(f"{where}: metadata is not a JSON object")
        known = set(cls.__dataclass_fields__)
        required = {"model_id", "hidden_size", "num_layers"}
        if missing := required - set(data):
            raise VectorError(f"{where}: metadata lacks {', '.join(sorted(missing))}")
        for key, value in data.items():
            if key in known:
                _check_meta_type(key, value, where)
        meta = cls(**{key: value for key, value in data.items() if key in known})
        if meta.site != SITE_CONVENTION:
            raise VectorError(f"{where}: unknown site convention {meta.site!r} (expected {SITE_CONVENTION!r})")
        return meta


@dataclass
class SteeringVector:
    """One direction per layer for one model.

    Attributes:
        directions: ``{layer: tensor [hidden_size]}``, float32, non-negative layer indices.
        meta: provenance and compatibility information.
    """

    directions: dict[int, torch.Tensor]
    meta: VectorMeta

    def __post_init__(self) -> None:
        if not self.directions:
            raise VectorError("a steering vector needs at least one layer")
        clean: dict[int, torch.Tensor] = {}
        given: dict[int, int] = {}
        for key, tensor in sorted(self.directions.items()):
            try:
                layer = normalize_layer(int(key), self.meta.num_layers)
            except ReptuneError as exc:
                raise VectorError(str(exc)) from None
            if layer in given:
                raise VectorError(f"layers {given[layer]} and {key} are the same layer {layer}: give each layer once")
            given[layer] = int(key)
            # clone: own the data (the caller's tensor may change later, and tensors sharing
            # memory cannot be saved with safetensors)
            tensor = torch.as_tensor(tensor).detach().to("cpu", torch.float32).reshape(-1).clone()
            if tensor.numel() != self.meta.hidden_size:
                raise VectorError(f"layer {layer}: vector has size {tensor.numel()}, expected hidden size {self.meta.hidden_size}")
            if not torch.isfinite(tensor).all():
                raise VectorError(f"layer {layer}: vector holds NaN or inf")
            clean[layer] = tensor
        self.directions = clean

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.directions[normalize_layer(layer, self.meta.num_layers)]

    def select(self, layers: str | int | list[int] | None) -> dict[int, torch.Tensor]:
        """The directions at ``layers`` (a layer spec; ``None`` = all the vector has).

        Raises:
            VectorError: a requested layer the vector does not have.
        """
        if layers is None:
            return dict(self.directions)
        wanted = parse_layers(layers, self.meta.num_layers)
        missing = [layer for layer in wanted if layer not in self.directions]
        if missing:
            raise VectorError(f"vector has no layer(s) {missing}; it has {_compact(self.layers)}")
        return {layer: self.directions[layer] for layer in wanted}

    def norms(self) -> dict[int, float]:
        return {layer: float(tensor.norm()) for layer, tensor in self.directions.items()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (safetensors) and ``path`` with suffix ``.json``, atomically.

        Returns:
            The safetensors path.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise VectorError(f"vector files end in .safetensors, got {path.name}")
        meta = asdict(self.meta)
        tensors = {f"layer.{layer}": tensor.contiguous() for layer, tensor in self.directions.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"reptune": json.dumps(meta)})
        write_json_atomic(path.with_suffix(".json"), {**meta, "layers": self.layers, "norms": self.norms()})
        return path

    def check_compatible(self, handle: Any, *, allow_model_mismatch: bool = False) -> None:
        """Refuse a vector made for another model.

        Hidden size and layer count must always match; the model id must match unless
        ``allow_model_mismatch`` (e.g. steering a fine-tuned copy with its base's vector).
        """
        if handle.hidden_size != self.meta.hidden_size:
            raise VectorError(
                f"vector is for hidden size {self.meta.hidden_size} ({self.meta.model_id}), "
                f"model {handle.model_id} has {handle.hidden_size}"
            )
        if handle.num_layers != self.meta.num_layers:
            raise VectorError(
                f"vector is for a {self.meta.num_layers}-layer model ({self.meta.model_id}), "
                f"model {handle.model_id} has {handle.num_layers} layers"
            )
        if not allow_model_mismatch and handle.model_id != self.meta.model_id:
            raise VectorError(
                f"vector was made for {self.meta.model_id}, not {handle.model_id} "
                "(pass allow_model_mismatch=True / --allow-model-mismatch if that is intended)"
            )


def as_vector(vector: SteeringVector | dict[int, Any], handle: Any, *, allow_model_mismatch: bool = False) -> SteeringVector:
    """The one "SteeringVector or ``{layer: tensor}``" normalisation: a vector checked against ``handle``.

    A bare ``{layer: tensor [hidden]}`` becomes a :class:`SteeringVector` made for ``handle``
    (method ``user``), validated the same way as a file (layers in range, each layer once,
    hidden size, no NaN/inf; stored float32 on the CPU, layers non-negative).

    Raises:
        VectorError: an invalid dict, or a vector for another model (see :meth:`SteeringVector.check_compatible`).
    """
    if not isinstance(vector, SteeringVector):
        meta = VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers, method="user")
        vector = SteeringVector(dict(vector), meta)
    vector.check_compatible(handle, allow_model_mismatch=allow_model_mismatch)
    return vector


def load_vector(path: str | os.PathLike[str], handle: Any | None = None, *, allow_model_mismatch: bool = False) -> SteeringVector:
    """Read a vector file written by :meth:`SteeringVector.save`; check it against ``handle``.

    Raises:
        VectorError: missing or foreign file, NaN/inf, or a model mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise VectorError(f"vector file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle_file:
            header = handle_file.metadata() or {}
            tensors = {key: handle_file.get_tensor(key) for key in handle_file.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # noqa: BLE001 (any parse failure is a bad file)
        raise VectorError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from None
    if "reptune" not in header:
        raise VectorError(f"{path}: not a reptune vector file (no 'reptune' metadata)")
    try:
        meta = VectorMeta.from_json(json.loads(header["reptune"]), str(path))
    except (json.JSONDecodeError, TypeError) as exc:
        raise VectorError(f"{path}: corrupt metadata ({exc})") from None
    except RecursionError:
        raise VectorError(f"{path}: corrupt metadata (JSON nested too deeply)") from None
    directions = {}
    for key, tensor in tensors.items():
        prefix, _, number = key.partition(".")
        if prefix != "layer" or not number.lstrip("-").isdigit():
            raise VectorError(f"{path}: unexpected tensor {key!r}")
        directions[int(number)] = tensor
    try:
        vector = SteeringVector(directions, meta)
    except VectorError as exc:
        raise VectorError(f"{path}: {exc}") from None
    if handle is not None:
        vector.check_compatible(handle, allow_model_mismatch=allow_model_mismatch)
    return vector


def control_vector_layers(vector: SteeringVector, layers: str | int | list[int] | None = None) -> list[int]:
    """The layers :func:`export_gguf` writes: ``layers`` (a layer spec), or every layer the vector has
    but layer 0, which has no llama.cpp slot.

    Raises:
        VectorError: ``layers`` names layer 0 or a layer the vector lacks, or nothing is left.
    """
    chosen = sorted(vector.select(layers)) if layers is not None else [layer for layer in sorted(vector.directions) if layer != 0]
    if 0 in chosen:
        raise VectorError("llama.cpp control vectors cannot hold layer 0; select layers >= 1 before exporting")
    if not chosen:
        raise VectorError("the vector has no layer >= 1 to export (llama.cpp control vectors cannot hold layer 0)")
    return chosen


def export_gguf(
    vector: SteeringVector, path: str | os.PathLike[str], *, layers: str | int | list[int] | None = None, model_hint: str = "llama",
) -> Path:
    """Write a llama.cpp control-vector GGUF (``--control-vector FILE``).

    Layer mapping: reptune layer L -> tensor ``direction.L`` (llama.cpp adds it to the output
    of its block L, the same block). Layer 0 has no llama.cpp slot.

    Args:
        layers: the layers to write (a layer spec); ``None`` = every layer the vector has but
            layer 0, as ``reptune export-gguf`` does. Naming layer 0 is refused.
        model_hint: llama.cpp architecture name stored as ``controlvector.model_hint``.
    """
    import gguf

    path = Path(path)
    chosen = {layer: vector.directions[layer] for layer in control_vector_layers(vector, layers)}
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_uint32("controlvector.layer_count", len(chosen))
        for layer, tensor in chosen.items():
            writer.add_tensor(f"direction.{layer}", tensor.numpy().astype("float32"))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def read_gguf_control_vector(path: str | os.PathLike[str]) -> dict[int, torch.Tensor]:
    """Read back a llama.cpp control vector as ``{layer: tensor}`` (reptune numbering)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for tensor in reader.tensors:
        prefix, _, number = tensor.name.partition(".")
        if prefix == "direction" and number.isdigit():
            out[int(number)] = torch.tensor(tensor.data.copy(), dtype=torch.float32).reshape(-1)
    return out


def _compact(layers: list[int]) -> str:
    """``[1,2,3,7]`` -> ``"1-3,7"`` for messages."""
    parts, start = [], None
    for index, layer in enumerate(layers):
        if start is None:
            start = layer
        if index + 1 == len(layers) or layers[index + 1] != layer + 1:
            parts.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return ",".join(parts)
