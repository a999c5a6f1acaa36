"""reptune.vectors: the safetensors + JSON vector file, compatibility checks and GGUF export."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import reptune
import reptune.vectors as vectors_module
from reptune.errors import ReptuneError, VectorError
from reptune.sites import SITE_CONVENTION
from reptune.vectors import SteeringVector, VectorMeta, export_gguf, load_vector, read_gguf_control_vector

HIDDEN, LAYERS = 8, 6


def make_meta(**overrides) -> VectorMeta:
    base = {
        "model_id": "tiny-llama",
        "hidden_size": HIDDEN,
        "num_layers": LAYERS,
        "method": "mean-diff",
        "positions": "last",
        "normalization": "gap",
        "revision": "abc123",
        "dataset": "pairs.jsonl",
        "dataset_hash": "f" * 64,
        "num_pairs": 12,
        "extra": {"best_layers": [2, 3], "note": "ünï"},
    }
    base.update(overrides)
    return VectorMeta(**base)


def make_vector(layers=(1, 2, 3), seed=0, **meta) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(HIDDEN, generator=gen) for layer in layers}, make_meta(**meta))


def fake_handle(model_id="tiny-llama", hidden_size=HIDDEN, num_layers=LAYERS):
    return SimpleNamespace(model_id=model_id, hidden_size=hidden_size, num_layers=num_layers)


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message, repr(message)
    return message


def write_raw(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None) -> Path:
    """A safetensors file written directly (bypassing SteeringVector's checks)."""
    save_file(tensors, str(path), metadata=None if meta is None else {"reptune": json.dumps(meta)})
    return path


# --------------------------------------------------------------------------- round trip


def test_save_load_round_trip_bit_exact(tmp_path):
    vector = make_vector((0, 2, 5))
    # values that do not survive a lossy dtype: tiny, huge, negative zero
    vector.directions[2][:3] = torch.tensor([1e-30, 3.4e38, -0.0])
    path = vector.save(tmp_path / "out" / "vec.safetensors")
    assert path == tmp_path / "out" / "vec.safetensors" and path.is_file()

    loaded = load_vector(path)
    assert loaded.layers == [0, 2, 5]
    for layer in vector.layers:
        a, b = vector.directions[layer], loaded.directions[layer]
        assert b.dtype == torch.float32 and b.shape == (HIDDEN,)
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), f"layer {layer} not bit-identical"
    assert loaded.meta == vector.meta
    assert loaded.meta.site == SITE_CONVENTION
    assert loaded.meta.reptune_version == reptune.__version__
    assert loaded.meta.dataset_hash == "f" * 64
    assert loaded.meta.extra == {"best_layers": [2, 3], "note": "ünï"}

    # the header holds the metadata as JSON under 'reptune', tensors as layer.<L>
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == ["layer.0", "layer.2", "layer.5"]
        assert json.loads(handle.metadata()["reptune"]) == asdict(vector.meta)

    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["model_id"] == "tiny-llama" and sidecar["site"] == SITE_CONVENTION
    assert sidecar["dataset_hash"] == "f" * 64 and sidecar["reptune_version"] == reptune.__version__
    assert sidecar["layers"] == [0, 2, 5]
    assert sidecar["norms"] == pytest.approx({str(k): v for k, v in vector.norms().items()})
    assert not list(path.parent.glob(".*.tmp")), "temporary files left behind"


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "vec.safetensors"
    make_vector(seed=0).save(path)
    second = make_vector((4,), seed=1)
    second.save(path)
    loaded = load_vector(path)
    assert loaded.layers == [4] and torch.equal(loaded[4], second[4])
    assert json.loads(path.with_suffix(".json").read_text())["layers"] == [4]


def test_save_requires_safetensors_suffix(tmp_path):
    with pytest.raises(VectorError, match=r"end in \.safetensors, got vec\.pt"):
        make_vector().save(tmp_path / "vec.pt")
    assert list(tmp_path.iterdir()) == []


