"""The one hook installer (reptune.hooks): read / add / ablate / replay, stop, removal; and
Steering's public attach / detach / paused."""

from __future__ import annotations

import pytest
import torch

from reptune.activations import tokenize_examples
from reptune.data import Example
from reptune.hooks import HookHandle, StopForward, ablate, add, forward_until, install, read, replay
from reptune.steering import Steering, paused

TEXTS = ["The sky is blue.", "Cats are mammals and water boils at"]


def _batch(handle):
    return tokenize_examples(handle.tokenizer, [Example(text) for text in TEXTS], device=handle.device)


def _hidden(handle, batch):
    with torch.no_grad():
        out = handle.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, output_hidden_states=True)
    return out.hidden_states


def _count_hooks(handle) -> int:
    """reptune's hooks on the model (transformers keeps hooks of its own, which are not counted)."""
    fns = [fn for m in handle.model.modules() for fn in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]]
    return sum(1 for fn in fns if getattr(fn, "__module__", "").startswith(("reptune", "test_")) or hasattr(fn, "reptune_tokenwise"))


def test_read_matches_hidden_states_and_stop_skips_the_rest(tiny):
    batch = _batch(tiny)
    reference = _hidden(tiny, batch)
    store: dict[int, torch.Tensor] = {}
    with torch.no_grad(), install(tiny.layers, {0: read(store), 1: read(store)}, stop_after=1) as hooks:
        assert len(hooks) == 3  # two readers and the stop hook
        out = forward_until(tiny.model, input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    assert out is None  # stopped after block 1
    for layer in (0, 1):
        torch.testing.assert_close(store[layer], reference[layer + 1])
    assert _count_hooks(tiny) == 0


def test_add_shows_up_at_the_next_hidden_state_only(tiny):
    batch = _batch(tiny)
    reference = _hidden(tiny, batch)
    vector = torch.randn(tiny.hidden_size, generator=torch.Generator().manual_seed(0))
    with install(tiny.layers, {1: add(vector, 2.0)}, prepend=True):
        steered = _hidden(tiny, batch)
    torch.testing.assert_close(steered[1], reference[1])
    torch.testing.assert_close(steered[2], reference[2] + 2.0 * vector)
    assert _count_hooks(tiny) == 0


def test_ablate_removes_the_component_and_replay_patches(tiny):
    batch = _batch(tiny)
    vector = torch.randn(tiny.hidden_size, generator=torch.Generator().manual_seed(1))
    unit = vector / vector.norm()
    with install(tiny.layers, {2: ablate(vector, 1.0)}, prepend=True):
        ablated = _hidden(tiny, batch)
    torch.testing.assert_close(ablated[3] @ unit, torch.zeros(ablated[3].shape[:2]), atol=1e-5, rtol=0)
    patch = torch.full((tiny.hidden_size,), 0.5)
    with install(tiny.layers, {1: replay(patch)}, prepend=True):
        patched = _hidden(tiny, batch)
    torch.testing.assert_close(patched[2], patch.expand_as(patched[2]))


def test_mask_and_per_row_strength(tiny):
    batch = _batch(tiny)
    reference = _hidden(tiny, batch)
    vector = torch.ones(tiny.hidden_size)
    rows = torch.tensor([1.0, -3.0]).view(-1, 1, 1)

    def only_last(hidden):
        mask = torch.zeros(hidden.shape[:2] + (1,), dtype=hidden.dtype)
        mask[:, -1] = 1
        return mask

    with install(tiny.layers, {0: add(vector, lambda hidden: rows, only_last)}, prepend=True):
        steered = _hidden(tiny, batch)
    torch.testing.assert_close(steered[1][:, :-1], reference[1][:, :-1])
    torch.testing.assert_close(steered[1][:, -1], reference[1][:, -1] + rows.view(-1, 1) * vector)


def test_handle_removes_everything_when_the_body_raises(tiny):
    with pytest.raises(RuntimeError), install(tiny.layers, {0: read({})}, stop_after=0) as hooks:
        hooks.pre_hook(tiny.model, lambda *_a, **_k: None)
        raise RuntimeError("boom")
    assert _count_hooks(tiny) == 0
    handle = HookHandle()
    install(tiny.layers, {0: read({})}, into=handle)
    handle.remove()
    handle.remove()  # idempotent
    assert _count_hooks(tiny) == 0


def test_stop_forward_propagates_without_forward_until(tiny):
    batch = _batch(tiny)
    with install(tiny.layers, {0: read({})}, stop_after=0), pytest.raises(StopForward):
        tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)


def test_tokenwise_flag_is_carried_by_the_hook(tiny):
    with install(tiny.layers, {0: add(torch.ones(tiny.hidden_size), tokenwise=True), 1: read({})}):
        flags = [getattr(fn, "reptune_tokenwise", None) for fn in tiny.layers[0]._forward_hooks.values()]
        flags += [getattr(fn, "reptune_tokenwise", None) for fn in tiny.layers[1]._forward_hooks.values()]
    assert flags == [True, False]


def test_steering_attach_detach_paused(tiny):
    batch = _batch(tiny)
    reference = _hidden(tiny, batch)
    vector = {1: torch.ones(tiny.hidden_size)}
    steering = Steering(tiny, vector, multiplier=2.0, scope="from:1")
    assert not steering.attached
    assert steering.attach() is steering and steering.attach() is steering  # idempotent
    assert steering.attached and _count_hooks(tiny) == 2  # position tracker + one block
    steered = _hidden(tiny, batch)
    assert not torch.allclose(steered[2], reference[2])
    with steering.paused():
        assert not steering.attached and _count_hooks(tiny) == 0
        torch.testing.assert_close(_hidden(tiny, batch)[2], reference[2])
    assert steering.attached
    torch.testing.assert_close(_hidden(tiny, batch)[2], steered[2])
    steering.detach()
    assert _count_hooks(tiny) == 0
    with steering.paused():  # paused while detached stays detached afterwards
        pass
    assert not steering.attached and _count_hooks(tiny) == 0
    with paused(None):  # no steering: nothing to pause
        pass
