"""Discovery extensions (issue #13): side-effect score, norm tuning, annealing, CMA-ES in a
subspace, tuning a found vector in. Tiny seeded models throughout (milliseconds each)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_model

from reptune.discovery import DiscoveryError, build_slices, discover
from reptune.discovery.side_effects import SideEffects, neutral_prompts, penalized, side_effect_scores
from reptune.errors import ReptuneError

TEXTS = ["The sky is blue. The grass is green.", "Hello world", "Cats are mammals."]
HIDDEN = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def llama():
    return build_model("llama")


@pytest.fixture(scope="module")
def slices(llama):
    return build_slices(llama, TEXTS, 0, 3)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --- side effects -------------------------------------------------------------------------------


def test_side_effect_is_zero_for_the_zero_vector_and_grows_with_the_norm(llama):
    texts = neutral_prompts(6)
    assert len(texts) == 6 and all(texts)
    direction = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()
    radii = [0.0, 0.5, 1.0, 2.0, 4.0]
    scores = side_effect_scores(llama, torch.stack([direction * r for r in radii]), 1, texts)
    assert scores.dtype == torch.float64
    assert scores[0] == 0.0
    assert all(b > a for a, b in zip(scores.tolist(), scores.tolist()[1:])), scores
    scorer = SideEffects(llama, 1, texts)
    assert torch.equal(scorer(direction.unsqueeze(0) * 2.0), scores[3:4])  # cached baseline, same value
    assert scorer.forward_passes == 1
    plain = penalized(lambda v: v.norm(dim=-1).double(), scorer, 0.0)(direction.unsqueeze(0))
    heavy = penalized(lambda v: v.norm(dim=-1).double(), scorer, 10.0)(direction.unsqueeze(0))
    assert float(plain) == pytest.approx(1.0) and float(heavy) < float(plain)


def test_discover_reports_and_ranks_by_side_effects(llama):
    result = discover(llama, TEXTS[:2], method="random", source=1, target=3, radius=2.0, num=3, score=False,
                      side_effects=neutral_prompts(4), rank_by="side_effect", seed=0)
    values = [row["side_effect"] for row in result.table()]
    assert values == sorted(values) and all(value > 0 for value in values)
    assert "side_effect" in result.markdown() and result.vectors[0].vector.meta.extra["scores"]["side_effect"] == values[0]
    # a heavy penalty puts the least disruptive vector first whatever the primary score
    penalised = discover(llama, TEXTS[:2], method="random", source=1, target=3, radius=2.0, num=3, score=False,
                         side_effects=neutral_prompts(4), side_effect_penalty=1e9, seed=0)
    assert [row["side_effect"] for row in penalised.table()] == values


def test_side_effect_bad_input_is_one_line(llama):
    with pytest.raises(DiscoveryError) as error:
        discover(llama, TEXTS[:1], source=1, target=3, radius=1.0, num=1, steps=0, score=False, side_effect_penalty=1.0)
    assert "side-effect" in _one_line(error)
    with pytest.raises(DiscoveryError) as error:
        discover(llama, TEXTS[:1], source=1, target=3, radius=1.0, num=1, steps=0, score=False, side_effects=["ok", " "])
    assert "side-effect" in _one_line(error)
    with pytest.raises(DiscoveryError) as error:
        discover(llama, TEXTS[:1], source=1, target=3, radius=1.0, num=1, steps=0, score=False, side_effects="neutral",
                 side_effect_penalty=-1.0)
    assert "penalty" in _one_line(error)
    assert issubclass(DiscoveryError, ReptuneError)


def test_cli_discover_side_effects(tiny_dir, tmp_path, cli_run):
    output = tmp_path / "found.safetensors"
    code, _, err = cli_run(
        "discover", "--model", tiny_dir, "--method", "random", "--source", 1, "--target", 3, "--radius", "2", "--num", 2,
        "--prompt", "Hello world", "--no-score", "--side-effects", "neutral", "--precision", "fp32", "-o", output,
    )
    assert code == 0, err
    assert "side_effect" in (tmp_path / "found.discovery.md").read_text()
    code, _, err = cli_run(
        "discover", "--model", tiny_dir, "--method", "anneal", "--budget", 16, "--source", 1, "--target", 3, "--radius", "2", "--num", 2,
        "--prompt", "Hello world", "--no-score", "--side-effects", "neutral", "--side-effect-penalty", "100", "--precision", "fp32",
        "-o", tmp_path / "quiet.safetensors",
    )
    assert code == 0, err
    report = (tmp_path / "quiet.discovery.md").read_text()
    assert "objective melbo - 100 x side_effect" in report and "side effect backward passes" in report
    code, _, err = cli_run("discover", "--model", tiny_dir, "--prompt", "hi", "--side-effect-penalty", "1", "--precision", "fp32",
                           "-o", tmp_path / "x.safetensors")
    assert code == 2 and "side-effects" in err and "Traceback" not in err


def test_side_effect_gradient_matches_finite_differences_and_the_scorer(llama):
    texts = neutral_prompts(4)
    scorer = SideEffects(llama, 1, texts)
    vectors = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(1)) * 0.5
    values, grads = scorer.value_and_grad(vectors)
    assert values.dtype == torch.float64 and grads.shape == (2, HIDDEN) and grads.dtype == torch.float32
    assert torch.allclose(values, scorer(vectors), rtol=1e-6, atol=1e-12)
    direction = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(2))
    eps = 1e-3
    slope = (scorer(vectors[:1] + eps * direction) - scorer(vectors[:1] - eps * direction)) / (2 * eps)
    assert float(grads[0] @ direction) == pytest.approx(float(slope), rel=0.05)
    zero_value, zero_grad = scorer.value_and_grad(torch.zeros(1, HIDDEN))
    assert float(zero_value) == 0.0 and float(zero_grad.abs().max()) < 1e-9  # KL is smallest at the unsteered model
    # forward: 2 with gradients, 2 without, 2 finite differences, 1 zero vector; backward: 2 + 1
    assert scorer.cost() == {"side_effect_forward_passes": 7, "side_effect_backward_passes": 3}


def _side_effect_setup():
    """The planted model, its slice and a side-effect scorer on six neutral sentences."""
    handle, _, _ = _planted()
    return handle, build_slices(handle, TEXTS, 1, 3), SideEffects(handle, 1, neutral_prompts(6))


def test_a_large_penalty_lowers_the_side_effect_of_gradient_annealing_and_melbo_at_equal_budget():
    from reptune.discovery.anneal import anneal_gradient
    from reptune.discovery.melbo import total_objective, train_melbo
    from reptune.discovery.side_effects import SideEffectPenalty

    _, slices, scorer = _side_effect_setup()
    starts = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(4))
    plain = anneal_gradient(slices, starts, 4.0, steps=12, seed=0)
    heavy = anneal_gradient(slices, starts, 4.0, steps=12, penalty=SideEffectPenalty(scorer, 1e5), seed=0)
    assert heavy.evaluations == plain.evaluations and heavy.cost["backward_passes"] == plain.cost["backward_passes"] == 36
    assert heavy.cost["side_effect_forward_passes"] == 36 + 3 and heavy.cost["side_effect_backward_passes"] == 36
    assert "side_effect" not in str(plain.cost) and heavy.settings["objective"] == "melbo - 100000 x side_effect"
    assert float(scorer(heavy.vectors).mean()) < 0.9 * float(scorer(plain.vectors).mean())
    # the scores are the penalised objective of the returned vectors
    expected = total_objective(slices, heavy.vectors).double() - 1e5 * scorer(heavy.vectors)
    assert torch.allclose(heavy.scores, expected, rtol=1e-4)
    melbo_plain = train_melbo(slices, 3, 4.0, steps=12, lr=0.1, init=starts, seed=0)
    melbo_heavy = train_melbo(slices, 3, 4.0, steps=12, lr=0.1, init=starts, seed=0, penalty=SideEffectPenalty(scorer, 1e5))
    assert float(scorer(melbo_heavy.vectors).mean()) < 0.9 * float(scorer(melbo_plain.vectors).mean())
    assert melbo_heavy.settings["side_effect_backward_passes"] == 36 and "side_effect_penalty" not in melbo_plain.settings
    # a zero weight is no penalty: the same vectors as without one
    same = anneal_gradient(slices, starts, 4.0, steps=12, penalty=SideEffectPenalty(scorer, 0.0), seed=0)
    assert torch.allclose(same.vectors, plain.vectors)


def test_discover_puts_the_penalty_inside_anneal_and_melbo_and_counts_its_passes():
    from reptune.discovery.search import SearchSpec

    handle, _, _ = _side_effect_setup()
    common = {"source": 1, "target": 3, "radius": 4.0, "num": 2, "score": False, "side_effects": neutral_prompts(6), "seed": 0}
    spec = SearchSpec(budget=40, candidates=8)
    plain = discover(handle, TEXTS, method="anneal", search=spec, **common)
    heavy = discover(handle, TEXTS, method="anneal", search=spec, side_effect_penalty=1e5, **common)
    assert heavy.settings["cost"]["evaluations"] == plain.settings["cost"]["evaluations"] <= 40  # equal budget
    steps = heavy.settings["steps"]
    # 8 candidates scored with the penalty, then per chain: steps forward + backward, one final forward
    assert heavy.settings["cost"]["side_effect_forward_passes"] == 8 + 2 * (steps + 1)
    assert heavy.settings["cost"]["side_effect_backward_passes"] == 2 * steps
    assert "side_effect_forward_passes" not in plain.settings["cost"]
    assert max(row["side_effect"] for row in heavy.table()) < min(row["side_effect"] for row in plain.table())
    assert "objective melbo - 100000 x side_effect" in heavy.markdown()
    # ranked by the method's score, which already subtracts the penalty: not subtracted twice
    assert [row["objective"] for row in heavy.table()] == sorted((row["objective"] for row in heavy.table()), reverse=True)
    melbo = discover(handle, TEXTS, method="melbo", steps=6, lr=0.1, side_effect_penalty=1e5, **common)
    unpenalised = discover(handle, TEXTS, method="melbo", steps=6, lr=0.1, **common)
    assert melbo.settings["side_effect_backward_passes"] == 12
    assert sum(row["side_effect"] for row in melbo.table()) < sum(row["side_effect"] for row in unpenalised.table())
    assert "- 100000 x side_effect" in melbo.markdown()


def test_rank_subtracts_the_penalty_once():
    from reptune.discovery.run import _rank

    own, side = torch.tensor([10.0, 9.0]), [0.0, 0.0]
    # vector 0: objective 10 already penalised; vector 1: 9. A second subtraction with side effects 3 / 0 would flip them
    assert _rank(own, None, "method", "anneal", [3.0, 0.0], 1.0, own_penalised=True) == [0, 1]
    assert _rank(own, None, "method", "random", [3.0, 0.0], 1.0) == [1, 0]
    assert _rank(own, None, "method", "anneal", side, 1.0, own_penalised=True) == [0, 1]


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_side_effect_penalty_bad_weight_is_one_line(llama, weight):
    from reptune.discovery.side_effects import SideEffectPenalty

    scorer = SideEffects(llama, 1, neutral_prompts(2))
    for make in (lambda: SideEffectPenalty(scorer, weight), lambda: penalized(lambda v: v[:, 0], scorer, weight)):
        with pytest.raises(DiscoveryError) as error:
            make()
        assert "side-effect penalty" in _one_line(error)
    with pytest.raises(DiscoveryError) as error:
        discover(llama, TEXTS[:1], source=1, target=3, radius=1.0, num=1, steps=0, score=False, side_effects="neutral",
                 side_effect_penalty=weight)
    assert "penalty" in _one_line(error)


# --- norm tuning ----------------------------------------------------------------------------------


def test_norm_curves_are_in_grid_order_monotone_and_reproducible(llama, slices):
    from reptune.discovery.norm import growth_statistic, norm_curves

    vectors = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(3))
    grid = [4.0, 0.5, 1.0, 2.0]  # given unsorted: curves come in ascending R
    curves = norm_curves(slices, vectors, grid, handle=llama, layer=0, prompts=TEXTS[:2], chat=False, max_new_tokens=4)
    again = norm_curves(slices, vectors, grid, handle=llama, layer=0, prompts=TEXTS[:2], chat=False, max_new_tokens=4)
    for curve, twin in zip(curves, again):
        assert curve.radii == sorted(grid)
        assert all(b > a for a, b in zip(curve.objective, curve.objective[1:])), curve.objective
        assert curve.to_json() == twin.to_json()
        assert 0.0 <= curve.growth <= 1.0 and set(curve.curves) >= {"diverge", "degenerate"}
        if curve.appear_radius is not None:
            assert curve.appear_radius in curve.radii
    # the statistic: proportional growth of every dimension is 0; uneven growth is not
    direction = torch.randn(HIDDEN, dtype=torch.float64)
    radii = [1.0, 2.0, 4.0]
    assert growth_statistic(torch.stack([direction * r for r in radii]), radii) == pytest.approx(0.0, abs=1e-12)
    uneven = torch.stack([direction * r + torch.eye(HIDDEN, dtype=torch.float64)[0] * r**3 for r in radii])
    assert growth_statistic(uneven, radii) > 0.1


def test_discover_with_norm_tuning_writes_curves_and_a_plot(llama, tmp_path):
    output = tmp_path / "found.safetensors"
    result = discover(llama, TEXTS[:2], method="random", source=1, target=3, radius=1.0, num=2, tune_norm=[0.5, 1.0, 2.0],
                      max_new_tokens=4, chat=False, seed=1, output=output)
    twin = discover(llama, TEXTS[:2], method="random", source=1, target=3, radius=1.0, num=2, tune_norm=[0.5, 1.0, 2.0],
                    max_new_tokens=4, chat=False, seed=1)
    assert [c.to_json() for c in result.norm] == [c.to_json() for c in twin.norm]
    assert (tmp_path / "found.norm.png").stat().st_size > 1000
    report = (tmp_path / "found.discovery.md").read_text()
    assert "## Norm tuning" in report and "found.norm.png" in report
    assert all("growth" in row for row in result.table())
    assert "growth" in result.vectors[0].vector.meta.extra["scores"]


@pytest.mark.parametrize("grid", [[], [1.0, 0.0], [-1.0, 2.0], [1.0, float("nan")], [1.0, 1.0]])
def test_norm_grid_bad_input_is_one_line_before_model_work(llama, grid, monkeypatch):
    from reptune.discovery import run

    monkeypatch.setattr(run, "build_slices", lambda *a, **k: pytest.fail("model work before the grid check"))
    with pytest.raises(DiscoveryError) as error:
        discover(llama, TEXTS[:1], source=1, target=3, radius=1.0, num=1, steps=0, tune_norm=grid)
    assert "grid" in _one_line(error)


def test_cli_discover_tune_norm(tiny_dir, tmp_path, cli_run):
    output = tmp_path / "found.safetensors"
    code, _, err = cli_run(
        "discover", "--model", tiny_dir, "--method", "random", "--source", 1, "--target", 3, "--radius", "2", "--num", 2,
        "--prompt", "Hello world", "-n", 3, "--tune-norm", "--norm-grid", "1,2,4", "--precision", "fp32", "-o", output,
    )
    assert code == 0, err
    assert (tmp_path / "found.norm.png").is_file()
    code, _, err = cli_run("discover", "--model", tiny_dir, "--prompt", "hi", "--tune-norm", "--norm-grid", "1,-2", "--precision", "fp32",
                           "-o", tmp_path / "x.safetensors")
    assert code == 2 and "grid" in err and "Traceback" not in err


# --- annealing around promising vectors ----------------------------------------------------------------


def _planted(seed: int = 0, radius: float = 4.0):
    """The planted marker neuron of test_discovery: block 3 reads direction ``w`` and writes the
    marker token's unembedding; steering at layer 1 along ``w`` with norm ``radius`` fires it."""
    handle = build_model("llama", seed=seed)
    generator = torch.Generator().manual_seed(123)
    w = torch.randn(HIDDEN, generator=generator)
    w /= w.norm()
    m = torch.randn(HIDDEN, generator=generator)
    m -= (m @ w) * w
    m /= m.norm()
    marker, sharpness = 100, 4.0
    mlp = handle.layers[3].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[0] = sharpness * w
        mlp.up_proj.weight[0] = w
        mlp.down_proj.weight[:, 0] = 0.1 * radius / sharpness * m
        handle.model.lm_head.weight[marker] = 1.5 * m
    return handle, w, marker