def test_save_vector_sharing_one_tensor(tmp_path):
    """The same direction at several layers (or slices of one matrix) must save and reload."""
    direction = torch.randn(HIDDEN)
    stacked = torch.randn(LAYERS, HIDDEN)
    shared = SteeringVector({1: direction, 2: direction, 3: stacked[3], 4: stacked[4]}, make_meta())
    path = shared.save(tmp_path / "shared.safetensors")
    loaded = load_vector(path)
    assert torch.equal(loaded[1], direction) and torch.equal(loaded[2], direction)
    assert torch.equal(loaded[3], stacked[3]) and torch.equal(loaded[4], stacked[4])


def test_vector_owns_its_data():
    direction = torch.randn(HIDDEN)
    vector = SteeringVector({1: direction}, make_meta())
    direction.fill_(float("nan"))  # the caller's tensor changing later must not leak in
    assert torch.isfinite(vector[1]).all()


def test_construction_coerces_dtype_and_shape():
    vector = SteeringVector({1: torch.ones(1, HIDDEN, dtype=torch.float16), 2: np.arange(HIDDEN)}, make_meta())
    assert vector[1].dtype == torch.float32 and vector[1].shape == (HIDDEN,)
    assert vector[2].tolist() == list(map(float, range(HIDDEN)))


# --------------------------------------------------------------------------- layers


def test_negative_layers_normalised():
    vector = make_vector((-1, -6, 2))
    assert vector.layers == [0, 2, 5]
    assert all(layer >= 0 for layer in vector.directions)
    assert torch.equal(vector[-1], vector[5]) and torch.equal(vector[-6], vector[0])


def test_negative_layers_round_trip_as_non_negative(tmp_path):
    path = make_vector((-1,)).save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert list(handle.keys()) == ["layer.5"]
    assert load_vector(path).layers == [5]


def test_same_layer_twice_refused():
    with pytest.raises(VectorError, match="same layer 5"):
        SteeringVector({-1: torch.ones(HIDDEN), 5: torch.zeros(HIDDEN)}, make_meta())


@pytest.mark.parametrize("layer", [LAYERS, -LAYERS - 1, 99])
def test_out_of_range_layer_refused(layer):
    with pytest.raises(VectorError, match="out of range"):
        SteeringVector({layer: torch.ones(HIDDEN)}, make_meta())


def test_empty_vector_refused():
    with pytest.raises(VectorError, match="at least one layer"):
        SteeringVector({}, make_meta())


def test_select():
    vector = make_vector((1, 2, 3))
    assert list(vector.select(None)) == [1, 2, 3]
    assert list(vector.select("2-3")) == [2, 3]
    assert list(vector.select(-4)) == [2]  # -4 of 6 layers = layer 2
    assert torch.equal(vector.select([1])[1], vector[1])


@pytest.mark.parametrize("spec, missing", [("0", "[0]"), ("3-5", "[4, 5]"), ([1, -1], "[5]")])
def test_select_missing_layer_names_what_it_has(spec, missing):
    vector = make_vector((1, 2, 3))
    with pytest.raises(VectorError) as info:
        vector.select(spec)
    message = one_line(info.value)
    assert f"no layer(s) {missing}" in message
    assert "it has 1-3" in message


def test_select_out_of_range_spec():
    with pytest.raises(ReptuneError, match="out of range"):
        make_vector().select("7")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_refused_at_construction(bad):
    tensor = torch.ones(HIDDEN)
    tensor[3] = bad
    with pytest.raises(VectorError, match="layer 2: vector holds NaN or inf"):
        SteeringVector({1: torch.ones(HIDDEN), 2: tensor}, make_meta())


def test_non_finite_refused_in_file(tmp_path):
    tensor = torch.ones(HIDDEN)
    tensor[0] = float("nan")
    path = write_raw(tmp_path / "nan.safetensors", {"layer.1": torch.ones(HIDDEN), "layer.2": tensor}, asdict(make_meta()))
    with pytest.raises(VectorError) as info:
        load_vector(path)
    message = one_line(info.value)
    assert "nan.safetensors" in message and "NaN or inf" in message and "layer 2" in message


@pytest.mark.parametrize("size", [HIDDEN - 1, HIDDEN + 1, 1])
def test_wrong_size_refused(size):
    with pytest.raises(VectorError, match=f"size {size}, expected hidden size {HIDDEN}"):
        SteeringVector({1: torch.ones(size)}, make_meta())


def test_wrong_size_in_file_refused(tmp_path):
    path = write_raw(tmp_path / "w.safetensors", {"layer.1": torch.ones(HIDDEN * 2)}, asdict(make_meta()))
    with pytest.raises(VectorError, match="expected hidden size"):
        load_vector(path)


