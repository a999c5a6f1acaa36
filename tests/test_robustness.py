"""Robustness grid: shape, multiplier-0 reuse, steering per cell, degenerate cells, JSON, CLI heatmap."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_model

from reptune.data.ab import letter_token_ids
from reptune.errors import ReptuneError
from reptune.evaluation import evaluate, get_task, load_eval_results
from reptune.evaluation.tasks.robustness import RobustnessResult, run_robustness, same_letter_rate
from reptune.reporting.figures import plot_robustness
from reptune.reporting.figures import write_eval_figures as write_figures
from reptune.steering import steer


@pytest.fixture(scope="module")
def model():
    return build_model("llama", chat=True)


@pytest.fixture(scope="module")
def vector(model):
    generator = torch.Generator().manual_seed(3)
    return {layer: torch.randn(model.hidden_size, generator=generator) * 4 for layer in (1, 2)}


@pytest.fixture(scope="module")
def grid(model, vector):
    return run_robustness(model, vector, "facts-ab", [1, 2], [-4, 0, 4], limit=6, batch_size=6)


def test_grid_shape_baseline_and_cells(model, vector, grid):
    assert grid.layers == [1, 2] and grid.multipliers == [-4.0, 0.0, 4.0] and grid.vector_layers == [1, 2]
    assert [(c.layer, c.multiplier) for c in grid.cells] == [(1, -4.0), (1, 0.0), (1, 4.0), (2, -4.0), (2, 0.0), (2, 4.0)]
    assert grid.metric == "accuracy" and grid.task == "facts-ab" and grid.grid().shape == (2, 3)
    # multiplier 0 is the unsteered model, run once and shared by every layer
    plain = get_task("facts-ab").run(model, limit=6)
    assert grid.task_results[(1, 0.0)] is grid.task_results[(2, 0.0)]
    assert grid.cell(1, 0).value == grid.cell(2, 0).value == plain.value
    assert [r["margin"] for r in grid.task_results[(2, 0.0)].records] == pytest.approx([r["margin"] for r in plain.records], abs=1e-6)
    # a steered cell is the task under steering at that one layer only
    with steer(model, {2: vector[2]}, multiplier=-4.0) as steering:
        from reptune.evaluation import RunContext

        alone = get_task("facts-ab").run(model, limit=6, context=RunContext(steering=steering))
    cell = grid.task_results[(2, -4.0)]
    assert [r["margin"] for r in cell.records] == pytest.approx([r["margin"] for r in alone.records], abs=1e-5)
    assert [r["margin"] for r in cell.records] != pytest.approx([r["margin"] for r in plain.records], abs=1e-3)
    for c in grid.cells:
        assert c.n == 6 and c.ci_low <= c.value <= c.ci_high
        assert c.degenerate == (c.same_letter_rate > 0.9)


def test_json_roundtrip_markdown_and_plot(grid, tmp_path):
    data = grid.to_json()
    assert set(data) >= {"task", "metric", "layers", "multipliers", "degenerate_threshold", "cells"}
    assert set(data["cells"][0]) == {"layer", "multiplier", "value", "ci_low", "ci_high", "n", "same_letter_rate", "degenerate"}
    again = RobustnessResult.from_json(json.loads(json.dumps(data)))
    assert again.to_json() == data
    assert "| layer | x-4 | x0 | x4 |" in grid.to_markdown()
    path = plot_robustness(data, tmp_path / "grid.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ReptuneError, match="malformed robustness"):
        RobustnessResult.from_json({"task": "x"})


def test_huge_multiplier_makes_one_letter_degenerate():
    handle = build_model("llama", chat=True)
    prompt = get_task("facts-ab").load_items(handle, 2)[0][0]["prompt"]
    a, b = letter_token_ids(handle.tokenizer, prompt)
    head = handle.model.lm_head.weight.detach()
    last = handle.num_layers - 1
    towards_a = {last: head[a] - head[b]}  # after the final norm, the residual is ~this direction: logit(A) > logit(B)
    grid = run_robustness(handle, towards_a, "facts-ab", [last], [-1000, 1000], limit=8, batch_size=8)
    for multiplier, letter in ((1000.0, "A"), (-1000.0, "B")):
        cell = grid.cell(last, multiplier)
        assert {r["answer"] for r in grid.task_results[(last, multiplier)].records} == {letter}
        assert cell.same_letter_rate == 1.0 and cell.degenerate
    assert not run_robustness(handle, towards_a, "facts-ab", [last], [1000], limit=8, degenerate_threshold=1.0).cells[0].degenerate


def test_same_letter_rate_rules(model, vector):
    assert same_letter_rate([{"answer": "A"}, {"answer": "B"}, {"answer": "A"}, {"answer": None}]) == pytest.approx(2 / 3)
    assert same_letter_rate([{"answer": None}]) is None
    assert same_letter_rate([{"kl": 0.1}]) is None
    # a task without answer letters is never degenerate; a vector without the layer uses its nearest one
    one = {1: vector[1]}
    grid = run_robustness(model, one, get_task("kl", data="honesty", max_items=3), [0, 3], [2], batch_size=3)
    assert grid.vector_layers == [1, 1] and grid.metric == "kl"
    assert all(c.same_letter_rate is None and not c.degenerate for c in grid.cells)
    with pytest.raises(ReptuneError, match="multiplier is listed twice"):
        run_robustness(model, one, "facts-ab", [1], [0, 0], limit=2)
    with pytest.raises(ReptuneError, match="uses the vector itself"):
        run_robustness(model, one, "projection", [1], [1], limit=2)


def test_robustness_task_through_evaluate(model, vector, tmp_path):
    out = tmp_path / "res.json"
    task = get_task("robustness", task="facts-ab", layers="1,2", multipliers="-4,0")
    results = evaluate(model, [task, "facts-ab"], vector=vector, layers="1", multiplier=4.0, limit=4, output=out)
    rob = results["robustness"]
    assert [r["id"] for r in rob.records] == ["L1/x-4", "L1/x0", "L2/x-4", "L2/x0"]
    assert rob.details["layers"] == [1, 2] and len(rob.details["cells"]) == 4 and rob.limit == 4
    assert all(len(r["records"]) == 4 for r in rob.records)
    # the global steering applies to facts-ab only; the grid's 0 cells are the unsteered model
    plain = get_task("facts-ab").run(model, limit=4)
    assert rob.records[1]["value"] == plain.value
    with steer(model, {1: vector[1]}, multiplier=4.0) as steering:
        from reptune.evaluation import RunContext

        steered = get_task("facts-ab").run(model, limit=4, context=RunContext(steering=steering))
    assert [r["margin"] for r in results["facts-ab"].records] == pytest.approx([r["margin"] for r in steered.records], abs=1e-5)
    assert results.steering["not_applied_to"] == ["robustness"]
    loaded = load_eval_results(out)
    assert RobustnessResult.from_json(loaded["robustness"].details).to_json() == rob.details
    assert [p.name for p in write_figures(loaded, out)] == ["res.robustness.png"]
    with pytest.raises(ReptuneError, match="needs a vector"):
        evaluate(model, "robustness", limit=2)


def test_items_scored_count_each_cell_once_and_not_the_grid(model, vector):
    """The work counters the report's time table reads: a grid counts the items its cells scored
    (the second layer's 0 cell reuses the first's), not its cells as items."""
    from reptune import _work

    before = _work.snapshot()
    evaluate(model, [get_task("robustness", task="facts-ab", layers="1,2", multipliers="-4,0"), "facts-ab"], vector=vector, layers="1", multiplier=4.0, limit=4)
    assert _work.since(before) == {"items": 3 * 4 + 4, "steps": 0}


# ---------------------------------------------------------------- CLI
def test_cli_robustness_writes_heatmap(tiny_dir, tmp_path, cli_run):
    from reptune.models import load_model
    from reptune.vectors import SteeringVector, VectorMeta

    handle = load_model(str(tiny_dir))
    generator = torch.Generator().manual_seed(0)
    meta = VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers, method="user")
    vector_path = tmp_path / "v.safetensors"
    SteeringVector({layer: torch.randn(handle.hidden_size, generator=generator) for layer in range(handle.num_layers)}, meta).save(vector_path)
    out = tmp_path / "results.json"
    code, stdout, err = cli_run("eval", "--model", tiny_dir, "--vector", vector_path, "--tasks", "robustness", "--set", "robustness.task=facts-ab",
                            "--set", "robustness.layers=1,2", "--set", "robustness.multipliers=-8,-4,0", "--limit", "3", "--precision", "fp32", "-o", out)
    assert code == 0, err
    data = json.loads(out.read_text())["tasks"]["robustness"]
    assert data["details"]["multipliers"] == [-8.0, -4.0, 0.0] and len(data["details"]["cells"]) == 6
    assert (tmp_path / "results.robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean_value" in stdout
    code, _, err = cli_run("eval", "--model", tiny_dir, "--tasks", "robustness", "-o", tmp_path / "r2.json")
    assert code == 2 and "needs a vector" in err and "Traceback" not in err
