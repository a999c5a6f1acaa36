"""Shared-prefix KV cache in evaluation scoring: same results as one pass per row, and really used."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import ARCHS, build_model, build_tokenizer

from reptune import activations
from reptune.activations import read_activations
from reptune.data import Example
from reptune.evaluation import get_task, scoring
from reptune.evaluation.scoring import (
    continuation_logprobs,
    next_token_logprobs,
    prefix_sharing_allowed,
    prefix_worth_sharing,
    shared_prefix_length,
    token_row_logprobs,
)
from reptune.models import wrap_model
from reptune.steering import steer

PREFIX = "Pretend you are an honest person making statements about the world. "
ENDINGS = [
    "The sky is blue.",
    "Paris is the capital of France. Is the statement true or false?",
    "Cats",
    "Two plus two is four. Water boils at 100 degrees.",
    "Hello world, the quick brown fox jumps over the lazy dog 0123456789.",
]
PROMPTS = [PREFIX + ending for ending in ENDINGS]
PAIRS = [
    (PREFIX + "The sky is", " blue."),
    (PREFIX + "The sky is", " green. The grass is green."),
    (PREFIX + "Two plus two is", " four"),
    (PREFIX + "Cats are", " mammals. Hello world, the quick brown fox"),
    (PREFIX + "Water boils at", " 100 degrees."),
]
TIGHT = {"atol": 1e-5, "rtol": 1e-6}


class TokenCounter:
    """Counts the tokens fed to the first block (a forward pre-hook marked as safe to split)."""

    def __init__(self, handle) -> None:
        self.shapes: list[tuple[int, int]] = []

        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.shapes.append((int(hidden.shape[0]), int(hidden.shape[1])))

        hook.reptune_tokenwise = True
        self.handle = handle.layers[0].register_forward_pre_hook(hook, with_kwargs=True)

    def take(self) -> int:
        total = sum(batch * length for batch, length in self.shapes)
        self.shapes.clear()
        return total


def scores_tensor(scores) -> torch.Tensor:
    return torch.tensor([s.logprob for s in scores], dtype=torch.float64)


def flat(values) -> torch.Tensor:
    return torch.tensor([x for value in values for x in (value if isinstance(value, list) else [value])], dtype=torch.float64)


def random_direction(handle, seed: int = 0, scale: float = 4.0) -> dict[int, torch.Tensor]:
    return {1: torch.randn(handle.hidden_size, generator=torch.Generator().manual_seed(seed)) * scale}


def tiny_gemma3(window: int, num_layers: int = 6):
    """Gemma3 text model: sliding-window layers (window ``window``) and, with 6 layers, one full one."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=window, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return wrap_model(model, tokenizer, model_id=f"tiny-gemma3-w{window}")


# ---------------------------------------------------------------- the prefix and the rule
def test_shared_prefix_length_and_rule():
    assert shared_prefix_length([]) == 0
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 5]]) == 2
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0
    # identical rows: the last token (next-token logits) always stays out of the prefix
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    # continuation rows: the positions predicting the targets stay out too
    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6, 7]], [1, 2]) == 3
    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6, 7]], [4, 1]) == 0
    long_rows = [list(range(100)) + [i] for i in range(3)]
    assert prefix_worth_sharing(100, long_rows)
    assert not prefix_worth_sharing(100, long_rows[:1])  # one row: nothing to share
    assert not prefix_worth_sharing(scoring.PREFIX_MIN_TOKENS - 1, [[0] * 10, [0] * 10])
    assert not prefix_worth_sharing(8, [[0] * 1000, [0] * 1000])  # under PREFIX_MIN_FRACTION of the row