def _near(w: torch.Tensor, cosine: float, count: int, seed: int) -> torch.Tensor:
    """``count`` unit vectors at cosine ``cosine`` to ``w``."""
    noise = torch.randn(count, w.shape[0], generator=torch.Generator().manual_seed(seed))
    noise -= (noise @ w).unsqueeze(1) * w
    noise /= noise.norm(dim=-1, keepdim=True)
    return cosine * w + math.sqrt(1 - cosine**2) * noise


def test_annealing_from_the_planted_neighbourhood_converges_to_it():
    from reptune.discovery.anneal import anneal, anneal_gradient
    from reptune.discovery.objectives import readout_objective, slice_objective

    radius = 4.0
    handle, w, marker = _planted(radius=radius)
    slices = build_slices(handle, TEXTS[:2], 1, 3)
    # derivative-free on the slice objective, one chain from cosine 0.7
    objective = slice_objective(slices)
    start = _near(w, 0.7, 1, seed=5) * radius
    run = anneal(objective, start, radius, budget=400, proposals=8, sigma=0.5, seed=0)
    assert float(run.vectors[0] @ w) / radius > 0.9
    assert run.evaluations <= 400 and objective.evaluations == run.evaluations
    assert run.history == sorted(run.history) and run.vectors.norm(dim=-1).sub(radius).abs().max() < 1e-4
    again = anneal(slice_objective(slices), start, radius, budget=400, proposals=8, sigma=0.5, seed=0)
    assert torch.equal(run.vectors, again.vectors)
    # annealed projected gradient from three starts at cosine 0.6
    starts = _near(w, 0.6, 3, seed=6) * radius
    grad = anneal_gradient(slices, starts, radius, steps=20)
    assert bool(((grad.vectors @ w) / radius > 0.95).all()), grad.vectors @ w / radius
    assert grad.cost["backward_passes"] == 60 and not grad.vectors.requires_grad
    # derivative-free on an output score: the marker's next-token log-probability
    readout = readout_objective(handle, 1, TEXTS[:2], marker, chat=False)
    scored = anneal(readout, starts, radius, budget=60, proposals=4, seed=1)
    assert float(scored.scores.max()) >= float(readout(starts).max())
    assert readout.forward_passes == readout.evaluations


