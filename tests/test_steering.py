"""Steering hooks: cache equivalence, scopes, per-row multipliers, ablation, cleanup."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model

from reptune.activations import tokenize_examples
from reptune.data import Example
from reptune.errors import ReptuneError, VectorError
from reptune.steering import Steering, TokenScope, generate, steer, steered_generate

PROMPTS = ["The sky is", "Cats are mammals and water boils at", "Hello"]


def _vector(handle, layer=1, scale=4.0, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(handle.hidden_size, generator=generator) * scale}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("scope", ["all", "generated", "from:-1", "from:2"])
def test_greedy_tokens_identical_with_and_without_cache(arch, scope):
    handle = build_model(arch)
    vector = _vector(handle)
    runs = {}
    for use_cache in (True, False):
        with steer(handle, vector, multiplier=1.0, scope=scope) as steering:
            runs[use_cache] = generate(handle, PROMPTS, max_new_tokens=8, chat=False, use_cache=use_cache, steering=steering, return_token_ids=True)
    assert runs[True] == runs[False]
    plain = generate(handle, PROMPTS, max_new_tokens=8, chat=False, return_token_ids=True)
    assert runs[True] != plain  # the steering had an effect


def test_multiplier_zero_is_unsteered(tiny):
    plain = generate(tiny, PROMPTS, max_new_tokens=6, chat=False, return_token_ids=True)
    with steer(tiny, _vector(tiny), multiplier=0.0):
        zero = generate(tiny, PROMPTS, max_new_tokens=6, chat=False, return_token_ids=True)
    assert zero == plain


def test_per_row_multipliers_match_separate_runs(tiny):
    vector = _vector(tiny)
    multipliers = [-2.0, 0.0, 3.0]
    with steer(tiny, vector, multiplier=multipliers) as steering:
        together = generate(tiny, PROMPTS, max_new_tokens=6, chat=False, steering=steering, return_token_ids=True, batch_size=3)
    for row, multiplier in enumerate(multipliers):
        with steer(tiny, vector, multiplier=multiplier) as steering:
            alone = generate(tiny, [PROMPTS[row]], max_new_tokens=6, chat=False, steering=steering, return_token_ids=True)
        assert together[row] == alone[0], row


def test_steered_generate_groups_by_multiplier(tiny):
    vector = _vector(tiny)
    results = steered_generate(tiny, vector, PROMPTS, [0.0, 2.5], max_new_tokens=5, chat=False, batch_size=4)
    assert list(results) == [0.0, 2.5]
    assert results[0.0] == generate(tiny, PROMPTS, max_new_tokens=5, chat=False)
    with steer(tiny, vector, multiplier=2.5) as steering:
        assert results[2.5] == generate(tiny, PROMPTS, max_new_tokens=5, chat=False, steering=steering)


def test_generated_scope_leaves_prompt_untouched(tiny):
    batch = tokenize_examples(tiny.tokenizer, [Example(p) for p in PROMPTS], padding_side="left")
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    with torch.no_grad():
        plain = tiny.model(**kwargs).logits
        with steer(tiny, _vector(tiny), multiplier=5.0, scope="generated"):
            scoped = tiny.model(**kwargs).logits
        with steer(tiny, _vector(tiny), multiplier=5.0, scope="from:-1"):
            last_only = tiny.model(**kwargs).logits
    assert torch.equal(plain, scoped)
    real = batch.attention_mask.bool()
    last = real & ~torch.roll(real, -1, dims=1) | (real & (torch.arange(real.shape[1]) == real.shape[1] - 1))
    assert torch.equal(plain[~last & real], last_only[~last & real])  # earlier prompt tokens untouched
    assert not torch.allclose(plain[last], last_only[last])


def test_ablation_projects_direction_out(tiny):
    layer = 2
    direction = _vector(tiny, layer=layer)[layer]
    unit = direction / direction.norm()
    batch = tokenize_examples(tiny.tokenizer, [Example(p) for p in PROMPTS], padding_side="right")
    with torch.no_grad(), steer(tiny, {layer: direction}, operator="ablate"):
        hidden = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states
    projection = hidden[layer + 1] @ unit
    assert projection.abs().max() < 1e-4
    with torch.no_grad():
        plain = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states
    assert (plain[layer + 1] @ unit).abs().max() > 1e-2  # the direction was there before


def test_hooks_removed_even_when_body_raises(tiny):
    with pytest.raises(RuntimeError, match="boom"), steer(tiny, _vector(tiny), multiplier=1.0, scope="generated"):
        assert tiny.layers[1]._forward_hooks
        raise RuntimeError("boom")
    assert all(not block._forward_hooks for block in tiny.layers)
    assert not tiny.model._forward_pre_hooks


def test_vector_cast_lazily_to_module_dtype():
    handle = build_model("llama")
    handle.model.to(torch.bfloat16)
    vector = _vector(handle)
    with steer(handle, vector, multiplier=1.0) as steering:
        out = generate(handle, PROMPTS[:1], max_new_tokens=3, chat=False, steering=steering, return_token_ids=True)
        cached = list(steering._cast_cache.values())
    assert len(out[0]) == 3
    assert [tensor.dtype for tensor in cached] == [torch.bfloat16]
    assert vector[1].dtype == torch.float32  # the user's vector is not modified


def test_nested_contexts_add_up(tiny):
    layer_vector = _vector(tiny)
    batch = tokenize_examples(tiny.tokenizer, [Example(PROMPTS[0])])
    with torch.no_grad():
        with steer(tiny, layer_vector, multiplier=1.0), steer(tiny, layer_vector, multiplier=1.0):
            nested = tiny.model(input_ids=batch.input_ids).logits
        with steer(tiny, layer_vector, multiplier=2.0):
            double = tiny.model(input_ids=batch.input_ids).logits
    assert torch.allclose(nested, double, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"vector": {1: torch.full((32,), float("nan"))}}, VectorError),
        ({"vector": {1: torch.ones(7)}}, VectorError),
        ({"vector": {9: torch.ones(32)}}, ReptuneError),
        ({"layers": "3"}, VectorError),
        ({"operator": "multiply"}, ReptuneError),
        ({"scope": "sometimes"}, ReptuneError),
        ({"multiplier": float("inf")}, ReptuneError),
    ],
)
def test_bad_steering_arguments(tiny, kwargs, error):
    arguments = {"vector": {1: torch.ones(32)}, **kwargs}
    with pytest.raises(error):
        Steering(tiny, **arguments)


def test_multiplier_count_must_match_batch(tiny):
    batch = tokenize_examples(tiny.tokenizer, [Example(p) for p in PROMPTS])
    with pytest.raises(ReptuneError, match="2 multipliers given for a batch of 3"), steer(tiny, {1: torch.ones(32)}, multiplier=[1.0, 2.0]), torch.no_grad():
        tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)


def test_token_scope_parse():
    assert TokenScope.parse("from:-2") == TokenScope("from", -2)
    assert TokenScope.parse("generated").spec() == "generated"
    with pytest.raises(ReptuneError):
        TokenScope.parse("from:x")
