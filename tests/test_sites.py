"""Layer specs and position selection (reptune.sites)."""

from __future__ import annotations

import pytest
import torch

from reptune.activations import tokenize_examples
from reptune.data import Example
from reptune.errors import ReptuneError
from reptune.sites import Positions, parse_layers


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", list(range(8))),
        (None, list(range(8))),
        ("3", [3]),
        (-1, [7]),
        ("-1", [7]),
        ("2-4", [2, 3, 4]),
        ("-3..-1", [5, 6, 7]),
        ("1,3,-1", [1, 3, 7]),
        ("5,5,1-2", [1, 2, 5]),
        ([0, -8], [0]),
        ("middle", [2, 3, 4]),
    ],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 8) == expected


@pytest.mark.parametrize("spec", ["8", "-9", "3-", "a", "4-2", "1,,2", "2..99", [9], "", "  "])
def test_parse_layers_rejects(spec):
    with pytest.raises(ReptuneError):
        parse_layers(spec, 8)


def test_out_of_range_message_names_the_range():
    with pytest.raises(ReptuneError, match=r"layer 12 is out of range: the model has 8 layers \(0..7\)"):
        parse_layers("12", 8)


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("all", Positions("all")),
        ("last", Positions("last", 1)),
        ("last:3", Positions("last", 3)),
        ("generated", Positions("generated")),
        ("marker:Answer", Positions("marker", marker="Answer")),
        ("marker:Answer:-1", Positions("marker", marker="Answer", offset=-1)),
        ("marker:a:b:+2", Positions("marker", marker="a:b", offset=2)),
    ],
)
def test_positions_parse_roundtrip(spec, parsed):
    assert Positions.parse(spec) == parsed
    assert Positions.parse(parsed.spec()) == parsed


@pytest.mark.parametrize("spec", ["first", "last:0", "last:x", "marker:", ""])
def test_positions_reject(spec):
    with pytest.raises(ReptuneError):
        Positions.parse(spec)


def _texts(tokenizer, examples, side):
    return tokenize_examples(tokenizer, examples, padding_side=side, with_offsets=True)


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_n_selects_final_real_tokens(tokenizer, side):
    examples = [Example("The sky is blue."), Example("Cats are mammals. Two plus two is four.")]
    batch = _texts(tokenizer, examples, side)
    mask = Positions.parse("last:2").mask(batch.attention_mask, batch.offsets, batch.texts)
    for row in range(2):
        real_cols = batch.attention_mask[row].nonzero().flatten().tolist()
        assert mask[row].nonzero().flatten().tolist() == real_cols[-2:]


@pytest.mark.parametrize("side", ["left", "right"])
def test_marker_offset_and_generated(tokenizer, side):
    examples = [
        Example("Is it true? Answer:", " (A"),
        Example("The grass is green. Is it true? Answer:", " (B"),
    ]
    batch = _texts(tokenizer, examples, side)
    marker = Positions.parse("marker:Answer:").mask(batch.attention_mask, batch.offsets, batch.texts)
    shifted = Positions.parse("marker:Answer::+1").mask(batch.attention_mask, batch.offsets, batch.texts)
    generated = Positions.parse("generated").mask(batch.attention_mask, batch.offsets, batch.texts, batch.completion_starts)
    for row, example in enumerate(examples):
        (col,) = marker[row].nonzero().flatten().tolist()
        start, end = batch.offsets[row][col]
        assert batch.texts[row][start:end].endswith(":")  # last token of "Answer:"
        (next_col,) = shifted[row].nonzero().flatten().tolist()
        real_cols = batch.attention_mask[row].nonzero().flatten().tolist()
        assert real_cols.index(next_col) == real_cols.index(col) + 1
        gen_cols = generated[row].nonzero().flatten().tolist()
        gen_text = "".join(batch.texts[row][batch.offsets[row][c][0] : batch.offsets[row][c][1]] for c in gen_cols)
        assert gen_text == example.completion
        assert all(c > col for c in gen_cols)


def test_missing_marker_and_missing_completion_raise(tokenizer):
    batch = _texts(tokenizer, [Example("The sky is blue.")], "left")
    with pytest.raises(ReptuneError, match="marker 'Answer' not found"):
        Positions.parse("marker:Answer").mask(batch.attention_mask, batch.offsets, batch.texts)
    with pytest.raises(ReptuneError, match="generated"):
        Positions.parse("generated").mask(batch.attention_mask, batch.offsets, batch.texts, batch.completion_starts)


def test_all_excludes_padding(tokenizer):
    batch = _texts(tokenizer, [Example("The sky is blue."), Example("Cats are mammals. Water boils.")], "left")
    mask = Positions.parse("all").mask(batch.attention_mask)
    assert torch.equal(mask, batch.attention_mask.bool())