def test_annealing_bad_input_and_nan_scores(slices):
    from reptune.discovery.anneal import anneal

    start = torch.randn(2, HIDDEN)
    with pytest.raises(DiscoveryError) as error:
        anneal(lambda v: v[:, 0], start, 1.0, budget=5, proposals=4)  # below 2 starts + 2 x 4 proposals
    assert "budget" in _one_line(error)
    with pytest.raises(DiscoveryError) as error:
        anneal(lambda v: v[:, 0], torch.zeros(0, HIDDEN), 1.0)
    assert "starting" in _one_line(error)
    with pytest.raises(DiscoveryError) as error:
        anneal(lambda v: torch.full((v.shape[0],), float("nan")), start, 1.0, budget=40)
    assert "NaN" in _one_line(error)
    # NaN for half the space: never accepted, counted
    run = anneal(lambda v: torch.where(v[:, 0] > 0, v[:, 1].double(), torch.tensor(float("nan"), dtype=torch.float64)),
                 start.abs(), 1.0, budget=60)
    assert run.invalid > 0 and torch.isfinite(run.scores).all() and bool((run.vectors[:, 0] > 0).all())


# --- CMA-ES in a subspace -------------------------------------------------------------------------------


def test_cmaes_finds_a_rewarded_direction_in_a_low_dimensional_subspace(slices):
    pytest.importorskip("cmaes")
    from reptune.discovery.ensemble import cmaes_search, subspace_basis

    generator = torch.Generator().manual_seed(7)
    found = torch.randn(4, HIDDEN, generator=generator)  # e.g. the top vectors of another method
    target = torch.tensor([0.2, -0.7, 0.5, 0.4]) @ found
    target /= target.norm()
    calls = []

    def reward(vectors):  # any scorer: here the cosine to one known direction
        calls.append(vectors.shape[0])
        return (vectors @ target) / vectors.norm(dim=-1)

    basis = subspace_basis("span", HIDDEN, vectors=found)
    run = cmaes_search(reward, basis, 3.0, budget=240, seed=0)
    assert run.dim == 4 and float(run.scores[0]) > 0.9
    assert float(run.vectors[0] @ target) / 3.0 > 0.9 and abs(float(run.vectors[0].norm()) - 3.0) < 1e-4
    assert run.evaluations == sum(calls) <= 240 and run.invalid == 0
    again = cmaes_search(reward, basis, 3.0, budget=240, seed=0)
    assert torch.equal(run.vectors, again.vectors)
    # PCA and full subspaces have the expected shapes; the full space is the identity
    assert subspace_basis("pca", HIDDEN, slices=slices, dim=3).shape == (3, HIDDEN)
    assert torch.equal(subspace_basis("full", HIDDEN), torch.eye(HIDDEN))


