"""The same guarantees on the embedded SmolLM2-135M-Instruct (slower; run in CI too)."""

from __future__ import annotations

import pytest
import torch

from reptune import extract_vector, load_contrast_pairs, read_activations, steer
from reptune.activations import tokenize_examples
from reptune.data import Example
from reptune.steering import generate

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def honesty(embedded):
    pairs, origin = load_contrast_pairs("honesty", embedded.tokenizer, limit=48)
    vector, scan = extract_vector(embedded, pairs, "8-16", positions="last", dataset=origin, progress=False)
    return pairs, vector, scan


def test_honesty_vector_separates_held_out_pairs(embedded, honesty):
    pairs, vector, scan = honesty
    assert vector.layers == list(range(8, 17))
    assert vector.meta.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    by_layer = {score.layer: score for score in scan.scores}
    assert by_layer[15].pair_acc >= 0.9
    assert 8 <= scan.best_layers(1)[0] <= 16
    # the chat template was applied: the persona is a user turn, the statement the reply
    assert pairs[0].positive.prompt.endswith("<|im_start|>assistant\n")


def test_reading_matches_hidden_states_on_real_model(embedded):
    texts = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius at sea level."]
    acts = read_activations(embedded, texts, "15", "last", progress=False)
    batch = tokenize_examples(embedded.tokenizer, [Example(t) for t in texts])
    with torch.no_grad():
        hidden = embedded.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, output_hidden_states=True
        ).hidden_states
    assert torch.allclose(acts[15], hidden[16][:, -1], atol=1e-4)


def test_steered_generation_same_with_and_without_cache(embedded, honesty):
    _, vector, _ = honesty
    prompts = ["Is the Earth flat?", "What is the capital of Australia?"]
    outputs = {}
    for use_cache in (True, False):
        with steer(embedded, vector, "15", multiplier=-4.0, scope="generated") as steering:
            outputs[use_cache] = generate(embedded, prompts, max_new_tokens=10, use_cache=use_cache, steering=steering, return_token_ids=True)
    assert outputs[True] == outputs[False]
    plain = generate(embedded, prompts, max_new_tokens=10, return_token_ids=True)
    with steer(embedded, vector, "15", multiplier=-8.0):
        pushed = generate(embedded, prompts, max_new_tokens=10, return_token_ids=True)
    assert pushed != plain


def test_short_honesty_run_raises_cosine_on_held_out_statements(honesty, tmp_path):
    """A short ``honesty`` run on a fresh copy pulls held-out activations toward the honesty vector."""
    import torch.nn.functional as F

    from reptune.models import load_model
    from reptune.tuning import TuneConfig, load_tune_items, tune

    _, vector, _ = honesty
    handle = load_model(None, autocast="bf16")
    items, origin = load_tune_items("honesty", handle.tokenizer)
    train, held_out = items[:64], items[-24:]

    def mean_cos() -> float:
        acts = read_activations(handle, [item.prompt for item in held_out], "14", "last", progress=False)[14]
        return float(F.cosine_similarity(acts, vector[14].view(1, -1)).mean())

    before = mean_cos()
    config = TuneConfig.from_preset("honesty", layers="12-14", rep_layers="14", steps=12, lr=2e-4, batch_size=4, eval_every=6, val_fraction=0.1)
    result = tune(handle, config, train, tmp_path / "run", vector=vector, data_origin=origin, progress=False, save_model=False)
    after = mean_cos()
    assert result.history[-1]["rep"] < result.history[0]["rep"]
    assert after > before + 0.1, (before, after)