# ---------------------------------------------------------------- equal results in every layout
@pytest.mark.parametrize("arch", ARCHS)
def test_next_token_logprobs_shared_equals_plain(arch):
    handle = build_model(arch)
    counter = TokenCounter(handle)
    candidates = [[5, 9, 17]] * 3 + [[40, 2, 11]] * 2
    ids = [scoring.prompt_token_ids(handle.tokenizer, p) for p in PROMPTS]
    prefix = shared_prefix_length(ids)
    assert prefix >= scoring.PREFIX_MIN_TOKENS and prefix_worth_sharing(prefix, ids)
    for batch_size in (1, 2, 16):
        plain = torch.from_numpy(next_token_logprobs(handle, PROMPTS, candidates, batch_size=batch_size, share_prefix=False))
        plain_tokens = counter.take()
        shared = torch.from_numpy(next_token_logprobs(handle, PROMPTS, candidates, batch_size=batch_size))
        fed = counter.take()
        torch.testing.assert_close(shared, plain, **TIGHT)
        assert fed < plain_tokens
        if batch_size == 1:  # no padding: the prefix ran once, then each row's own tokens
            assert plain_tokens == sum(len(row) for row in ids)
            assert fed == plain_tokens - (len(ids) - 1) * prefix


@pytest.mark.parametrize("arch", ARCHS)
def test_continuation_logprobs_shared_equals_plain(arch):
    handle = build_model(arch)
    counter = TokenCounter(handle)
    for batch_size in (1, 3, 16):
        plain = continuation_logprobs(handle, PAIRS, batch_size=batch_size, share_prefix=False)
        plain_tokens = counter.take()
        shared = continuation_logprobs(handle, PAIRS, batch_size=batch_size)
        assert counter.take() < plain_tokens
        torch.testing.assert_close(scores_tensor(shared), scores_tensor(plain), **TIGHT)
        assert [s.n_tokens for s in shared] == [s.n_tokens for s in plain]
        assert [s.greedy for s in shared] == [s.greedy for s in plain]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("operator", ["add", "ablate"])
def test_steered_scope_all_shared_equals_plain(arch, operator):
    handle = build_model(arch)
    counter = TokenCounter(handle)
    vector = random_direction(handle)
    unsteered = torch.from_numpy(next_token_logprobs(handle, PROMPTS, [5, 9, 17], batch_size=2, share_prefix=False))
    counter.take()
    with steer(handle, vector, multiplier=3.0, operator=operator) as steering:
        assert steering.tokenwise and prefix_sharing_allowed(handle)
        plain = torch.from_numpy(next_token_logprobs(handle, PROMPTS, [5, 9, 17], batch_size=2, share_prefix=False))
        plain_tokens = counter.take()
        shared = torch.from_numpy(next_token_logprobs(handle, PROMPTS, [5, 9, 17], batch_size=2))
        assert counter.take() < plain_tokens
        plain_rows = continuation_logprobs(handle, PAIRS, batch_size=2, share_prefix=False)
        shared_rows = continuation_logprobs(handle, PAIRS, batch_size=2)
    torch.testing.assert_close(shared, plain, **TIGHT)
    torch.testing.assert_close(scores_tensor(shared_rows), scores_tensor(plain_rows), **TIGHT)
    assert not torch.allclose(plain, unsteered, atol=1e-3)  # the steering did something


@pytest.mark.parametrize(
    ("scope", "multiplier"),
    [("generated", 2.0), ("from:3", 2.0), ("from:-2", 2.0), ("all", [2.0, 2.0])],
)
def test_position_dependent_steering_disables_sharing(tiny, scope, multiplier):
    counter = TokenCounter(tiny)
    vector = random_direction(tiny)
    with steer(tiny, vector, multiplier=multiplier, scope=scope) as steering:
        assert not steering.tokenwise
        assert not prefix_sharing_allowed(tiny)
        for batch_size in (2, 1) if scope != "all" else (2,):  # per-row multipliers need full batches
            steering.reset()
            plain = next_token_logprobs(tiny, PROMPTS[:4], [5, 9], batch_size=batch_size, share_prefix=False)
            plain_tokens = counter.take()
            steering.reset()
            got = next_token_logprobs(tiny, PROMPTS[:4], [5, 9], batch_size=batch_size)
            assert counter.take() == plain_tokens  # every row ran whole, as without sharing
            torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(plain), atol=0, rtol=0)