def test_cmaes_treats_nan_scores_as_invalid_and_never_returns_them():
    pytest.importorskip("cmaes")
    from reptune.discovery.ensemble import cmaes_search, subspace_basis

    basis = subspace_basis("full", 4)

    def half_nan(vectors):
        scores = vectors[:, 0].double()
        return torch.where(vectors[:, 1] > 0, scores, torch.tensor(float("nan"), dtype=torch.float64))

    run = cmaes_search(half_nan, basis, 1.0, budget=64, population=8, seed=1)
    assert run.invalid > 0 and torch.isfinite(run.scores).all() and float(run.vectors[0, 1]) > 0
    with pytest.raises(DiscoveryError) as error:
        cmaes_search(lambda v: torch.full((v.shape[0],), float("nan")), basis, 1.0, budget=16, population=8)
    assert "NaN" in _one_line(error)


def test_cmaes_bad_input_is_one_line():
    pytest.importorskip("cmaes")
    from reptune.discovery.ensemble import cmaes_search, subspace_basis

    with pytest.raises(DiscoveryError) as error:
        cmaes_search(lambda v: v[:, 0], torch.eye(4), 1.0, budget=5, population=8)
    assert "population" in _one_line(error)
    with pytest.raises(DiscoveryError) as error:
        subspace_basis("span", HIDDEN, vectors=torch.zeros(2, HIDDEN))
    assert "empty subspace" in _one_line(error)
    with pytest.raises(DiscoveryError) as error:
        subspace_basis("pca", HIDDEN, dim=0)
    assert "empty subspace" in _one_line(error)
    with pytest.raises(DiscoveryError) as error:
        cmaes_search(lambda v: v[:, 0], torch.zeros(0, 4), 1.0)
    assert "empty subspace" in _one_line(error)


