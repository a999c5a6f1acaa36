"""Per-token projections: cosine vs an independent output_hidden_states computation, shapes, task, CLI, plot."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_model

from reptune.errors import ReptuneError
from reptune.evaluation import evaluate, get_task
from reptune.evaluation.tasks.base import direction_at
from reptune.evaluation.tasks.projection import token_projections
from reptune.reporting.figures import plot_projection
from reptune.reporting.figures import write_eval_figures as write_figures

PROMPTS = ["The sky is blue.", "Two plus two is four. Cats are mammals, the quick brown fox."]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return build_model(request.param)


def reference(handle, text):
    ids = handle.tokenizer(text)["input_ids"]
    with torch.no_grad():
        out = handle.model(torch.tensor([ids]), output_hidden_states=True)
    return ids, out.hidden_states


def test_cosine_equals_hidden_states(model):
    generator = torch.Generator().manual_seed(0)
    vector = {layer: torch.randn(model.hidden_size, generator=generator) for layer in range(model.num_layers)}
    layers = [0, 1, 2]  # hidden_states[L+1]; the last entry is after the final norm, so not compared here
    rows = token_projections(model, vector, PROMPTS, layers, chat=False, batch_size=2)  # one padded batch
    assert len(rows) == 2
    for row, text in zip(rows, PROMPTS):
        ids, hidden = reference(model, text)
        assert row["prompt"] == text and row["layers"] == layers and row["vector_layers"] == layers
        assert len(row["tokens"]) == len(ids) and "".join(row["tokens"]) == text
        assert len(row["cosine"]) == len(layers) and all(len(values) == len(ids) for values in row["cosine"])
        for index, layer in enumerate(layers):
            expected = torch.nn.functional.cosine_similarity(hidden[layer + 1][0].double(), vector[layer].double().unsqueeze(0), dim=-1)
            assert row["cosine"][index] == pytest.approx(expected.tolist(), abs=1e-5)


def test_own_residual_gives_cosine_one(model):
    text = PROMPTS[1]
    _, hidden = reference(model, text)
    token = 5
    vector = {1: hidden[2][0, token].clone()}
    row = token_projections(model, vector, [text, PROMPTS[0]], "1", chat=False, batch_size=2)[0]
    assert row["cosine"][0][token] == pytest.approx(1.0, abs=1e-5)
    assert max(row["cosine"][0][:token] + row["cosine"][0][token + 1 :]) < 0.999


def test_layers_default_nearest_rule_and_chat():
    handle = build_model("llama", chat=True)
    a, b = torch.ones(handle.hidden_size), -torch.ones(handle.hidden_size)
    assert direction_at({1: a, 3: b}, 2)[0] == 1 and direction_at({1: a, 3: b}, 0)[0] == 1 and direction_at({1: a, 3: b}, 3)[0] == 3
    row = token_projections(handle, {1: a}, ["Is the sky blue?"])[0]
    assert row["layers"] == [0, 1, 2, 3] and row["vector_layers"] == [1, 1, 1, 1]
    assert row["tokens"][0] == "<|user|>" and row["tokens"][-1] == "<|assistant|>"
    assert all(-1.0 - 1e-6 <= value <= 1.0 + 1e-6 for layer in row["cosine"] for value in layer)
    with pytest.raises(ReptuneError, match="zero"):
        token_projections(handle, {1: torch.zeros(handle.hidden_size)}, ["x"])
    with pytest.raises(ReptuneError, match="hidden size"):
        token_projections(handle, {1: torch.ones(3)}, ["x"])


def test_projection_task_and_plot(tmp_path):
    handle = build_model("llama", chat=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\nA $dollar$ and a\ttab\n", encoding="utf-8")
    vector = {2: torch.randn(handle.hidden_size, generator=torch.Generator().manual_seed(1))}
    out = tmp_path / "res.json"
    results = evaluate(handle, [get_task("projection", data=str(prompts), layers="1-3")], vector=vector, output=out, batch_size=2)
    result = results["projection"]
    assert len(result.records) == 3
    record = result.records[0]
    assert record["layers"] == [1, 2, 3] and record["vector_layers"] == [2, 2, 2]
    assert record["last_token_cosine"] == pytest.approx(sum(layer[-1] for layer in record["cosine"]) / 3, abs=1e-5)
    assert result.metrics["last_token_cosine"]["value"] == pytest.approx(sum(r["last_token_cosine"] for r in result.records) / 3)
    assert set(result.metrics) >= {"mean_cosine", "last_token_cosine/L1", "last_token_cosine/L3"}
    assert [p.name for p in write_figures(results, out)] == ["res.projection.png"]
    # default prompts: the shipped honesty statements as questions
    default = evaluate(handle, [get_task("projection", max_prompts=2)], vector=vector)["projection"]
    assert len(default.records) == 2 and default.records[0]["prompt"].startswith("Is the following statement true or false?")
    long = dict(record, tokens=record["tokens"] * 30, cosine=[values * 30 for values in record["cosine"]])
    assert plot_projection([long, result.records[2]], tmp_path / "p.png", max_tokens=20).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ReptuneError, match="not found"):
        get_task("projection", data=str(tmp_path / "missing.txt")).load_items(handle, None)


def test_cli_projection_writes_heatmap(tiny_dir, tmp_path, cli_run):
    from reptune.models import load_model
    from reptune.vectors import SteeringVector, VectorMeta

    handle = load_model(str(tiny_dir))
    meta = VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers, method="user")
    vector_path = tmp_path / "v.safetensors"
    SteeringVector({1: torch.randn(handle.hidden_size, generator=torch.Generator().manual_seed(2))}, meta).save(vector_path)
    out = tmp_path / "results.json"
    result = cli_run("eval", "--model", tiny_dir, "--vector", vector_path, "--tasks", "projection", "--limit", "2", "--precision", "fp32", "-o", out)
    assert result.code == 0, result.err
    data = json.loads(out.read_text())["tasks"]["projection"]
    assert len(data["records"]) == 2 and data["records"][0]["layers"] == [0, 1, 2, 3]
    assert (tmp_path / "results.projection.png").read_bytes()[:4] == b"\x89PNG"
