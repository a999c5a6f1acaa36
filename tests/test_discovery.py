"""Unsupervised discovery: the layer-slice replay, MELBO, random baselines and search, DCT,
scoring, vector files and the ``discover`` command.

Tiny seeded models throughout (fast); one test on the embedded model is marked ``real_model``.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import build_model, build_tokenizer

from reptune.activations import capture_layers, run_until, tokenize_examples
from reptune.data.pairs import Example
from reptune.discovery import (
    DiscoveryError,
    LayerSlice,
    build_slices,
    calibrate_radius,
    discover,
    fit_dct,
    load_prompts,
    local_search,
    log_grid,
    random_search,
    random_vectors,
    score_vectors,
    sweep_radius,
    train_melbo,
)
from reptune.discovery.dct import mean_response
from reptune.discovery.melbo import total_objective
from reptune.errors import ReptuneError
from reptune.models import wrap_model
from reptune.steering import Steering, steered_generate
from reptune.vectors import load_vector

TEXTS = ["The sky is blue. The grass is green.", "Hello world", "Cats are mammals."]
HIDDEN = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP barriers
    stall when the other core is taken: one thread keeps these tests fast and steady."""
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


def _forward_target(handle, texts, target, theta=None, source=0):
    """The model's own target-layer output (right padding), optionally steered at ``source``."""
    batch = tokenize_examples(handle.tokenizer, [Example(t) for t in texts], padding_side="right")
    steering = Steering(handle, {source: theta}) if theta is not None else None
    with torch.no_grad(), capture_layers(handle, [target], stop_after=target) as got:
        if steering is not None:
            with steering:
                run_until(handle, batch)
        else:
            run_until(handle, batch)
    return got[target], batch.attention_mask.bool()


def _gemma3():
    tokenizer = build_tokenizer()
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return wrap_model(model, tokenizer, model_id="tiny-gemma3")


# --- the layer slice ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "gpt2", "gpt_neox", "phi", "gemma3"])
def test_replay_matches_the_models_forward(arch):
    handle = _gemma3() if arch == "gemma3" else build_model(arch)
    piece = LayerSlice(handle, TEXTS, 0, 2)
    reference, real = _forward_target(handle, TEXTS, 2)
    for k in (1, 3):  # recorded block arguments tiled for k vectors
        base = piece.baseline(k)
        for v in range(k):
            assert torch.allclose(base[v][real], reference[real], atol=1e-5)
    # steered: the replay on cached + theta is the model's forward with theta added at layer 0
    theta = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(1))
    steered = piece.target_acts(theta)
    for v in range(2):
        expected, _ = _forward_target(handle, TEXTS, 2, theta[v])
        assert torch.allclose(steered[v][real], expected[real], atol=1e-5)


def test_delta_at_zero_is_exactly_zero(slices):
    piece = slices[0]
    for k in (1, 4):
        zero = torch.zeros(k, HIDDEN)
        assert torch.equal(piece.delta(zero), torch.zeros_like(piece.delta(zero)))
        with_grad = torch.zeros(k, HIDDEN, requires_grad=True)
        assert bool((piece.delta(with_grad) == 0).all())
        assert torch.equal(piece.objective(zero), torch.zeros(k))


def test_objective_is_summed_over_prompts_with_the_norm_over_the_hidden_dimension(slices):
    piece = slices[0]
    theta = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(2))
    delta = piece.delta(theta).detach()
    for p, q in ((2.0, 1.0), (1.0, 1.0), (3.0, 2.0)):
        expected = torch.zeros(2)
        for v in range(2):
            for i in range(piece.num_prompts):
                norms = delta[v, i][piece.mask[i]].norm(dim=-1)  # one norm per token, over hidden
                expected[v] += norms.pow(p).sum().pow(1 / q)
        assert torch.allclose(piece.objective(theta, p, q).detach(), expected, rtol=1e-4)