# --- the anneal and cmaes methods of discover --------------------------------------------------------


def test_discover_anneal_and_cmaes_methods(llama, tmp_path):
    pytest.importorskip("cmaes")
    from reptune.discovery.search import SearchSpec

    annealed = discover(llama, TEXTS[:2], method="anneal", source=1, target=3, radius=2.0, num=2, score=False,
                        search=SearchSpec(budget=40, candidates=8), seed=0)
    plain = discover(llama, TEXTS[:2], method="random", source=1, target=3, radius=2.0, num=2, candidates=8, score=False, seed=0)
    assert annealed.vectors[0].method_score >= plain.vectors[0].method_score  # searched around the same best random vectors
    cost = annealed.settings["cost"]
    assert cost["evaluations"] <= 40 and cost["backward_passes"] > 0 and annealed.settings["mode"] == "gradient"
    free = discover(llama, TEXTS[:2], method="anneal", source=1, target=3, radius=2.0, num=1, score=False,
                    search=SearchSpec(budget=30, candidates=6, anneal_mode="free"), seed=0)
    assert free.settings["cost"]["evaluations"] <= 30 and "free annealing" in free.markdown()
    found = torch.stack([item.tensor for item in plain.vectors])
    cma = discover(llama, TEXTS[:2], method="cmaes", source=1, target=3, radius=2.0, num=1, score=False,
                   search=SearchSpec(budget=24, subspace="span", subspace_vectors=found, population=6), output=tmp_path / "c.safetensors")
    assert cma.settings["dim"] == 2 and "CMA-ES in the span subspace" in (tmp_path / "c.discovery.md").read_text()
    assert cma.vectors[0].tensor.norm().sub(2.0).abs() < 1e-4


