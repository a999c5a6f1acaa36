"""Shared model-input helpers (reptune.tokens) and the one vector normalisation (vectors.as_vector)."""

from __future__ import annotations

import pytest
import torch

from reptune.data.ab import letter_token_ids as ab_letter_token_ids
from reptune.discovery.common import DiscoveryError, load_prompts
from reptune.errors import DataError, VectorError
from reptune.evaluation.tasks.base import vector_directions
from reptune.evaluation.tasks.caa import choice_token_ids as tasks_choice_token_ids
from reptune.steering import Steering
from reptune.tokens import (
    choice_token_ids,
    first_token_id,
    forward_keeping_logits,
    jsonl_records,
    left_pad,
    letter_token_ids,
    next_token_ids,
)
from reptune.vectors import SteeringVector, as_vector


def test_old_names_are_the_shared_helpers():
    assert ab_letter_token_ids is letter_token_ids
    assert tasks_choice_token_ids is choice_token_ids


def test_next_token_ids_follow_the_prompt(tokenizer):
    prompt = "Answer:"
    ids = next_token_ids(tokenizer, prompt, [" A", "B"])
    for choice, token in zip([" A", "B"], ids):
        full = tokenizer(prompt + choice, add_special_tokens=False)["input_ids"]
        assert token == full[len(tokenizer(prompt, add_special_tokens=False)["input_ids"])]
    assert letter_token_ids(tokenizer, prompt) == tuple(next_token_ids(tokenizer, prompt, ["A", "B"]))
    with pytest.raises(DataError, match="same first token"):
        choice_token_ids(tokenizer, prompt, ["Yes", "Yesterday"])


def test_first_token_id(tokenizer):
    assert first_token_id(tokenizer, "") is None
    assert first_token_id(tokenizer, "The sky") == tokenizer.encode("The sky", add_special_tokens=False)[0]


def test_left_pad_counts_real_positions():
    ids, mask, positions = left_pad([[5, 6, 7], [8]], 0, "cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_forward_keeping_logits_falls_back_for_old_model_classes():
    class Old(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids * 2

    class New(torch.nn.Module):
        def forward(self, input_ids, logits_to_keep=0):
            return input_ids[:, -logits_to_keep:]

    ids = torch.arange(6).view(2, 3)
    out, kept = forward_keeping_logits(Old(), {"input_ids": ids}, 1)
    assert not kept and out.shape == (2, 3)
    out, kept = forward_keeping_logits(New(), {"input_ids": ids}, 1)
    assert kept and out.tolist() == [[2], [5]]


def test_jsonl_records_skip_blanks_and_name_the_line():
    assert list(jsonl_records(['{"a": 1}', "", " ", "[2]"], "f.jsonl")) == [(1, {"a": 1}), (4, [2])]
    with pytest.raises(DataError, match=r"^f\.jsonl:2: invalid JSON \("):
        list(jsonl_records(["{}", "{"], "f.jsonl"))
    with pytest.raises(DiscoveryError, match=r"^f: bad 1$"):
        list(jsonl_records(["{"], "f", error=DiscoveryError, bad_json="{where}: bad {lineno}"))
    with pytest.raises(DataError, match="nested too deeply"):
        list(jsonl_records(["[" * 100000 + "]" * 100000], "deep.jsonl"))


def test_discovery_prompts_keep_their_messages(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"one"\n\n{"prompt": "two"}\n', encoding="utf-8")
    assert load_prompts(path) == ["one", "two"]
    path.write_text('"one"\n{\n', encoding="utf-8")
    with pytest.raises(DiscoveryError, match=r"p\.jsonl: invalid JSON \(.*line 1\)"):
        load_prompts(path)


def test_as_vector_is_the_one_normalisation(tiny):
    raw = {-1: torch.ones(tiny.hidden_size, dtype=torch.float64)}
    vector = as_vector(raw, tiny)
    assert isinstance(vector, SteeringVector) and vector.layers == [tiny.num_layers - 1]
    assert vector.meta.method == "user" and vector.directions[tiny.num_layers - 1].dtype == torch.float32
    assert as_vector(vector, tiny) is vector
    torch.testing.assert_close(vector_directions(raw, tiny)[tiny.num_layers - 1], vector.directions[tiny.num_layers - 1])
    assert Steering(tiny, raw).directions.keys() == vector.directions.keys()
    with pytest.raises(VectorError, match="expected hidden size"):
        as_vector({0: torch.ones(3)}, tiny)
    with pytest.raises(VectorError, match="non-empty"):
        vector_directions({}, tiny)
