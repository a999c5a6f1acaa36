"""Big-model inference: a model placed by a ``device_map`` (blocks split or offloaded) reads, steers
and scores exactly like the same model on one device.

This CPU has one device, so the split is the CPU and ``disk``: offloaded blocks keep their weights on
the ``meta`` device and accelerate's hooks load them for each forward (what a model larger than the
GPUs does). Several GPUs are not tested here; the code paths moving tensors between devices are the
same ``.to(hidden.device)`` calls.
"""

from __future__ import annotations

import json

import pytest
import torch

from reptune.activations import read_activations
from reptune.errors import ModelError, ReptuneError
from reptune.evaluation import evaluate, get_task
from reptune.models import load_model, parse_device_map
from reptune.steering import steered_generate
from reptune.tuning import TrainItem, TuneConfig, tune
from reptune.vectors import SteeringVector, VectorMeta

# layers 1 and 3 offloaded to disk (weights on "meta" between forwards); layer 0 on the CPU
SPLIT = {
    "model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
    "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu",
}
PROMPTS = ["Is the sky blue?", "Paris is the capital of France.", "Two plus two is four."]


@pytest.fixture(scope="module")
def pair(tiny_dir):
    """The tiny model twice: on the CPU, and split over the CPU and disk."""
    return load_model(str(tiny_dir)), load_model(str(tiny_dir), device_map=SPLIT)


def _vector(handle, layers=(1, 2)) -> SteeringVector:
    generator = torch.Generator().manual_seed(5)
    directions = {layer: 3 * torch.randn(handle.hidden_size, generator=generator) for layer in layers}
    return SteeringVector(directions, VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers))


def test_split_model_is_placed_and_described(pair):
    plain, split = pair
    assert not plain.dispatched and split.dispatched
    assert split.device == torch.device("cpu")
    assert {param.device.type for param in split.layers[1].parameters()} == {"meta"}  # offloaded
    assert split.describe()["device_map"]["model.layers.3"] == "disk" and "device_map" not in plain.describe()


def test_reading_with_early_stop_equals_the_plain_model(pair):
    plain, split = pair
    deeper: list[int] = []
    hook = split.layers[3].register_forward_pre_hook(lambda *_: deeper.append(1))
    try:
        got = read_activations(split, PROMPTS, "0-2", "all", progress=False)
    finally:
        hook.remove()
    want = read_activations(plain, PROMPTS, "0-2", "all", progress=False)
    assert not deeper  # the pass stopped after layer 2: the offloaded layer 3 never ran
    for layer in want:
        assert torch.allclose(got[layer], want[layer], atol=1e-6), layer


def test_steered_generation_equals_the_plain_model(pair):
    """Vectors at an offloaded layer (1) and a CPU one (2), per-row multipliers, the generated-token mask."""
    plain, split = pair
    kwargs = {"layers": "1-2", "scope": "generated", "max_new_tokens": 4, "chat": False}
    want = steered_generate(plain, _vector(plain), PROMPTS, [-4.0, 0.0, 4.0], **kwargs)
    got = steered_generate(split, _vector(split), PROMPTS, [-4.0, 0.0, 4.0], **kwargs)
    assert got == want and want[4.0] != want[0.0]


def test_steered_scoring_equals_the_plain_model(pair):
    results = [evaluate(handle, [get_task("facts-ab")], vector=_vector(handle), multiplier=4.0, limit=6) for handle in pair]
    want, got = (result["facts-ab"] for result in results)
    for key in ("logprob_a", "logprob_b"):
        assert [r[key] for r in got.records] == pytest.approx([r[key] for r in want.records], abs=1e-5), key


def test_tuning_refuses_a_split_model(pair, tmp_path):
    _, split = pair
    items = [TrainItem(prompt=text, correct=index % 2, label=index % 2) for index, text in enumerate(PROMPTS * 2)]
    with pytest.raises(ReptuneError, match="device_map that splits or offloads it"):
        tune(split, TuneConfig.from_preset("truth", layers="1"), items, tmp_path / "run", progress=False)


def test_device_map_forms():
    assert parse_device_map(None) is None and parse_device_map("auto") == "auto"
    assert parse_device_map('{"": "cpu"}') == {"": "cpu"}
    assert parse_device_map({"model": "disk", "lm_head": "cpu"}) == {"model": "disk", "lm_head": "cpu"}


def test_cli_device_map_from_a_json_file(cli_run, tiny_dir, tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(SPLIT))
    result = cli_run("info", "--model", tiny_dir, "--device-map", path)
    assert result.code == 0, result.err
    assert "device_map" in result.out and "disk" in result.out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--device-map", "nonsense"], "device_map 'nonsense': use auto, balanced"),
        (["--device-map", '{"model.layers.0": "gpu9"}'], "'model.layers.0' -> 'gpu9' is not a place"),
        (["--device-map", '{"model.layers.0": "cuda:7"}'], "CUDA device"),
        (["--device-map", "{not json"], "is not valid JSON"),
        (["--device-map", "no-such-map.json"], "device_map file not found: no-such-map.json"),
        (["--device-map", "[1, 2]"], "device_map '[1, 2]': use auto"),
        (["--device-map", "auto", "--device", "cpu"], "pass --device or --device-map, not both"),
    ],
)
def test_bad_device_map_is_a_one_line_error(cli_run, tiny_dir, args, fragment):
    result = cli_run("info", "--model", tiny_dir, *args)
    assert result.code == 2
    assert len(result.error_lines()) == 1 and fragment in result.error_lines()[0], result.err


def test_python_api_refuses_a_bad_map_before_loading(tmp_path):
    with pytest.raises(ModelError, match="not a place"):
        load_model(str(tmp_path / "missing"), device_map={"model": "nowhere"})