def test_anneal_pool_size_defaults_leave_room_for_a_step():
    from reptune.discovery.search import SearchSpec

    assert SearchSpec(budget=64).pool_size(4) == 32  # gradient mode (melbo objective): half the budget
    assert SearchSpec(budget=24).pool_size(8) == 8  # but at least one step of 8 chains stays in the budget
    assert SearchSpec(budget=64, anneal_mode="free").pool_size(4) == 16  # free mode: a quarter
    assert SearchSpec(budget=64, candidates=10).pool_size(4) == 10
    assert SearchSpec(budget=10).pool_size(4) == 4


@pytest.mark.parametrize(
    "method,spec,fragment",
    [
        ("cmaes", {"budget": 3, "population": 6}, "population"),
        ("cmaes", {"subspace": "span"}, "empty subspace"),
        ("cmaes", {"subspace": "pca", "subspace_dim": 0}, "empty subspace"),
        ("anneal", {"budget": 4, "candidates": 4}, "budget"),
        ("anneal", {"objective": "logit"}, "logit_tokens"),
        ("anneal", {"objective": "judge", "anneal_mode": "gradient"}, "judge"),
    ],
)
def test_search_bad_input_is_one_line_before_model_work(llama, monkeypatch, method, spec, fragment):
    from reptune.discovery import run
    from reptune.discovery.search import SearchSpec

    monkeypatch.setattr(run, "build_slices", lambda *a, **k: pytest.fail("model work before the check"))
    with pytest.raises(DiscoveryError) as error:
        discover(llama, TEXTS[:1], method=method, source=1, target=3, radius=1.0, num=1, score=False, search=SearchSpec(**spec))
    assert fragment in _one_line(error)