def test_file_without_reptune_metadata_refused(tmp_path):
    path = write_raw(tmp_path / "foreign.safetensors", {"layer.1": torch.ones(HIDDEN)}, None)
    with pytest.raises(VectorError) as info:
        load_vector(path)
    assert "not a reptune vector file" in one_line(info.value)
    save_file({"layer.1": torch.ones(HIDDEN)}, str(path), metadata={"other": "x"})
    with pytest.raises(VectorError, match="no 'reptune' metadata"):
        load_vector(path)


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"this is not a safetensors file at all\n" * 3, "not a readable safetensors file"),
        (b"", "not a readable safetensors file"),
        (b"\x00" * 7, "not a readable safetensors file"),
    ],
)
def test_non_safetensors_file_refused(tmp_path, payload, fragment):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(payload)
    with pytest.raises(VectorError) as info:
        load_vector(path)
    message = one_line(info.value)
    assert fragment in message and "junk.safetensors" in message


def test_missing_file_refused(tmp_path):
    with pytest.raises(VectorError, match="vector file not found"):
        load_vector(tmp_path / "nope.safetensors")
    with pytest.raises(VectorError, match="vector file not found"):
        load_vector(tmp_path)  # a directory


@pytest.mark.parametrize(
    "meta, fragment",
    [
        ("{not json", "corrupt metadata"),
        (json.dumps([1, 2]), "metadata is not a JSON object"),
        (json.dumps("text"), "metadata is not a JSON object"),
        (json.dumps({"model_id": "m", "hidden_size": HIDDEN}), "metadata lacks num_layers"),
        (json.dumps({**asdict(make_meta()), "site": "block_input"}), "unknown site convention 'block_input'"),
    ],
)
def test_bad_metadata_refused(tmp_path, meta, fragment):
    path = tmp_path / "m.safetensors"
    save_file({"layer.1": torch.ones(HIDDEN)}, str(path), metadata={"reptune": meta})
    with pytest.raises(VectorError) as info:
        load_vector(path)
    assert fragment in one_line(info.value)


def test_unknown_metadata_keys_ignored(tmp_path):
    """A file from a newer reptune with extra metadata keys still loads."""
    path = write_raw(tmp_path / "new.safetensors", {"layer.1": torch.ones(HIDDEN)}, {**asdict(make_meta()), "future_key": 1})
    assert load_vector(path).meta == make_meta()


@pytest.mark.parametrize("key", ["direction.1", "layer.x", "layers.1", "weight"])
def test_unexpected_tensor_name_refused(tmp_path, key):
    path = write_raw(tmp_path / "t.safetensors", {key: torch.ones(HIDDEN)}, asdict(make_meta()))
    with pytest.raises(VectorError, match=f"unexpected tensor '{key}'"):
        load_vector(path)


# --------------------------------------------------------------------------- compatibility


def test_check_compatible_accepts_matching_model():
    make_vector().check_compatible(fake_handle())


def test_check_compatible_hidden_size():
    with pytest.raises(VectorError) as info:
        make_vector().check_compatible(fake_handle(hidden_size=16), allow_model_mismatch=True)
    message = one_line(info.value)
    assert "hidden size 8" in message and "has 16" in message


def test_check_compatible_layer_count():
    with pytest.raises(VectorError) as info:
        make_vector().check_compatible(fake_handle(num_layers=12), allow_model_mismatch=True)
    assert "6-layer model" in one_line(info.value) and "12 layers" in str(info.value)


def test_check_compatible_model_id():
    vector = make_vector()
    with pytest.raises(VectorError) as info:
        vector.check_compatible(fake_handle(model_id="other-model"))
    message = one_line(info.value)
    assert "tiny-llama" in message and "other-model" in message and "allow_model_mismatch" in message
    vector.check_compatible(fake_handle(model_id="other-model"), allow_model_mismatch=True)