def test_foreign_hooks_disable_sharing(tiny):
    assert prefix_sharing_allowed(tiny)
    hook = tiny.layers[2].register_forward_hook(lambda _m, _a, output: None)
    try:
        assert not prefix_sharing_allowed(tiny)
        counter = TokenCounter(tiny)
        plain = next_token_logprobs(tiny, PROMPTS, [5, 9], share_prefix=False)
        plain_tokens = counter.take()
        got = next_token_logprobs(tiny, PROMPTS, [5, 9])
        assert counter.take() == plain_tokens
        assert (got == plain).all()
    finally:
        hook.remove()
    assert prefix_sharing_allowed(tiny)


# ---------------------------------------------------------------- the switch
def test_switch_off_by_argument_and_environment(tiny, monkeypatch):
    counter = TokenCounter(tiny)
    plain = next_token_logprobs(tiny, PROMPTS, [5, 9], share_prefix=False)
    plain_tokens = counter.take()
    monkeypatch.setenv(scoring.NO_PREFIX_ENV, "1")
    assert not prefix_sharing_allowed(tiny)
    assert (next_token_logprobs(tiny, PROMPTS, [5, 9]) == plain).all()
    assert counter.take() == plain_tokens
    monkeypatch.setenv(scoring.NO_PREFIX_ENV, "0")
    assert prefix_sharing_allowed(tiny)
    next_token_logprobs(tiny, PROMPTS, [5, 9])
    assert counter.take() < plain_tokens
    # short or missing prefixes run whole
    next_token_logprobs(tiny, ENDINGS, [5, 9])
    ending_tokens = counter.take()
    next_token_logprobs(tiny, ENDINGS, [5, 9], share_prefix=False)
    assert counter.take() == ending_tokens


def test_token_rows_with_one_row_a_prefix_of_another(tiny):
    # the second row is the first plus more tokens; the cut keeps row 1's scored positions in the suffix
    base = scoring.prompt_token_ids(tiny.tokenizer, PREFIX + "The sky is blue.")
    rows = [(base, 2), (base + [40, 41, 42], 3), (base[:-1], 1)]
    plain = token_row_logprobs(tiny, rows, batch_size=2, share_prefix=False)
    shared = token_row_logprobs(tiny, rows, batch_size=2)
    torch.testing.assert_close(scores_tensor(shared), scores_tensor(plain), **TIGHT)
    assert shared_prefix_length([r for r, _ in rows], [n for _, n in rows]) == len(base) - 3


# ---------------------------------------------------------------- caches that cannot be shared
@pytest.mark.parametrize("window", [4, 30, 64])
def test_gemma3_sliding_window(window):
    handle = tiny_gemma3(window)
    counter = TokenCounter(handle)
    plain = torch.from_numpy(next_token_logprobs(handle, PROMPTS, [5, 9, 17], batch_size=2, share_prefix=False))
    plain_tokens = counter.take()
    shared = torch.from_numpy(next_token_logprobs(handle, PROMPTS, [5, 9, 17], batch_size=2))
    fed = counter.take()
    torch.testing.assert_close(shared, plain, **TIGHT)
    prefix = shared_prefix_length([scoring.prompt_token_ids(handle.tokenizer, p) for p in PROMPTS])
    if prefix > window - 1:  # the sliding layers kept only window-1 prefix tokens: plain path after the prefix pass
        assert fed == plain_tokens + prefix
    else:  # the whole prefix fits the window: shared, the window still applied to the suffix
        assert fed < plain_tokens
    rows_plain = continuation_logprobs(handle, PAIRS, batch_size=2, share_prefix=False)
    rows_shared = continuation_logprobs(handle, PAIRS, batch_size=2)
    torch.testing.assert_close(scores_tensor(rows_shared), scores_tensor(rows_plain), **TIGHT)


def test_unsupported_caches_are_refused():
    assert scoring.freeze_prefix_cache(None, 4) is None
    assert scoring.freeze_prefix_cache(((torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)),), 4) is None
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), 0)
    assert scoring.freeze_prefix_cache(cache, 4) is not None
    assert scoring.freeze_prefix_cache(cache, 5) is None  # not the whole prefix
    assert scoring.freeze_prefix_cache(EncoderDecoderCache(cache, DynamicCache()), 4) is None
    two_rows = DynamicCache()
    two_rows.update(torch.zeros(2, 2, 4, 8), torch.zeros(2, 2, 4, 8), 0)
    assert scoring.freeze_prefix_cache(two_rows, 4) is None