def test_search_with_a_nan_judge_reports_invalid_scores(llama):
    from reptune.discovery.search import SearchSpec

    seen = []

    def judge(prompts, completions):  # its second batch fails: every score NaN
        seen.append(len(completions))
        return [float("nan") if len(seen) == 2 else 1.0 + 0.01 * len(text) for text in completions]

    result = discover(llama, ["Hello world", "Cats are mammals."], method="anneal", source=1, target=3, radius=2.0, num=1, score=False,
                      judge=judge, rank_by="method", search=SearchSpec(budget=16, candidates=4, objective="judge", max_new_tokens=4),
                      chat=False, seed=0)
    assert len(seen) >= 2 and math.isfinite(result.vectors[0].method_score)  # a NaN-scored vector is never kept
    assert result.settings["invalid"] > 0 and result.settings["cost"]["judge_calls"] == len(seen)
    assert "invalid (NaN) scores" in result.markdown()


def test_cli_discover_cmaes_span_and_anneal(tiny_dir, tmp_path, cli_run):
    pytest.importorskip("cmaes")
    found = tmp_path / "found.safetensors"
    common = ["--model", tiny_dir, "--source", 1, "--target", 3, "--radius", "2", "--prompt", "Hello world", "--no-score", "--precision", "fp32"]
    code, _, err = cli_run("discover", *common, "--method", "random", "--num", 3, "-o", found)
    assert code == 0, err
    code, _, err = cli_run("discover", *common, "--method", "cmaes", "--subspace", "span", "--span-of", found, "--budget", 24, "--population", 6,
                           "--num", 1, "-o", tmp_path / "c.safetensors")
    assert code == 0, err
    code, _, err = cli_run("discover", *common, "--method", "anneal", "--budget", 30, "--candidates", 6, "--num", 1, "-o", tmp_path / "a.safetensors")
    assert code == 0, err
    code, _, err = cli_run("discover", *common, "--method", "cmaes", "--subspace", "span", "--num", 1, "-o", tmp_path / "x.safetensors")
    assert code == 2 and "empty subspace" in err and "Traceback" not in err