def test_load_vector_checks_handle(tmp_path):
    path = make_vector().save(tmp_path / "v.safetensors")
    assert load_vector(path, fake_handle()).layers == [1, 2, 3]
    with pytest.raises(VectorError, match="hidden size"):
        load_vector(path, fake_handle(hidden_size=32))
    with pytest.raises(VectorError, match="made for tiny-llama"):
        load_vector(path, fake_handle(model_id="x"))
    assert load_vector(path, fake_handle(model_id="x"), allow_model_mismatch=True).meta.model_id == "tiny-llama"


def test_check_compatible_with_real_model(tiny):
    vector = SteeringVector({1: torch.ones(tiny.hidden_size)}, VectorMeta(tiny.model_id, tiny.hidden_size, tiny.num_layers))
    vector.check_compatible(tiny)
    wrong = SteeringVector({1: torch.ones(64)}, VectorMeta(tiny.model_id, 64, tiny.num_layers))
    with pytest.raises(VectorError, match="hidden size"):
        wrong.check_compatible(tiny)


# --------------------------------------------------------------------------- atomic save


def test_save_is_atomic_when_writer_fails(tmp_path, monkeypatch):
    path = tmp_path / "vec.safetensors"
    original = make_vector(seed=0)
    original.save(path)
    before = path.read_bytes()
    sidecar_before = path.with_suffix(".json").read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")  # a partial write, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(vectors_module, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        make_vector((4, 5), seed=1).save(path)
    assert path.read_bytes() == before
    assert path.with_suffix(".json").read_bytes() == sidecar_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vec.json", "vec.safetensors"], "temporary file left behind"
    assert torch.equal(load_vector(path)[1], original[1])

    fresh = tmp_path / "fresh.safetensors"
    with pytest.raises(OSError):
        make_vector().save(fresh)
    assert not fresh.exists() and not fresh.with_suffix(".json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vec.json", "vec.safetensors"]


# --------------------------------------------------------------------------- GGUF


def test_export_gguf_round_trip(tmp_path):
    vector = make_vector((1, 3, 5))
    path = export_gguf(vector, tmp_path / "cv" / "control.gguf", model_hint="qwen2")
    assert path == tmp_path / "cv" / "control.gguf" and path.is_file()
    assert not list(path.parent.glob(".*.tmp"))

    back = read_gguf_control_vector(path)
    assert sorted(back) == [1, 3, 5]  # direction.L is reptune layer L, no shift
    for layer in vector.layers:
        assert torch.equal(back[layer], vector[layer])

    reader = gguf.GGUFReader(str(path))
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.3", "direction.5"]
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert int(tensor.n_elements) == HIDDEN
        assert tensor.data.dtype == np.float32
    fields = reader.fields
    assert fields["general.architecture"].contents() == "controlvector"
    assert fields["controlvector.model_hint"].contents() == "qwen2"
    assert fields["controlvector.layer_count"].contents() == 3


def test_export_gguf_layers_default_to_all_but_layer_zero(tmp_path):
    vector = make_vector((0, 1, 3))  # an "all layers" vector holds layer 0, which llama.cpp has no slot for
    assert sorted(read_gguf_control_vector(export_gguf(vector, tmp_path / "all.gguf"))) == [1, 3]
    assert sorted(read_gguf_control_vector(export_gguf(vector, tmp_path / "one.gguf", layers="3"))) == [3]
    with pytest.raises(VectorError, match="layer 0"):
        export_gguf(vector, tmp_path / "zero.gguf", layers=[0, 1])
    with pytest.raises(VectorError, match="no layer >= 1"):
        export_gguf(make_vector((0,)), tmp_path / "only-zero.gguf")
    assert not (tmp_path / "zero.gguf").exists() and not (tmp_path / "only-zero.gguf").exists()


def test_export_gguf_default_hint(tmp_path):
    path = export_gguf(make_vector((2,)), tmp_path / "c.gguf")
    assert gguf.GGUFReader(str(path)).fields["controlvector.model_hint"].contents() == "llama"


def test_export_gguf_refuses_layer_zero(tmp_path):
    vector = make_vector((0, 1))
    with pytest.raises(VectorError, match="layer 0"):
        export_gguf(vector, tmp_path / "c.gguf", layers="0-1")
    assert list(tmp_path.iterdir()) == []
    # selecting layers >= 1 first works
    subset = SteeringVector(vector.select("1"), replace(vector.meta))
    assert sorted(read_gguf_control_vector(export_gguf(subset, tmp_path / "c.gguf"))) == [1]