def test_model_without_cache_falls_back(tiny, monkeypatch):
    counter = TokenCounter(tiny)
    plain = next_token_logprobs(tiny, PROMPTS, [5, 9], share_prefix=False)
    plain_tokens = counter.take()
    monkeypatch.setattr(tiny.model.config, "use_cache", False)
    forward = tiny.model.forward

    def no_cache(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.past_key_values = None
        return out

    monkeypatch.setattr(tiny.model, "forward", no_cache)
    got = next_token_logprobs(tiny, PROMPTS, [5, 9])
    prefix = shared_prefix_length([scoring.prompt_token_ids(tiny.tokenizer, p) for p in PROMPTS])
    assert counter.take() == plain_tokens + prefix
    assert (got == plain).all()


# ---------------------------------------------------------------- tasks
def test_tasks_equal_with_and_without_sharing(tmp_path, monkeypatch):
    handle = build_model("llama", chat=True)
    path = tmp_path / "mc.json"
    path.write_text(json.dumps([
        {"question": "What colour is the sky?", "mc1_targets": {"blue": 1, "green": 0, "red": 0}, "mc2_targets": {"blue": 1, "green": 0}},
        {"question": "Is Paris the capital of France?", "mc1_targets": {"yes": 1, "no": 0}, "mc2_targets": {"yes": 1, "no": 0, "maybe": 0}},
    ]))
    tasks = [get_task("facts-ab"), get_task("tqa-mc1", data=str(path)), get_task("tqa-mc2", data=str(path))]
    counter = TokenCounter(handle)
    shared = [task.run(handle, limit=6, batch_size=4) for task in tasks]
    shared_tokens = counter.take()
    monkeypatch.setenv(scoring.NO_PREFIX_ENV, "1")
    plain = [task.run(handle, limit=6, batch_size=4) for task in tasks]
    assert counter.take() > 2 * shared_tokens  # the six-shot TruthfulQA primer ran once per call
    for a, b in zip(shared, plain):
        key = {"facts-ab": "margin", "tqa-mc1": "logprobs", "tqa-mc2": "logprobs"}[a.task]
        torch.testing.assert_close(flat([r[key] for r in a.records]), flat([r[key] for r in b.records]), **TIGHT)
        assert a.value == pytest.approx(b.value, abs=1e-6)


@pytest.mark.real_model
def test_embedded_facts_ab_shared_equals_plain(embedded, monkeypatch):
    task = get_task("facts-ab")
    shared = task.run(embedded, limit=6, batch_size=3)
    monkeypatch.setenv(scoring.NO_PREFIX_ENV, "1")
    plain = task.run(embedded, limit=6, batch_size=3)
    assert [r["margin"] for r in shared.records] == pytest.approx([r["margin"] for r in plain.records], abs=2e-4)


# ---------------------------------------------------------------- activation reading
READ_INPUTS = [Example(PREFIX, ending) for ending in ENDINGS]  # a persona prompt, then different replies


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("positions", ["last", "last:3", "generated", "all"])
def test_read_activations_shared_equals_plain(arch, positions, monkeypatch):
    """The persona prompt runs once for every batch (the cache is reused), the suffix passes feed
    fewer tokens, and the activations equal whole-row reading; ``all`` reads inside the prompt,
    so nothing is shared there."""
    handle = build_model(arch)
    passes: list[int] = []
    real_pass = activations.prefix_pass
    monkeypatch.setattr(activations, "prefix_pass", lambda model, ids: passes.append(ids.shape[1]) or real_pass(model, ids))
    counter = TokenCounter(handle)
    shared = read_activations(handle, READ_INPUTS, "0,2,-1", positions, batch_size=2, progress=False)
    shared_tokens = counter.take()
    monkeypatch.setenv(scoring.NO_PREFIX_ENV, "1")
    plain = read_activations(handle, READ_INPUTS, "0,2,-1", positions, batch_size=2, progress=False)
    plain_tokens = counter.take()
    if positions == "all":
        assert passes == [] and shared_tokens == plain_tokens
    else:
        prompt_tokens = len(handle.tokenizer(PREFIX)["input_ids"])
        assert len(passes) == 1 and passes[0] >= prompt_tokens - 1, passes  # once, for all three batches
        assert plain_tokens - shared_tokens == (len(READ_INPUTS) - 1) * passes[0]  # the prompt ran once, not five times
    for layer in plain:
        torch.testing.assert_close(shared[layer], plain[layer], **TIGHT)


def test_read_activations_per_position_and_new_prompts(tiny, monkeypatch):
    """A batch whose rows start with another prompt gets a pass of its own; per-position reads
    (``last:2``) keep their order; a one-row batch reuses the cache it matches."""
    other = "Pretend you are a dishonest person making statements about the world. "
    inputs = [Example(PREFIX, e) for e in ENDINGS[:2]] + [Example(other, e) for e in ENDINGS[:3]]
    passes: list[int] = []
    real_pass = activations.prefix_pass
    monkeypatch.setattr(activations, "prefix_pass", lambda model, ids: passes.append(ids.shape[1]) or real_pass(model, ids))
    shared = read_activations(tiny, inputs, "1,3", "last:2", batch_size=2, per_position=True, progress=False)
    assert len(passes) == 2  # one per persona: batch 2 mixes them (nothing shared), batch 3 is a single row of the second
    monkeypatch.setenv(scoring.NO_PREFIX_ENV, "1")
    plain = read_activations(tiny, inputs, "1,3", "last:2", batch_size=2, per_position=True, progress=False)
    for layer in plain:
        assert shared[layer].shape == (5, 2, tiny.hidden_size)
        torch.testing.assert_close(shared[layer], plain[layer], **TIGHT)


def test_read_activations_with_foreign_hook_runs_whole_rows(tiny, monkeypatch):
    passes: list[int] = []
    monkeypatch.setattr(activations, "prefix_pass", lambda model, ids: passes.append(1))
    hook = tiny.layers[2].register_forward_hook(lambda _m, _a, output: None)
    try:
        read_activations(tiny, READ_INPUTS, "1", "last", batch_size=2, progress=False)
    finally:
        hook.remove()
    assert passes == []


def test_read_activations_takes_a_longer_common_prompt_and_falls_back_without_a_cache(tiny, monkeypatch):
    """A later batch whose rows share a prompt at least 8 tokens longer than the cached one gets
    a pass of its own; a model whose cache cannot hold a prefix reads whole rows (same numbers);
    ``share_prefix=False`` never splits."""
    sky = "The sky is blue. The grass is green. "
    inputs = [Example(PREFIX, "Cats"), Example(PREFIX + sky, "Paris"), Example(PREFIX + sky, "Water"), Example(PREFIX + sky, "Hello")]
    passes: list[int] = []
    real_pass = activations.prefix_pass
    monkeypatch.setattr(activations, "prefix_pass", lambda model, ids: passes.append(ids.shape[1]) or real_pass(model, ids))
    shared = read_activations(tiny, inputs, "1,3", "last", batch_size=2, progress=False)
    assert len(passes) == 2 and passes[1] >= passes[0] + 8, passes
    plain = read_activations(tiny, inputs, "1,3", "last", batch_size=2, progress=False, share_prefix=False)
    assert len(passes) == 2
    monkeypatch.setattr(activations, "prefix_pass", lambda model, ids: passes.append(-1))  # returns None: no cache
    fallback = read_activations(tiny, inputs, "1,3", "last", batch_size=2, progress=False)
    assert passes[2:] == [-1]  # tried once, then whole rows
    for layer in plain:
        torch.testing.assert_close(shared[layer], plain[layer], **TIGHT)
        torch.testing.assert_close(fallback[layer], plain[layer], **TIGHT)
