"""Twins: pair ids in the shipped data, pair-aware splits, the facts-twin / facts-word tasks, twin tuning."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import build_model

from reptune.data import Statement
from reptune.data.sources import read_source
from reptune.data.twins import split_by_pair, statements_to_twins
from reptune.errors import DataError
from reptune.evaluation import evaluate, get_task
from reptune.evaluation.scoring import continuation_logprobs
from reptune.tuning import TuneConfig, tune
from reptune.tuning.items import load_tune_items, twin_items
from reptune.tuning.losses import pair_sequence_loss

FAST = {"eval_every": 1000, "checkpoint_every": 1000, "val_fraction": 0.0}


def _twins_csv(path: Path, n: int = 8) -> Path:
    rows = []
    for i in range(n):
        rows += [(f"The sky is blue {i}.", 1, "t" + str(i % 2), str(i)), (f"The grass is blue {i}.", 0, "t" + str(i % 2), str(i))]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["statement", "label", "topic", "pair"])
        writer.writerows(rows)
    return path


def test_shipped_statements_are_twins_one_true_one_false_per_pair():
    statements = list(read_source("honesty").records)
    twins = statements_to_twins(statements)
    assert len(twins) * 2 == len(statements) == 1264
    assert all(t.true != t.false for t in twins)
    assert Counter(s.pair for s in statements).most_common(1)[0][1] == 2


def test_broken_pairs_are_one_line_errors():
    with pytest.raises(DataError, match="no 'pair' id"):
        statements_to_twins([Statement("A.", 1)])
    with pytest.raises(DataError, match="one true"):
        statements_to_twins([Statement("A.", 1, pair="p"), Statement("B.", 1, pair="p")])


def test_pair_split_keeps_twins_together_and_is_seeded_and_stratified():
    statements = list(read_source("honesty").records)
    parts = split_by_pair(statements, {"test": 0.5, "val": 0.15}, seed=0)
    assert parts == split_by_pair(statements, {"test": 0.5, "val": 0.15}, seed=0)
    assert parts != split_by_pair(statements, {"test": 0.5, "val": 0.15}, seed=1)
    pairs = {name: {s.pair for s in part} for name, part in parts.items()}
    assert not (pairs["test"] & pairs["val"]) and not (pairs["test"] & pairs["train"]) and not (pairs["val"] & pairs["train"])
    assert sum(len(p) for p in parts.values()) == len(statements)
    assert len(pairs["test"]) >= 300  # the demo's test split: at least 300 twins
    for part in parts.values():  # every pair whole, so labels balance exactly
        assert sum(s.label for s in part) * 2 == len(part)
    topics = Counter(s.topic for s in statements)
    test_topics = Counter(s.topic for s in parts["test"])
    for topic, n in topics.items():  # each topic's share of the test split is about half of it
        assert abs(test_topics[topic] / n - 0.5) < 0.1, topic


def test_facts_twin_records_equal_continuation_logprobs(tmp_path):
    handle = build_model("llama", chat=True)
    data = _twins_csv(tmp_path / "twins.csv")
    result = evaluate(handle, [get_task("facts-twin", data=str(data))], progress=False).tasks["facts-twin"]
    records = result.records
    assert len(records) == 8 and all("answer" not in r for r in records)  # always-true is not "degenerate"
    prompt = get_task("facts-twin", data=str(data)).load_items(handle, None)[0][0]["prompt"]
    scores = continuation_logprobs(handle, [(prompt, records[0]["true"]), (prompt, records[0]["false"])], share_prefix=False)
    assert records[0]["margin"] == pytest.approx(scores[0].logprob - scores[1].logprob, abs=1e-4)
    assert result.metrics["accuracy"]["value"] == pytest.approx(sum(r["margin"] > 0 for r in records) / 8)
    assert result.metrics["mean_nll"]["value"] > 0


def test_facts_word_records_the_word_so_always_true_is_flagged(tmp_path):
    from reptune.evaluation.tasks.robustness import same_letter_rate

    handle = build_model("llama", chat=True)
    data = _twins_csv(tmp_path / "twins.csv")
    records = evaluate(handle, [get_task("facts-word", data=str(data))], progress=False).tasks["facts-word"].records
    assert {r["answer"] for r in records} <= {"True", "False"}
    assert same_letter_rate(records) is not None


def test_facts_twin_without_pairs_is_a_one_line_error(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("statement,label\nA cat.,1\nA dog.,0\n", encoding="utf-8")
    with pytest.raises(DataError, match="pair"):
        get_task("facts-twin", data=str(path)).load_items(build_model("llama"), None)


def test_pair_sequence_loss_targets():
    lp_true, lp_false = torch.tensor([-1.0, -5.0]), torch.tensor([-3.0, -2.0])
    truth = pair_sequence_loss(lp_true, lp_false, "truth")
    expected = -torch.log_softmax(torch.stack([lp_true, lp_false], -1), -1)[:, 0].mean()
    assert truth == pytest.approx(float(expected))
    assert pair_sequence_loss(lp_true, lp_false, "lie") == pytest.approx(float(-torch.log_softmax(torch.stack([lp_true, lp_false], -1), -1)[:, 1].mean()))
    assert pair_sequence_loss(torch.zeros(3), torch.zeros(3), "soft") == pytest.approx(float(torch.log(torch.tensor(2.0))))


@pytest.mark.parametrize(("preset", "direction"), [("truth", 1), ("lie", -1)])
def test_twin_tuning_moves_twin_preference(tmp_path, preset, direction):
    handle = build_model("llama", chat=True)
    data = _twins_csv(tmp_path / "twins.csv")
    items, _ = load_tune_items(str(data), handle.tokenizer, kind="twin")
    assert len(items) == 8 and all(item.rejected for item in items)
    task = get_task("facts-twin", data=str(data))

    def margin() -> float:
        return evaluate(handle, [task], progress=False).tasks["facts-twin"].metrics["mean_margin"]["value"]

    before = margin()
    tune(handle, TuneConfig.from_preset(preset, layers="0-3", steps=30, lr=1e-2, batch_size=4, **FAST), items, tmp_path / "run",
         progress=False, save_model=False)
    assert direction * (margin() - before) > 1.0


def test_twin_items_put_both_twins_in_one_batch_with_the_statement_as_completion(tmp_path):
    from reptune.tuning.trainer import Tuner

    handle = build_model("llama", chat=True)
    statements = [Statement("The sky is blue.", 1, pair="a"), Statement("The sky is red.", 0, pair="a")] * 1
    items = twin_items(statements + [Statement("Cats bark.", 0, pair="b"), Statement("Cats purr.", 1, pair="b")], handle.tokenizer)
    tuner = Tuner(handle, TuneConfig.from_preset("truth", layers="0-3", steps=1, **FAST), items, None)
    batch = tuner._tokenize(items, rep_positions="generated")
    assert batch.input_ids.shape[0] == 4  # 2 facts x (true, false)
    assert bool((batch.rep_mask == batch.completion_mask).all()) and int(batch.completion_mask.sum()) > 0


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma", "gpt_neox", "phi"])
@pytest.mark.parametrize("batch_size", [2, 3])
@pytest.mark.parametrize("packed", [True, False])
def test_twin_scoring_with_shared_tokens_equals_scoring_whole_rows(monkeypatch, arch, batch_size, packed):
    """Each pair's common tokens run once; the log-probs equal the plain row scorer's (also where
    the twins differ only in their last token, so the tails need no forward), packed into one row
    without padding or in padded batches."""
    from reptune import prefix_cache
    from reptune.data.pairs import render_chat
    from reptune.evaluation import twin_scoring
    from reptune.evaluation.twin_scoring import twin_logprobs

    handle = build_model(arch, chat=True)
    assert twin_scoring.packing_exact(handle)  # every architecture here passes the check
    ran = []
    for name in ("_score_batch", "_score_batch_packed"):
        real = getattr(twin_scoring, name)
        monkeypatch.setattr(twin_scoring, name, lambda *a, _real=real, _name=name: ran.append(_name) or _real(*a))
    if not packed:
        monkeypatch.setenv(prefix_cache.NO_PACKING_ENV, "1")
    twins = [("The sky is blue.", "The sky is green."), ("Water boils at 100 degrees.", "Water boils at 50 degrees."),
             ("Cats are mammals.", "Dogs are mammals."), ("Paris is the capital of France.", "Paris is the capital of the world today."),
             ("Two and two make 4", "Two and two make 5"), ("The count is 7", "The count is 9")]
    prompt = render_chat(handle.tokenizer, "Make a statement.")
    fast = twin_logprobs(handle, prompt, twins, batch_size=batch_size)  # padding in both stages; a batch of one-token tails
    assert set(ran) == {"_score_batch_packed" if packed else "_score_batch"}
    whole = continuation_logprobs(handle, [(prompt, text) for twin in twins for text in twin], share_prefix=False)
    for index, pair in enumerate(fast):
        for side, score in enumerate(pair):
            assert score.logprob == pytest.approx(whole[2 * index + side].logprob, abs=1e-4)
            assert score.n_tokens == whole[2 * index + side].n_tokens and score.greedy == whole[2 * index + side].greedy


def test_twin_scoring_packs_only_where_the_check_passes(monkeypatch):
    """A model class whose packed forward disagrees with the padded one (here: forced) is scored padded."""
    from reptune.data.pairs import render_chat
    from reptune.evaluation import twin_scoring

    handle = build_model("llama", chat=True)
    monkeypatch.setattr(twin_scoring, "_PACKING_EXACT", {})
    real = twin_scoring._score_batch_packed
    monkeypatch.setattr(twin_scoring, "_score_batch_packed", lambda *a: {i: type(s)(s.logprob + 1.0, s.n_tokens, s.greedy) for i, s in real(*a).items()})
    assert not twin_scoring.packing_exact(handle)
    prompt = render_chat(handle.tokenizer, "Make a statement.")
    (true, false), = twin_scoring.twin_logprobs(handle, prompt, [("The sky is blue.", "The sky is green.")])
    whole = continuation_logprobs(handle, [(prompt, "The sky is blue."), (prompt, "The sky is green.")], share_prefix=False)
    assert true.logprob == pytest.approx(whole[0].logprob, abs=1e-4) and false.logprob == pytest.approx(whole[1].logprob, abs=1e-4)


def test_twin_token_loss_with_kept_logits_equals_full_logits(monkeypatch):
    """The LM head runs only from the position before the first reply token; the loss is unchanged."""
    from reptune.tuning import trainer
    from reptune.tuning.trainer import Tuner

    handle = build_model("llama", chat=True)
    statements = [Statement("The sky is blue.", 1, pair="a"), Statement("The sky is red today.", 0, pair="a"),
                  Statement("Cats purr.", 1, pair="b"), Statement("Cats bark.", 0, pair="b")]
    items = twin_items(statements, handle.tokenizer)
    tuner = Tuner(handle, TuneConfig.from_preset("truth", layers="0-3", steps=1, **FAST), items, None)
    batch = tuner._tokenize(items)
    kept = tuner.losses(batch, None)["tok"]
    # as a model class without logits_to_keep: every position comes back and is sliced
    monkeypatch.setattr(trainer, "forward_keeping_logits", lambda model, kwargs, keep: (model(**kwargs), False))
    full = tuner.losses(batch, None)["tok"]
    assert float(kept.detach()) == pytest.approx(float(full.detach()), abs=1e-6) and float(kept.detach()) > 0


def _tuner_terms_and_grads(handle, preset: str, items, vector, rep_positions: str):
    from reptune.tuning.trainer import Tuner

    tuner = Tuner(
        handle, TuneConfig.from_preset(preset, layers="1-2", steps=1, rep_positions=rep_positions, **FAST), items, vector
    )
    batch = tuner._tokenize(items)
    tuner.optimizer.zero_grad()
    terms = tuner.losses(batch, None)
    terms["loss"].backward()
    grads = {name: param.grad.clone() for name, param in tuner.named_params}
    return {key: float(value.detach()) for key, value in terms.items()}, grads


def _twin_handle_items_vector(arch: str, red_sky: str = "The sky is red today and every other day."):
    """A tiny chat model, two twin items (the first pair's false twin ``red_sky``) and a random vector at every layer."""
    from reptune.vectors import SteeringVector, VectorMeta

    handle = build_model(arch, chat=True)
    statements = [
        Statement("The sky is blue.", 1, pair="a"),
        Statement(red_sky, 0, pair="a"),
        Statement("Cats purr.", 1, pair="b"),
        Statement("Cats bark at the moon.", 0, pair="b"),
    ]
    items = twin_items(statements, handle.tokenizer)
    gen = torch.Generator().manual_seed(0)
    meta = VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers)
    vector = SteeringVector({layer: torch.randn(handle.hidden_size, generator=gen) for layer in range(handle.num_layers)}, meta)
    return handle, items, vector


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma"])
@pytest.mark.parametrize(("preset", "rep_positions"), [("truth", "last"), ("honesty", "all"), ("honesty", "generated")])
def test_twin_training_forward_with_shared_prompt_equals_whole_rows(monkeypatch, arch, preset, rep_positions):
    """The shared chat prompt runs once per batch; every loss term and gradient equals the unsplit pass."""
    from reptune import prefix_cache

    handle, items, vector = _twin_handle_items_vector(arch, red_sky="The sky is red today.")
    calls = []
    real_split = prefix_cache.split_forward
    monkeypatch.setattr("reptune.tuning.trainer.split_forward", lambda *a: calls.append(a[2]) or real_split(*a))
    split_terms, split_grads = _tuner_terms_and_grads(handle, preset, items, vector, rep_positions)
    assert calls and min(calls) >= 8  # the chat prompt was shared
    split_calls = len(calls)
    monkeypatch.setenv(prefix_cache.NO_PREFIX_ENV, "1")
    whole_terms, whole_grads = _tuner_terms_and_grads(handle, preset, items, vector, rep_positions)
    assert len(calls) == split_calls  # REPTUNE_NO_PREFIX_CACHE=1: every row ran whole
    for key, value in whole_terms.items():
        assert split_terms[key] == pytest.approx(value, abs=1e-5), key
    for name, grad in whole_grads.items():
        torch.testing.assert_close(split_grads[name], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma"])
@pytest.mark.parametrize(("preset", "rep_positions"), [("truth", "last"), ("honesty", "all")])
def test_packed_suffixes_train_as_padded_rows(monkeypatch, arch, preset, rep_positions):
    """Suffixes packed into one row (no padding) give every loss term and gradient of the padded split forward."""
    from reptune import prefix_cache

    handle, items, vector = _twin_handle_items_vector(arch)
    modes = []
    real_split = prefix_cache.split_forward
    monkeypatch.setattr("reptune.tuning.trainer.split_forward", lambda *a: modes.append(a[5]) or real_split(*a))
    packed_terms, packed_grads = _tuner_terms_and_grads(handle, preset, items, vector, rep_positions)
    assert modes[-1] is True  # the check passed and the training forward ran packed
    monkeypatch.setattr("reptune.tuning.trainer.packing_possible", lambda *a: False)
    modes.clear()
    padded_terms, padded_grads = _tuner_terms_and_grads(handle, preset, items, vector, rep_positions)
    assert modes == [False]
    for key, value in padded_terms.items():
        assert packed_terms[key] == pytest.approx(value, abs=1e-5), key
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_packed_suffix_inputs_lay_rows_end_to_end():
    """Each row's real suffix tokens follow the previous row's; the mask lets a token see the prefix and its own row's earlier tokens."""
    from reptune.prefix_cache import packed_suffix_inputs

    handle = build_model("llama")
    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 9, 0, 0], [5, 6, 1, 2, 3]])
    mask = (torch.arange(5) < torch.tensor([[4], [3], [5]])).long()
    positions = torch.arange(5).expand(3, -1)
    kwargs, index = packed_suffix_inputs(handle.model, {"input_ids": ids, "attention_mask": mask, "position_ids": positions}, 2, cache=None)
    assert kwargs["input_ids"].tolist() == [[7, 8, 9, 1, 2, 3]]
    assert kwargs["position_ids"].tolist() == [[2, 3, 2, 2, 3, 4]]
    assert index.tolist() == [[0, 1, 0], [2, 0, 0], [3, 4, 5]]
    allowed = kwargs["attention_mask"]
    if allowed.dtype != torch.bool:  # eager: additive
        allowed = allowed == 0
    assert allowed.shape == (1, 1, 6, 8)
    assert allowed[0, 0, :, :2].all()  # the shared prefix
    assert allowed[0, 0, 4, 2:].tolist() == [False, False, False, True, True, False]  # row 3's second token: rows 1-2 hidden


