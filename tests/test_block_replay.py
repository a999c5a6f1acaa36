"""Replaying the base blocks below a trained range: the same log-probs, the blocks really skipped."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, build_model

from reptune.block_replay import BlockInputStore, _SkippedBlock, replay_matches
from reptune.data.pairs import render_chat
from reptune.evaluation.twin_scoring import twin_logprobs
from reptune.steering import steer
from reptune.vectors import SteeringVector, VectorMeta

TWINS = [("The sky is blue.", "The sky is green."), ("Water boils at 100 degrees.", "Water boils at 50 degrees."),
         ("Cats are mammals.", "Dogs are mammals."), ("Paris is the capital of France.", "Paris is the capital of the world today.")]


def _scores(handle, prompt):
    return [(a.logprob, b.logprob, a.greedy, b.greedy) for a, b in twin_logprobs(handle, prompt, TWINS, batch_size=3)]


def _assert_same(got, want):
    for g, w in zip(got, want):
        assert g[:2] == pytest.approx(w[:2], abs=1e-4) and g[2:] == w[2:]


@pytest.mark.parametrize("arch", ARCHS)
def test_replay_gives_the_plain_scores_and_skips_the_blocks_below(arch, tmp_path):
    """Recorded on the base model, replayed on a model whose block 0 is broken: the scores are the
    base model's, so block 0 did not run (a tuned model's blocks below its range are the base's)."""
    handle = build_model(arch, chat=True)
    prompt = render_chat(handle.tokenizer, "Make a statement.")
    plain = _scores(handle, prompt)
    handle.block_inputs = BlockInputStore(tmp_path, 2, {"model": arch})
    recording = _scores(handle, prompt)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    _assert_same(recording, plain)
    with torch.no_grad():
        for param in handle.layers[0].parameters():
            param.mul_(3.0)
    assert replay_matches(handle.model, handle.layers, 2)
    _assert_same(_scores(handle, prompt), plain)  # replayed: block 0's new weights never ran
    handle.block_inputs = None
    assert _scores(handle, prompt)[0][:2] != pytest.approx(plain[0][:2], abs=1e-4)  # they do change the plain forward


def test_a_steering_hook_below_the_start_block_turns_replay_off_and_one_above_keeps_it(tmp_path):
    handle = build_model("llama", chat=True)
    prompt = render_chat(handle.tokenizer, "Make a statement.")
    generator = torch.Generator().manual_seed(1)
    vector = SteeringVector({layer: torch.randn(handle.hidden_size, generator=generator) for layer in (0, 3)},
                            VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers))
    with steer(handle, vector, [0], 4.0):
        plain_low = _scores(handle, prompt)
    with steer(handle, vector, [3], 4.0):
        plain_high = _scores(handle, prompt)
    handle.block_inputs = BlockInputStore(tmp_path, 2, {"model": "llama"})
    with steer(handle, vector, [0], 4.0):
        _assert_same(_scores(handle, prompt), plain_low)
    assert not list(tmp_path.glob("*.safetensors"))  # nothing recorded under a hook below the start block
    _scores(handle, prompt)  # the unsteered model records
    with steer(handle, vector, [3], 4.0):  # steering above the start block replays the unsteered recording
        _assert_same(_scores(handle, prompt), plain_high)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_the_check_refuses_a_replay_that_loses_the_cache_length(monkeypatch):
    """A stand-in block that stores no keys/values would shift the causal mask: the check catches it."""
    handle = build_model("llama")
    assert replay_matches(handle.model, handle.layers, 2)
    monkeypatch.setattr(_SkippedBlock, "forward", lambda self, hidden_states, *args, **kwargs: hidden_states)
    other = build_model("llama")
    assert not replay_matches(other.model, other.layers, 2)