# --- from a found vector to weights ----------------------------------------------------------------


def test_a_discovered_vector_tuned_in_with_pos_raises_the_cosine_without_hooks(tmp_path):
    from reptune.discovery.weights import compare_tune_in, generation_items, write_generation_pairs

    prompts = ["Hello world", "Cats are mammals.", "The sky is blue.", "Dogs bark at night."]
    found = discover(build_model("llama", chat=True), prompts, method="random", source=2, target=3, radius=4.0, num=1, score=False, seed=0)
    vector = found.best
    report = compare_tune_in(lambda: build_model("llama", chat=True), vector, prompts, tmp_path, steps=20, lr=1e-2, max_new_tokens=4,
                             batch_size=4, eval_every=100, checkpoint_every=100)
    assert report["pos"]["cos"] > report["base"]["cos"] + 0.2, report
    assert report["pos"]["cos"] > report["sft"]["cos"]
    for name in ("base", "pos", "sft"):
        assert 0.0 <= report[name]["agreement"] <= 1.0
    assert (tmp_path / "generations.jsonl").is_file()
    items = generation_items(build_model("llama", chat=True), vector, prompts[:2], max_new_tokens=3)
    assert all(item.completion for item in items)
    path = write_generation_pairs(items, tmp_path / "pairs.jsonl")
    from reptune.tuning import load_tune_items

    loaded, _ = load_tune_items(str(path), build_model("llama", chat=True).tokenizer)
    assert [item.completion for item in loaded] == [item.completion for item in items]


def test_cli_discover_writes_generations_for_sft(tiny_dir, tmp_path, cli_run):
    from reptune.tuning import load_tune_items

    output, pairs = tmp_path / "found.safetensors", tmp_path / "gens.jsonl"
    code, _, err = cli_run(
        "discover", "--model", tiny_dir, "--method", "random", "--source", 1, "--target", 3, "--radius", "2", "--num", 1,
        "--prompt", "Hello world", "--prompt", "Cats are mammals.", "-n", 3, "--generations", pairs, "--precision", "fp32", "-o", output,
    )
    assert code == 0, err
    items, _ = load_tune_items(str(pairs), build_model("llama", chat=True).tokenizer)
    assert len(items) == 2 and all(item.completion for item in items)
    code, _, err = cli_run("discover", "--model", tiny_dir, "--prompt", "hi", "--generations", tmp_path / "g.txt", "--precision", "fp32",
                           "-o", tmp_path / "x.safetensors")
    assert code == 2 and "--generations" in err