def test_training_falls_back_to_padding_when_packing_disagrees(monkeypatch):
    """A model whose packed forward differs (here: forced) trains padded, with the same losses."""
    handle, items, vector = _twin_handle_items_vector("llama")
    monkeypatch.setattr("reptune.tuning.trainer._same_forward", lambda *a: False)
    from reptune.tuning.trainer import Tuner

    tuner = Tuner(handle, TuneConfig.from_preset("truth", layers="1-2", steps=1, **FAST), items, vector)
    batch = tuner._tokenize(items)
    tuner.losses(batch, None)
    assert tuner.packing is False


def test_packing_refuses_flash_attention_and_short_sliding_windows():
    from reptune.prefix_cache import packing_possible

    handle = build_model("llama")
    assert packing_possible(handle.model, 64)
    handle.model.config.sliding_window = 32
    assert not packing_possible(handle.model, 64)
    assert packing_possible(handle.model, 32)
    handle.model.config.sliding_window = None
    handle.model.config._attn_implementation = "flash_attention_2"
    assert not packing_possible(handle.model, 64)


def test_no_packing_env_trains_padded(monkeypatch):
    """REPTUNE_NO_PACKING=1 keeps training padded (no check, no packed forward)."""
    from reptune import prefix_cache

    handle, items, vector = _twin_handle_items_vector("llama")
    modes = []
    real_split = prefix_cache.split_forward
    monkeypatch.setattr("reptune.tuning.trainer.split_forward", lambda *a: modes.append(a[5]) or real_split(*a))
    monkeypatch.setenv(prefix_cache.NO_PACKING_ENV, "1")
    _tuner_terms_and_grads(handle, "truth", items, vector, "last")
    assert modes == [False]