def test_prompt_chunks_and_positions(llama):
    theta = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(6))
    whole = build_slices(llama, TEXTS, 0, 3)
    chunked = build_slices(llama, TEXTS, 0, 3, prompt_batch_size=2)
    assert [piece.num_prompts for piece in chunked] == [2, 1]
    assert torch.allclose(total_objective(whole, theta), total_objective(chunked, theta), rtol=1e-5)
    last = LayerSlice(llama, TEXTS, 0, 3, positions="last:2")
    assert last.mask.sum(-1).tolist() == [2, 2, 2]
    assert (last.objective(theta) < whole[0].objective(theta)).all()
    with pytest.raises(DiscoveryError):
        LayerSlice(llama, TEXTS, 0, 3, positions="generated")
    # zero steps from given starts: the starts, rescaled to the radius
    start = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(7))
    run = train_melbo(chunked, 3, 2.0, steps=0, init=start)
    assert torch.allclose(run.vectors[:2], start / start.norm(dim=-1, keepdim=True) * 2.0, atol=1e-6)


@pytest.mark.parametrize("arch,eps,rtol", [("gpt2", 1e-6, 1e-8), ("llama", 1e-3, 2e-5)])
@pytest.mark.parametrize("p,q", [(2.0, 1.0), (3.0, 2.0)])
def test_objective_gradient_matches_finite_differences(arch, eps, rtol, p, q):
    # float64 model; Llama's RMSNorm computes in float32 internally, hence its larger step
    handle = build_model(arch)
    handle.model.double()
    piece = LayerSlice(handle, TEXTS[:2], 0, 3)
    generator = torch.Generator().manual_seed(3)
    theta = torch.randn(2, HIDDEN, generator=generator, dtype=torch.float64).requires_grad_(True)
    piece.objective(theta, p, q).sum().backward()
    for _ in range(3):
        direction = torch.randn(2, HIDDEN, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            plus = piece.objective(theta + eps * direction, p, q).sum()
            minus = piece.objective(theta - eps * direction, p, q).sum()
        numeric = (plus - minus) / (2 * eps)
        analytic = (theta.grad * direction).sum()
        assert torch.allclose(analytic, numeric, rtol=rtol, atol=0), (analytic, numeric)


# --- MELBO -------------------------------------------------------------------------------------


def test_melbo_vectors_have_norm_r_and_are_orthogonal_when_asked(slices):
    radius = 1.5
    run = train_melbo(slices, 6, radius, steps=4, lr=0.05, orthogonal=True)
    assert run.vectors.shape == (6, HIDDEN)
    assert ((run.vectors.norm(dim=-1) - radius).abs() < 1e-5).all()
    gram = run.vectors @ run.vectors.T / radius**2
    assert (gram - torch.eye(6)).abs().max() < 1e-5
    # orthogonal to earlier vectors given from outside, too
    later = train_melbo(slices, 3, radius, steps=3, lr=0.05, orthogonal=True, orthogonal_to=run.vectors, seed=1)
    assert (later.vectors @ run.vectors.T).abs().max() / radius**2 < 1e-5
    assert ((later.vectors.norm(dim=-1) - radius).abs() < 1e-5).all()
    # without orthogonality the vectors are free (and still on the sphere)
    free = train_melbo(slices, 3, radius, steps=3, lr=0.05)
    assert ((free.vectors.norm(dim=-1) - radius).abs() < 1e-5).all()


def test_orthogonal_melbo_is_sequential_by_default_as_in_the_paper(slices):
    """Vector i is trained after vectors 0..i-1 are frozen: exactly training it alone, orthogonal to them."""
    radius, steps = 1.5, 6
    start = random_vectors(HIDDEN, 3, radius, seed=21)
    run = train_melbo(slices, 3, radius, steps=steps, lr=0.05, orthogonal=True, init=start)
    assert run.settings["orthogonal_order"] == "sequential" and run.settings["vector_batch_size"] == 1
    for i in range(3):
        frozen = run.vectors[:i]
        alone = train_melbo(slices, 1, radius, steps=steps, lr=0.05, init=start[i : i + 1], orthogonal_to=frozen if i else None)
        assert torch.allclose(run.vectors[i], alone.vectors[0], atol=1e-5)
        assert torch.allclose(run.history[:, i], alone.history[:, 0], rtol=1e-4)
        if i:  # orthogonal to every frozen vector
            assert float((run.vectors[i].double() @ frozen.double().T).abs().max()) / radius**2 < 1e-6
    # the first vector trained as if alone: later vectors never moved it
    first = train_melbo(slices, 1, radius, steps=steps, lr=0.05, init=start[:1])
    assert torch.allclose(run.vectors[0], first.vectors[0], atol=1e-6)
    # parallel: all at once, orthogonalised in order every step; orthogonal too, but other vectors
    parallel = train_melbo(slices, 3, radius, steps=steps, lr=0.05, orthogonal=True, orthogonal_order="parallel", init=start)
    assert parallel.settings["orthogonal_order"] == "parallel" and parallel.settings["vector_batch_size"] == 3
    gram = parallel.vectors.double() @ parallel.vectors.double().T / radius**2
    assert (gram - torch.eye(3, dtype=gram.dtype)).abs().max() < 1e-5
    assert not torch.allclose(parallel.vectors[1:], run.vectors[1:], atol=1e-3)
    with pytest.raises(DiscoveryError, match="sequential or parallel"):
        train_melbo(slices, 2, radius, steps=1, orthogonal=True, orthogonal_order="random")


def test_melbo_objective_rises_and_beats_the_best_random_vector(slices):
    radius = 1.0
    run = train_melbo(slices, 4, radius, steps=25, lr=0.05)
    assert run.history.shape == (25, 4)
    assert (run.objective > run.history[0]).all()  # every vector improved on its start
    random_best = total_objective(slices, random_vectors(HIDDEN, 64, radius, seed=7)).max()
    assert run.objective.max() > random_best


def test_same_seed_gives_identical_vectors(slices):
    first = train_melbo(slices, 3, 1.0, steps=5, lr=0.05, orthogonal=True, seed=11)
    second = train_melbo(slices, 3, 1.0, steps=5, lr=0.05, orthogonal=True, seed=11)
    other = train_melbo(slices, 3, 1.0, steps=5, lr=0.05, orthogonal=True, seed=12)
    assert torch.equal(first.vectors, second.vectors)
    assert not torch.equal(first.vectors, other.vectors)
    assert torch.equal(random_vectors(HIDDEN, 4, 2.0, seed=5), random_vectors(HIDDEN, 4, 2.0, seed=5))


def test_batched_training_follows_the_one_at_a_time_updates(slices):
    start = random_vectors(HIDDEN, 3, 1.0, seed=4)
    batched = train_melbo(slices, 3, 1.0, steps=6, lr=0.05, init=start)
    for row in range(3):
        alone = train_melbo(slices, 1, 1.0, steps=6, lr=0.05, init=start[row : row + 1])
        assert torch.allclose(batched.vectors[row], alone.vectors[0], atol=1e-4)
    grouped = train_melbo(slices, 3, 1.0, steps=6, lr=0.05, init=start, vector_batch_size=2)
    assert torch.allclose(grouped.vectors, batched.vectors, atol=1e-4)


def _planted(seed: int = 0, radius: float = 4.0):
    """A tiny Llama whose block 3 holds one hand-wired MLP neuron: it reads a hidden direction
    ``w`` (quadratically, via gate and up projections) and writes along the unembedding of a
    marker token. Steering at layer 1 along ``w`` with norm ``radius`` makes the marker likely."""
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


def _marker_probability(handle, vector, layer, texts, marker) -> float:
    batch = tokenize_examples(handle.tokenizer, [Example(t) for t in texts], padding_side="left")
    with torch.no_grad(), Steering(handle, {layer: vector}):
        logits = handle.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    return float(logits[:, -1].softmax(-1)[:, marker].mean())


def test_melbo_finds_a_planted_marker_neuron_that_random_vectors_miss():
    radius, texts = 4.0, TEXTS[:2]
    handle, w, marker = _planted(radius=radius)
    run = train_melbo(build_slices(handle, texts, 1, 3), 16, radius, steps=25, lr=0.1)
    learned = [_marker_probability(handle, vector, 1, texts, marker) for vector in run.vectors]
    chance = [_marker_probability(handle, vector, 1, texts, marker) for vector in random_vectors(HIDDEN, 16, radius, seed=1)]
    assert max(learned) > 0.5, learned
    assert max(chance) < 0.5, chance
    best = run.vectors[max(range(16), key=lambda i: learned[i])]
    assert float(best @ w) / radius > 0.8  # it found the neuron's direction


# --- random baselines, search, DCT ------------------------------------------------------------------


def test_random_vectors_sweep_and_search(slices):
    rows = random_vectors(HIDDEN, 5, 3.0, orthogonal=True, seed=2)
    assert ((rows.norm(dim=-1) - 3.0).abs() < 1e-5).all()
    assert (rows @ rows.T / 9.0 - torch.eye(5)).abs().max() < 1e-5
    others = random_vectors(HIDDEN, 2, 3.0, orthogonal_to=rows, seed=3)
    assert (others @ rows.T).abs().max() < 1e-4
    grid = log_grid(0.1, 10.0, 5)
    assert grid[0] == pytest.approx(0.1) and grid[-1] == pytest.approx(10.0) and grid[2] == pytest.approx(1.0)
    sweep = sweep_radius(slices, grid[:3], num=4, with_ratio=False)
    means = [row["objective_mean"] for row in sweep.rows]
    assert means == sorted(means) and "| R |" in sweep.markdown()
    plain = random_search(slices, 3, 1.0, candidates=3, seed=0)
    searched = random_search(slices, 3, 1.0, candidates=24, seed=0)
    assert searched.objective.min() >= plain.objective.min() - 1e-6
    assert list(searched.objective) == sorted(searched.objective, reverse=True)
    refined = random_search(slices, 2, 1.0, candidates=8, refine_steps=6, lr=0.05, seed=0)
    assert (refined.objective > torch.tensor(refined.settings["candidate_objective"])).all()
    polished = local_search(slices, searched.vectors[:1] * 5.0, 1.0, steps=5, lr=0.05)
    assert abs(float(polished.vectors.norm()) - 1.0) < 1e-5 and polished.objective[0] > searched.objective[0]


def test_dct_calibrates_the_radius_and_finds_stronger_directions_than_chance(slices):
    calibration = calibrate_radius(slices, num_directions=4, points=7, bisections=6)
    assert abs(calibration.ratio - 0.5) < 0.02
    ratios = [ratio for _, ratio in calibration.grid]
    assert min(ratios) < 0.5 < max(ratios)
    radius = calibration.radius
    result = fit_dct(slices, 4, radius, iters=8)
    assert ((result.vectors.norm(dim=-1) - radius).abs() < 1e-5).all()
    chance = mean_response(slices, random_vectors(HIDDEN, 32, radius, seed=9)).norm(dim=-1)
    strength = mean_response(slices, result.vectors).norm(dim=-1)  # |Delta(R v_l)| of the fitted factors
    assert strength.min() > chance.max()


def _reference_dct(slices, num, radius, iters, seed):
    """ExponentialDCT.fit + rank of amack315/melbo-dct-post (src/dct.py), written out with columns
    ``V [hidden, m]`` as there: QR at the start of each iteration, U and V from Delta and its
    gradient, no orthogonalisation after the last update; alpha = solve(K, b)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(num, HIDDEN, generator=generator)
    V = torch.nn.functional.normalize(rows.T.double(), dim=0).float()
    U = torch.nn.functional.normalize(torch.randn(num, HIDDEN, generator=generator).T, dim=0)
    count = sum(piece.num_prompts for piece in slices)
    for _ in range(iters):
        Q, Rq = torch.linalg.qr(V.double())
        V = (Q * torch.sign(Rq.diagonal())).float()  # the QR, orientation kept
        theta = (radius * V.T).clone().requires_grad_(True)
        delta = sum(piece.mean_delta_sum(theta) for piece in slices) / count  # [m, hidden]
        (delta * U.T).sum().backward()
        U = torch.nn.functional.normalize(delta.detach().T, dim=0)
        V = torch.nn.functional.normalize(theta.grad.T, dim=0)
    delta = mean_response(slices, radius * V.T)
    b = (delta * U.T).sum(-1).double()
    K = (U.T.double() @ U.double()) * torch.expm1(V.T.double() @ V.double())
    return V.T, U.T, torch.linalg.solve(K, b).float(), K


def test_dct_orthogonalises_at_the_start_of_each_iteration_as_the_reference(slices):
    radius, num = 1.5, 4
    result = fit_dct(slices, num, radius, iters=5, seed=3)
    inputs, outputs, alpha, kernel = _reference_dct(slices, num, radius, 5, seed=3)
    assert torch.allclose(result.input_dirs, inputs, atol=1e-4)
    assert torch.allclose(result.output_dirs, outputs, atol=1e-4)
    assert torch.allclose(result.alpha, alpha, rtol=1e-3, atol=1e-6)
    # the final directions are the last gradients: not exactly orthogonal, so the ranking solve is not trivial
    assert result.max_overlap > 1e-4
    assert (kernel - (torch.e - 1) * torch.eye(num, dtype=kernel.dtype)).abs().max() > 1e-4
    assert not torch.allclose(result.alpha, result.response / (torch.e - 1), rtol=1e-3)
    # ... and alpha solves it
    assert torch.allclose(kernel @ result.alpha.double(), result.response.double(), rtol=1e-4, atol=1e-6)
    # each iteration starts from orthonormal directions: one more iteration from QR(V) reproduces the next fit
    longer = fit_dct(slices, num, radius, iters=6, seed=3)
    assert torch.allclose(longer.input_dirs, _reference_dct(slices, num, radius, 6, seed=3)[0], atol=1e-4)


# --- bad input -----------------------------------------------------------------------------------


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert isinstance(error.value, ReptuneError) and "\n" not in message
    return message


def test_bad_input_raises_one_line_discovery_errors(llama, slices):
    with pytest.raises(DiscoveryError) as error:
        LayerSlice(llama, TEXTS, 2, 2)
    assert "before target" in _one_line(error)
    with pytest.raises(DiscoveryError):
        discover(llama, TEXTS, source=3, target=1, radius=1.0)
    with pytest.raises(DiscoveryError):
        discover(llama, TEXTS, source=-1, target=0, radius=1.0)  # -1 is block 3
    for bad_radius in (0.0, -1.0, float("nan"), "big"):
        with pytest.raises(DiscoveryError) as error:
            discover(llama, TEXTS, source=0, target=3, radius=bad_radius)
        _one_line(error)
    with pytest.raises(DiscoveryError):
        train_melbo(slices, 2, -0.5)
    with pytest.raises(DiscoveryError):
        random_vectors(HIDDEN, 2, 0.0)
    with pytest.raises(DiscoveryError):
        fit_dct(slices, 2, 0.0)
    with pytest.raises(DiscoveryError) as error:
        discover(llama, [], source=0, target=3, radius=1.0)
    assert "no prompts" in _one_line(error)
    with pytest.raises(DiscoveryError):
        build_slices(llama, [], 0, 3)
    for call in (
        lambda: train_melbo(slices, HIDDEN + 1, 1.0, steps=1, orthogonal=True),
        lambda: random_vectors(HIDDEN, HIDDEN + 1, 1.0, orthogonal=True),
        lambda: fit_dct(slices, HIDDEN + 1, 1.0),
        lambda: discover(llama, TEXTS, source=0, target=3, radius=1.0, num=HIDDEN + 1, orthogonal=True),
        lambda: train_melbo(slices, 30, 1.0, steps=1, orthogonal=True, orthogonal_to=torch.randn(3, HIDDEN)),
    ):
        with pytest.raises(DiscoveryError) as error:
            call()
        assert "orthogonal" in _one_line(error)
    # without orthogonality more vectors than dimensions are fine
    assert random_vectors(HIDDEN, HIDDEN + 1, 1.0).shape == (HIDDEN + 1, HIDDEN)
    with pytest.raises(DiscoveryError):
        discover(llama, TEXTS, method="magic", source=0, target=3, radius=1.0)
    with pytest.raises(DiscoveryError):
        discover(llama, TEXTS, source=0, target=3, radius=1.0, rank_by="logit")  # no logit tokens
    with pytest.raises(DiscoveryError):
        discover(llama, TEXTS, method="random", source=0, target=3, radius=1.0, init=torch.ones(1, HIDDEN))
    with pytest.raises(DiscoveryError):
        discover(llama, TEXTS, method="melbo", source=0, target=3, radius=1.0, candidates=8)


# --- scoring, files, API -----------------------------------------------------------------------------


def test_scoring_metrics_and_judge_hook():
    handle = build_model("llama", chat=True)
    seen = {}

    def judge(prompts, completions):
        seen["prompts"], seen["completions"] = list(prompts), list(completions)
        return [float(len(text)) for text in completions]

    vectors = torch.stack([torch.full((HIDDEN,), 1e-7), torch.randn(HIDDEN, generator=torch.Generator().manual_seed(0)) * 50])
    baseline, scores = score_vectors(
        handle, vectors, 1, ["Cats are mammals", "The sky"], max_new_tokens=6, diverge_within=4, logit_tokens=("The", "Cats"),
        match=["zzzz-never"], judge=judge,
    )
    assert scores[0].diverge == 0.0 and scores[0].completions == baseline.completions  # a negligible vector changes nothing
    assert abs(scores[0].logit_shift) < 1e-3
    assert scores[1].diverge == 1.0 and scores[1].completions != baseline.completions
    assert scores[1].match == 0.0 and baseline.match == 0.0
    assert seen["prompts"] == ["Cats are mammals", "The sky"] and seen["completions"] == scores[1].completions
    assert scores[1].judge == pytest.approx(sum(len(t) for t in scores[1].completions) / 2)
    with pytest.raises(DiscoveryError):
        score_vectors(handle, vectors[:1], 1, ["hi"], judge=lambda p, c: [1.0, 2.0, 3.0])


def test_discover_writes_ranked_vector_files_and_a_report(tmp_path):
    handle = build_model("llama", chat=True)
    output = tmp_path / "vecs.safetensors"
    (tmp_path / "vecs.rank7.safetensors").write_bytes(b"stale")  # from an earlier, larger run
    result = discover(
        handle, TEXTS[:2], method="melbo", source=1, target=3, radius=2.0, num=3, steps=4, lr=0.05, eval_prompts=["Water boils"],
        max_new_tokens=5, logit_tokens=("The", "Cats"), output=output,
    )
    assert result.rank_by == "logit" and result.held_out
    assert [item.rank for item in result.vectors] == [1, 2, 3]
    diffs = [item.scores.logit_diff for item in result.vectors]
    assert diffs == sorted(diffs, reverse=True)
    best = load_vector(output, handle)
    assert best.layers == [1] and best.meta.method == "melbo" and best.meta.normalization == "radius"
    assert abs(float(best[1].norm()) - 2.0) < 1e-5
    extra = best.meta.extra
    assert extra["radius"] == 2.0 and extra["rank"] == 1 and extra["best_layers"] == [1] and extra["target_layer"] == 3
    assert set(extra["scores"]) >= {"objective", "diverge", "logit_diff"}
    assert torch.equal(best[1], result.best[1])
    for rank in (2, 3):
        other = load_vector(tmp_path / f"vecs.rank{rank}.safetensors", handle)
        assert other.meta.extra["rank"] == rank and other.layers == [1]
    assert not (tmp_path / "vecs.rank7.safetensors").exists()
    report = (tmp_path / "vecs.discovery.md").read_text()
    assert "## Ranked vectors" in report and "vecs.rank2.safetensors" in report and "Sample completions" in report
    summary = json.loads((tmp_path / "vecs.discovery.json").read_text())
    assert summary["files"] == {"1": "vecs.safetensors", "2": "vecs.rank2.safetensors", "3": "vecs.rank3.safetensors"}
    assert len(summary["history"]) == 3 and len(summary["history"][0]) == 4
    # the file steers like any other vector
    columns = steered_generate(handle, best, ["Water boils"], [0.0, 1.0], max_new_tokens=5)
    assert columns[0.0] == result.baseline.completions and columns[1.0] == result.vectors[0].scores.completions


def test_discover_random_and_dct_methods(llama):
    random_result = discover(llama, TEXTS, method="random", source=0, target=3, radius=1.0, num=3, candidates=12, score=False, chat=False,
                             sweep=True)
    assert random_result.rank_by == "method" and random_result.baseline is None
    assert len(random_result.sweep.rows) == 9 and "log grid of radii" in random_result.markdown()
    objectives = [item.method_score for item in random_result.vectors]
    assert objectives == sorted(objectives, reverse=True)
    assert random_result.best.meta.method == "random"
    dct_result = discover(llama, TEXTS, method="dct", source=0, target=3, radius="auto", num=3, dct_iters=3, score=False,
                          chat=False, calibration_directions=4)
    assert dct_result.radius_source == "calibrated" and dct_result.calibration is not None
    assert dct_result.settings["orthogonal"] is True and dct_result.best.meta.method == "dct"
    alphas = [abs(item.method_score) for item in dct_result.vectors]
    assert alphas == sorted(alphas, reverse=True)
    assert all(abs(float(item.tensor.norm()) - dct_result.radius) < 1e-5 for item in dct_result.vectors)
    assert "Radius calibration" in dct_result.markdown()


def test_discover_records_the_orthogonal_order(llama):
    for order in ("sequential", "parallel"):
        result = discover(llama, TEXTS, source=0, target=3, radius=1.0, num=2, steps=2, orthogonal=True, orthogonal_order=order, score=False, chat=False)
        assert result.settings["orthogonal_order"] == order and f"True ({order}: " in result.markdown()
    default = discover(llama, TEXTS, source=0, target=3, radius=1.0, num=2, steps=1, orthogonal=True, score=False, chat=False)
    assert default.settings["orthogonal_order"] == "sequential"
    with pytest.raises(DiscoveryError, match="sequential or parallel"):
        discover(llama, TEXTS, source=0, target=3, radius=1.0, num=2, steps=1, orthogonal=True, orthogonal_order="both", score=False)


def test_load_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\n second \n")
    (tmp_path / "p.jsonl").write_text('"a"\n{"prompt": "b"}\n')
    (tmp_path / "p.json").write_text('{"prompts": ["x", {"prompt": "y"}]}')
    assert load_prompts(tmp_path / "p.txt") == ["first", "second"]
    assert load_prompts(tmp_path / "p.jsonl") == ["a", "b"]
    assert load_prompts(tmp_path / "p.json") == ["x", "y"]
    (tmp_path / "empty.txt").write_text("\n")
    for bad in ("empty.txt", "missing.txt"):
        with pytest.raises(DiscoveryError):
            load_prompts(tmp_path / bad)


# --- command line ------------------------------------------------------------------------------------


@pytest.fixture()
def run_cli(cli_run):
    return cli_run


def test_cli_discover_writes_files_that_steer_takes(tiny_dir, tmp_path, run_cli):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The sky is blue.\nHello world\n")
    output = tmp_path / "out" / "found.safetensors"
    code, out, err = run_cli(
        "discover", "--model", tiny_dir, "--method", "melbo", "--source", 1, "--target", 3, "--radius", "2", "--num", 2,
        "--prompts", prompts, "--steps", 3, "--lr", "0.05", "-n", 4, "--precision", "fp32", "-o", output,
    )
    assert code == 0, err
    assert output.is_file() and (output.parent / "found.rank2.safetensors").is_file()
    assert (output.parent / "found.discovery.md").is_file() and "found.safetensors" in out
    code, out, err = run_cli("steer", "--model", tiny_dir, "--vector", output, "-x", 0, "-x", 1, "--prompt", "Hello", "-n", 3, "--precision", "fp32")
    assert code == 0, err
    # search around the found vector: zero steps from it gives it back (rescaled to the new radius)
    again = tmp_path / "again.safetensors"
    code, out, err = run_cli(
        "discover", "--model", tiny_dir, "--init", output, "--source", 1, "--target", 3, "--radius", "4", "--num", 1,
        "--prompt", "Hello world", "--steps", 0, "--no-score", "--precision", "fp32", "-o", again,
    )
    assert code == 0, err
    assert torch.allclose(load_vector(again)[1], load_vector(output)[1] * 2.0, atol=1e-5)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--source", 3, "--target", 1, "--prompt", "hi"], "before"),
        (["--source", 2, "--target", 2, "--prompt", "hi"], "before"),
        (["--radius", "0", "--prompt", "hi"], "radius"),
        (["--radius", "-2", "--prompt", "hi"], "radius"),
        (["--radius", "wide", "--prompt", "hi"], "radius"),
        ([], "no prompts"),
        (["--prompts", "missing.txt"], "not found"),
        (["--source", 0, "--target", 3, "--prompt", "hi", "--num", 40, "--orthogonal", "--radius", "1"], "orthogonal"),
        (["--method", "pca", "--prompt", "hi"], "method"),
        (["--prompt", "hi", "--orthogonal", "--orthogonal-order", "greedy"], "orthogonal-order"),
        (["--prompt", "hi", "--logit", "Sure"], "--logit"),
    ],
)
def test_cli_discover_bad_input_is_one_line_exit_2(tiny_dir, tmp_path, run_cli, args, fragment):
    output = tmp_path / "v.safetensors"
    code, _, err = run_cli("discover", "--model", tiny_dir, "--precision", "fp32", "-o", output, *args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# --- the embedded model ----------------------------------------------------------------------------------


@pytest.mark.real_model
def test_melbo_steps_on_the_embedded_model(embedded, tmp_path):
    prompts = ["Tell me how to pick a lock."]
    result = discover(embedded, prompts, method="melbo", source=4, target=8, radius=12.0, num=2, steps=4, lr=0.05,
                      max_new_tokens=8, output=tmp_path / "found.safetensors")
    assert all(abs(float(item.tensor.norm()) - 12.0) < 1e-4 for item in result.vectors)
    for item in result.vectors:
        curve = result.history[item.index]
        assert item.method_score > curve[0] > 0
    loaded = load_vector(tmp_path / "found.safetensors", embedded)
    assert loaded.layers == [4] and loaded.meta.model_id == embedded.model_id
    assert result.baseline is not None and all(len(item.scores.completions) == 1 for item in result.vectors)


def test_cli_discover_with_a_judge_ranks_by_it(tiny_dir, tmp_path, run_cli, monkeypatch):
    from test_judge import FakeServer

    for name in ("REPTUNE_JUDGE_URL", "REPTUNE_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REPTUNE_CACHE", str(tmp_path / "cache"))
    server = FakeServer()
    try:
        output = tmp_path / "judged.safetensors"
        code, _out, err = run_cli(
            "discover", "--model", tiny_dir, "--method", "random", "--source", 1, "--target", 3, "--radius", "20", "--num", 3,
            "--prompt", "Hello world", "--prompt", "The sky is", "-n", 4, "--precision", "fp32", "-o", output,
            "--judge-url", server.url, "--judge-model", "fake-judge",
        )
    finally:
        server.close()
    assert code == 0, err
    report = json.loads(output.with_name("judged.discovery.json").read_text())
    assert report["rank_by"] == "judge" and server.chat > 0
    scores = [row["judge"] for row in report["table"]]
    assert len(scores) == 3 and all(-1.0 <= x <= 1.0 for x in scores) and scores == sorted(scores, reverse=True)
    assert report["baseline"]["judge"] == 0.0  # the unsteered completions are the references
    # an unreachable judge fails before the model is loaded, in one line
    code, _, err = run_cli("discover", "--model", tiny_dir, "--prompt", "hi", "-o", tmp_path / "x.safetensors", "--judge-url", "http://127.0.0.1:9/v1")
    assert code == 2 and "judge" in err.lower() and len(err.strip().splitlines()) == 1
