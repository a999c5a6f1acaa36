"""The site convention, pinned: layer L = output of block L = hidden_states[L+1].

Reading and steering use the same hook, so these tests tie extraction, steering and the
model's own hidden states together on every supported layout.
"""

from __future__ import annotations

import pytest
import torch

from reptune.activations import read_activations, tokenize_examples
from reptune.data import Example
from reptune.steering import steer

TEXTS = ["The sky is blue.", "Cats are mammals. Water boils at 100 degrees.", "Hello world"]


def _hidden_states(handle, texts, side="left"):
    batch = tokenize_examples(handle.tokenizer, [Example(t) for t in texts], padding_side=side)
    with torch.no_grad():
        out = handle.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_hidden_states=True,
        )
    return batch, out.hidden_states


def test_read_layer_equals_hidden_states_plus_one(tiny_any):
    handle = tiny_any
    _batch, hidden = _hidden_states(handle, TEXTS)
    acts = read_activations(handle, TEXTS, "all", "last", progress=False)
    for layer in range(handle.num_layers - 1):  # the last entry of hidden_states is post-final-norm
        assert torch.allclose(acts[layer], hidden[layer + 1][:, -1].float(), atol=1e-5), layer


def test_vector_added_at_layer_shows_up_in_hidden_states_plus_one(tiny_any):
    handle = tiny_any
    layer = 1
    vector = torch.randn(handle.hidden_size) * 3
    _, before = _hidden_states(handle, TEXTS)
    with steer(handle, {layer: vector}, multiplier=1.0):
        _, after = _hidden_states(handle, TEXTS)
    for index in range(layer + 1):  # embeddings and blocks before L: untouched
        assert torch.equal(before[index], after[index]), index
    diff = after[layer + 1] - before[layer + 1]
    assert torch.allclose(diff, vector.expand_as(diff), atol=1e-5)
    assert not torch.allclose(after[layer + 2], before[layer + 2])  # and it propagates


@pytest.mark.parametrize("positions", ["last", "last:3", "all"])
def test_left_right_and_unbatched_reads_agree(tiny_any, positions):
    handle = tiny_any
    left = read_activations(handle, TEXTS, "0,2,-1", positions, batch_size=3, padding_side="left", progress=False)
    right = read_activations(handle, TEXTS, "0,2,-1", positions, batch_size=3, padding_side="right", progress=False)
    single = read_activations(handle, TEXTS, "0,2,-1", positions, batch_size=1, progress=False)
    for layer in left:
        assert torch.allclose(left[layer], right[layer], atol=1e-4), layer
        assert torch.allclose(left[layer], single[layer], atol=1e-4), layer


def test_reading_stops_after_deepest_layer(tiny):
    handle = tiny
    calls: list[str] = []
    hooks = [block.register_forward_hook(lambda *_a, i=i: calls.append(f"block{i}")) for i, block in enumerate(handle.layers)]
    hooks.append(handle.model.lm_head.register_forward_hook(lambda *_a: calls.append("lm_head")))
    try:
        read_activations(handle, TEXTS, "1", "last", progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == ["block0", "block1"]  # blocks 2-3, final norm and LM head never ran


def test_reading_leaves_no_hooks_behind(tiny):
    handle = tiny
    read_activations(handle, TEXTS, "all", "last", progress=False)
    assert all(not block._forward_hooks for block in handle.layers)
    assert not handle.model._forward_pre_hooks


def test_reading_is_fp32_and_shaped(tiny):
    acts = read_activations(tiny, TEXTS, "0-1", "all", progress=False)
    assert set(acts) == {0, 1}
    assert acts[0].dtype == torch.float32
    assert acts[0].shape == (len(TEXTS), tiny.hidden_size)


def test_mean_over_positions_matches_manual(tiny):
    handle = tiny
    batch, hidden = _hidden_states(handle, TEXTS, side="right")
    acts = read_activations(handle, TEXTS, "2", "all", progress=False)
    mask = batch.attention_mask.unsqueeze(-1).float()
    manual = (hidden[3] * mask).sum(1) / mask.sum(1)
    assert torch.allclose(acts[2], manual, atol=1e-5)
