"""reptune.data: the pair schema, JSONL/CSV parsing, pair builders and dataset resolution."""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

import pytest
from conftest import build_tokenizer

from reptune.data import (
    DATA_DIR_ENV,
    DISHONEST_PERSONA,
    HONEST_PERSONA,
    ContrastPair,
    Example,
    Statement,
    builtin_path,
    caa_pairs,
    honesty_pairs,
    load_contrast_pairs,
    load_pairs_jsonl,
    load_statements_csv,
    pairs_hash,
    read_source,
    render_chat,
    save_pairs_jsonl,
)
from reptune.errors import DataError, ReptuneError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


GOOD = {"positive": "yes", "negative": "no"}


@pytest.fixture()
def chat_tokenizer():
    return build_tokenizer(chat=True)


# --------------------------------------------------------------------------- schema / JSONL


class TestExample:
    def test_text_and_completion_start(self):
        example = Example("Q: ", "A")
        assert example.text == "Q: A"
        assert example.completion_start == 3
        assert Example("just a prompt").completion_start is None

    def test_to_json_forms(self):
        assert Example("p").to_json() == "p"
        assert Example("p", "c").to_json() == {"prompt": "p", "completion": "c"}

    def test_coerce(self):
        assert Example.coerce("hi", "x") == Example("hi")
        assert Example.coerce({"prompt": "a", "completion": "b"}, "x") == Example("a", "b")
        assert Example.coerce({"prompt": "a"}, "x") == Example("a")
        same = Example("a", "b")
        assert Example.coerce(same, "x") is same

    @pytest.mark.parametrize(
        "value, fragment",
        [("", "empty text"), (3, "got int"), ({"completion": "c"}, "got dict"), ({"prompt": "p", "completion": 5}, "'completion' must be a string")],
    )
    def test_coerce_rejects(self, value, fragment):
        with pytest.raises(DataError, match="WHERE") as info:
            Example.coerce(value, "WHERE")
        assert fragment in str(info.value)


def test_pairs_round_trip(tmp_path):
    pairs = [
        ContrastPair(Example("honest: ", "The sky is blue."), Example("liar: ", "The sky is blue."), label=1, meta={"topic": "sky", "n": [1, 2]}),
        ContrastPair(Example("plain positive"), Example("plain negative")),
        ContrastPair(Example("ünïcödé ✓ \"quotes\"\nnewline", "(A"), Example("p", "(B"), label=0),
    ]
    path = tmp_path / "sub" / "pairs.jsonl"
    save_pairs_jsonl(pairs, path)
    loaded = load_pairs_jsonl(path)
    assert loaded == pairs
    # meta is excluded from equality: check it explicitly
    assert [pair.meta for pair in loaded] == [pair.meta for pair in pairs]
    assert [pair.label for pair in loaded] == [1, None, 0]
    assert pairs_hash(loaded) == pairs_hash(pairs)
    # one JSON object per line, nothing else; unicode kept readable
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    assert "ünïcödé" in lines[2]
    assert not list(tmp_path.glob("sub/.*.tmp"))


def test_pairs_hash_changes_with_content():
    a = [ContrastPair(Example("a"), Example("b"))]
    b = [ContrastPair(Example("a"), Example("c"))]
    assert pairs_hash(a) != pairs_hash(b)
    assert pairs_hash(a) == pairs_hash([ContrastPair(Example("a"), Example("b"))])


def test_jsonl_blank_lines_skipped_and_labels_coerced(tmp_path):
    path = write(
        tmp_path / "p.jsonl",
        jsonl(GOOD, "", {**GOOD, "label": True}, "   ", {**GOOD, "label": "0"}, {**GOOD, "label": None}),
    )
    pairs = load_pairs_jsonl(path)
    assert [pair.label for pair in pairs] == [None, 1, 0, None]


def test_jsonl_with_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl(GOOD, GOOD).encode())
    assert len(load_pairs_jsonl(path)) == 2


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        ('{"positive": "a", "negative": ', "invalid JSON"),
        ({"positive": "a"}, "missing field(s) negative"),
        ({"negative": "a"}, "missing field(s) positive"),
        ({**GOOD, "extra": 1, "more": 2}, "unknown field(s) extra, more"),
        ({**GOOD, "label": 2}, "label must be 0/1"),
        ({**GOOD, "label": "maybe"}, "label must be 0/1"),
        ({**GOOD, "meta": "x"}, "'meta' must be an object"),
        ({"positive": 5, "negative": "a"}, "positive: expected a string"),
        ({"positive": "a", "negative": ""}, "negative: empty text"),
        ("[1, 2]", "expected a JSON object"),
        ('"just a string"', "expected a JSON object"),
        ("42", "expected a JSON object"),
    ],
)
def test_jsonl_malformed_names_file_and_line(tmp_path, bad_line, fragment):
    # the bad record is on physical line 4 (a blank line before it still counts)
    path = write(tmp_path / "pairs.jsonl", jsonl(GOOD, GOOD, "", bad_line, GOOD))
    with pytest.raises(DataError) as info:
        load_pairs_jsonl(path)
    message = str(info.value)
    assert "pairs.jsonl:4:" in message
    assert fragment in message
    assert "\n" not in message


def test_jsonl_not_utf8_names_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(jsonl(GOOD).encode() + b'{"positive": "caf\xe9", "negative": "b"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not UTF-8"):
        load_pairs_jsonl(path)


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_jsonl_empty(tmp_path, content):
    path = write(tmp_path / "empty.jsonl", content)
    with pytest.raises(DataError, match=r"empty\.jsonl: no contrast pairs"):
        load_pairs_jsonl(path)
    with pytest.raises(DataError, match="no contrast pairs"):
        load_contrast_pairs(str(path))


def test_data_error_is_a_reptune_error():
    assert issubclass(DataError, ReptuneError) and issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- statements CSV


def test_statements_csv_reads_labels_topics_and_quotes(tmp_path):
    path = write(
        tmp_path / "s.csv",
        'statement,label,topic\nThe sky is blue.,1,sky\n"Paris, not Rome, is in France.",true,geo\n  Cats are fish.  , 0 ,\n',
    )
    statements = load_statements_csv(path)
    assert statements == [
        Statement("The sky is blue.", 1, "sky"),
        Statement("Paris, not Rome, is in France.", 1, "geo"),
        Statement("Cats are fish.", 0, None),
    ]


def test_statements_csv_topic_column_optional_and_bom(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(b"\xef\xbb\xbfstatement,label\nA.,1\nB.,no\n")
    assert load_statements_csv(path) == [Statement("A.", 1), Statement("B.", 0)]


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("statement,label\nA.,1\nB.,2\n", 3, "label must be 0/1"),
        ("statement,label\nA.,1\n  ,1\n", 3, "empty statement"),
        ("statement,label\nA.,1\nB.\n", 3, "label must be 0/1"),  # missing label column
        ("statement,label\nA.,1\nB.,1\nParis, France is nice.,1\n", 4, "more fields than the header"),
        ("The sky is blue.,1\nA.,0\n", 1, "expected a header with 'statement' and 'label'"),
        ("text,truth\nA.,1\n", 1, "expected a header"),
    ],
)
def test_statements_csv_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path / "facts.csv", text)
    with pytest.raises(DataError) as info:
        load_statements_csv(path)
    assert f"facts.csv:{line}:" in str(info.value)
    assert fragment in str(info.value)


def test_statements_csv_header_only_or_empty(tmp_path):
    with pytest.raises(DataError, match=r"h\.csv: no statements"):
        load_statements_csv(write(tmp_path / "h.csv", "statement,label\n"))
    with pytest.raises(DataError, match=r"e\.csv:1: expected a header"):
        load_statements_csv(write(tmp_path / "e.csv", ""))


def test_statements_csv_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"statement,label\nCaf\xe9 is French.,1\n")
    with pytest.raises(DataError, match=r"latin\.csv: not UTF-8"):
        load_statements_csv(path)


# --------------------------------------------------------------------------- honesty pairs

STATEMENTS = [
    Statement("T1.", 1, "a"),
    Statement("F1.", 0, "a"),
    Statement("T2.", 1),
    Statement("T3.", 1, "b"),
    Statement("F2.", 0),
]


def test_render_chat_without_template(tokenizer):
    assert render_chat(None, "hello") == "hello\n"
    assert render_chat(tokenizer, "hello") == "hello\n"  # no chat template
    assert render_chat(None, "hello", system="sys") == "sys\nhello\n"


def test_render_chat_with_template(chat_tokenizer):
    assert render_chat(chat_tokenizer, "hello") == "<|user|>hello<|end|><|assistant|>"
    assert render_chat(chat_tokenizer, "hello", system="S") == "<|system|>S<|end|><|user|>hello<|end|><|assistant|>"


def test_honesty_paired_without_chat():
    pairs = honesty_pairs(STATEMENTS)
    assert len(pairs) == len(STATEMENTS)
    for pair, item in zip(pairs, STATEMENTS):
        assert pair.positive.prompt == HONEST_PERSONA + "\n"
        assert pair.negative.prompt == DISHONEST_PERSONA + "\n"
        assert pair.positive.prompt != pair.negative.prompt
        assert pair.positive.completion == pair.negative.completion == item.text
        assert pair.positive.text == f"{HONEST_PERSONA}\n{item.text}"
        assert pair.label == item.label
        assert pair.meta["statement"] == item.text
        assert pair.meta.get("topic") == item.topic


def test_honesty_paired_with_chat_template(chat_tokenizer):
    pairs = honesty_pairs(STATEMENTS, chat_tokenizer)
    for pair in pairs:
        assert pair.positive.prompt.endswith("<|assistant|>")
        assert pair.negative.prompt.endswith("<|assistant|>")
        assert pair.positive.prompt == f"<|user|>{HONEST_PERSONA}<|end|><|assistant|>"
        assert pair.negative.prompt == f"<|user|>{DISHONEST_PERSONA}<|end|><|assistant|>"
        assert pair.positive.completion == pair.negative.completion
        # the completion is where positions 'generated' start
        assert pair.positive.completion_start == len(pair.positive.prompt)


def test_honesty_custom_personas():
    pairs = honesty_pairs(STATEMENTS[:1], honest_persona="Be good.", dishonest_persona="Be bad.")
    assert (pairs[0].positive.prompt, pairs[0].negative.prompt) == ("Be good.\n", "Be bad.\n")


def test_honesty_unpaired():
    pairs = honesty_pairs(STATEMENTS, variant="unpaired", seed=3)
    trues = {s.text for s in STATEMENTS if s.label == 1}
    falses = {s.text for s in STATEMENTS if s.label == 0}
    assert len(pairs) == min(len(trues), len(falses)) == 2
    for pair in pairs:
        assert pair.positive.prompt == HONEST_PERSONA + "\n" and pair.positive.completion in trues
        assert pair.negative.prompt == DISHONEST_PERSONA + "\n" and pair.negative.completion in falses
        assert pair.meta == {"true": pair.positive.completion, "false": pair.negative.completion}
    # every false statement used once, no true statement twice
    assert {p.negative.completion for p in pairs} == falses
    assert len({p.positive.completion for p in pairs}) == 2


def test_honesty_unpaired_seeded_shuffle_is_deterministic():
    many = [Statement(f"T{i}.", 1) for i in range(30)] + [Statement(f"F{i}.", 0) for i in range(20)]

    def order(seed):
        return [(p.positive.completion, p.negative.completion) for p in honesty_pairs(many, variant="unpaired", seed=seed)]

    assert len(order(0)) == 20
    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != [(f"T{i}.", f"F{i}.") for i in range(20)]  # actually shuffled


@pytest.mark.parametrize(
    "statements, variant, fragment",
    [
        ([], "paired", "no statements"),
        ([Statement("T.", 1), Statement("T2.", 1)], "unpaired", "both true and false"),
        (STATEMENTS, "sideways", "unknown honesty variant 'sideways'"),
    ],
)
def test_honesty_errors(statements, variant, fragment):
    with pytest.raises(DataError, match=fragment):
        honesty_pairs(statements, variant=variant)


# --------------------------------------------------------------------------- CAA pairs

CAA = [
    {"question": "Is it?\n (A) Yes\n (B) No", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"},
    {"question": "  Other?  ", "answer_matching_behavior": " (B) ", "answer_not_matching_behavior": ["(A)", "(C)"]},
    {"question": "Free?", "answer_matching_behavior": "Sure thing", "answer_not_matching_behavior": "No way"},
]


def test_caa_pairs_without_chat():
    pairs = caa_pairs(CAA)
    assert [(p.positive.completion, p.negative.completion) for p in pairs] == [("(A", "(B"), ("(B", "(A"), ("Sure thing", "No way")]
    assert pairs[0].positive.prompt == pairs[0].negative.prompt == "Is it?\n (A) Yes\n (B) No\n"
    assert pairs[1].positive.prompt == "Other?\n"
    assert pairs[1].meta == {"matching": "(B)", "not_matching": "(A)"}
    assert all(p.label is None for p in pairs)


def test_caa_pairs_with_chat(chat_tokenizer):
    pair = caa_pairs(CAA[:1], chat_tokenizer)[0]
    assert pair.positive.prompt == "<|user|>Is it?\n (A) Yes\n (B) No<|end|><|assistant|>"
    assert pair.positive.text.endswith("<|assistant|>(A")
    assert pair.negative.text.endswith("<|assistant|>(B")


@pytest.mark.parametrize(
    "records, fragment",
    [
        ([CAA[0], {"question": "q", "answer_matching_behavior": "(A)"}], "src: record 2: missing field 'answer_not_matching_behavior'"),
        ([{"answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}], "src: record 1: missing field 'question'"),
        (["not a dict"], "src: record 1: expected an object"),
        ([{"question": "", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}], "non-empty strings"),
        ([{"question": "q", "answer_matching_behavior": 1, "answer_not_matching_behavior": "(B)"}], "non-empty strings"),
        ([], "src: no questions"),
    ],
)
def test_caa_errors(records, fragment):
    with pytest.raises(DataError) as info:
        caa_pairs(records, source="src")
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- sources


@pytest.fixture()
def no_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def test_builtin_honesty_resolves_to_shipped_csv(no_data_dir):
    path = builtin_path("honesty")
    assert path.is_file() and path.name == "honesty_statements.csv"
    source = read_source("honesty")
    assert source.kind == "statements"
    assert Path(source.origin) == path


def test_builtin_honesty_dataset_quality():
    statements = load_statements_csv(builtin_path("honesty"))
    assert len(statements) >= 400
    labels = collections.Counter(s.label for s in statements)
    assert set(labels) == {0, 1}
    assert abs(labels[1] - labels[0]) <= 0.05 * len(statements)
    topics = collections.Counter(s.topic for s in statements)
    assert None not in topics
    assert len(topics) >= 6
    texts = [s.text for s in statements]
    assert len(set(texts)) == len(texts), "exact duplicate statements"
    normalised = [" ".join(t.lower().rstrip(".").split()) for t in texts]
    assert len(set(normalised)) == len(normalised), "near-duplicate statements"
    # the format the resource README promises: one short ASCII sentence ending with a period
    for s in statements:
        assert s.text.isascii() and s.text.endswith(".") and len(s.text) < 120, s.text
    # labels balanced inside every topic too, so topic is not a shortcut for truth
    for topic in topics:
        per_topic = collections.Counter(s.label for s in statements if s.topic == topic)
        assert abs(per_topic[1] - per_topic[0]) <= max(1, 0.1 * sum(per_topic.values())), topic


def test_builtin_honesty_loads_as_pairs(chat_tokenizer, no_data_dir):
    pairs, origin = load_contrast_pairs("honesty", chat_tokenizer, limit=10)
    assert len(pairs) == 10 and origin.endswith("honesty_statements.csv")
    assert all(p.positive.prompt.endswith("<|assistant|>") for p in pairs)
    unpaired, _ = load_contrast_pairs("honesty", variant="unpaired", seed=1)
    statements = load_statements_csv(builtin_path("honesty"))
    labels = collections.Counter(s.label for s in statements)
    assert len(unpaired) == min(labels[0], labels[1])


def test_data_dir_facts(shared_data, monkeypatch, tokenizer):
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data))
    expected = shared_data / "honesty" / "facts_true_false.csv"
    source = read_source("facts")
    assert source.kind == "statements" and Path(source.origin) == expected
    assert len(source.records) == len(load_statements_csv(expected)) > 100
    pairs, origin = load_contrast_pairs("facts", tokenizer, limit=5)
    assert len(pairs) == 5 and Path(origin) == expected
    assert pairs[0].positive.completion == source.records[0].text


def test_data_dir_caa(shared_data, monkeypatch, chat_tokenizer):
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data))
    expected = shared_data / "caa" / "generate" / "sycophancy" / "generate_dataset.json"
    source = read_source("caa:sycophancy")
    assert source.kind == "caa" and Path(source.origin) == expected
    pairs, _ = load_contrast_pairs("caa:sycophancy", chat_tokenizer, limit=7)
    assert len(pairs) == 7
    records = json.loads(expected.read_text())
    for pair, record in zip(pairs, records):
        assert pair.positive.completion == record["answer_matching_behavior"].strip()[:-1]
        assert pair.negative.completion == record["answer_not_matching_behavior"].strip()[:-1]
        assert pair.positive.prompt.endswith("<|assistant|>")


def test_data_dir_caa_test_split(shared_data, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data))
    source = read_source("caa-test:sycophancy")
    assert source.kind == "caa"
    assert Path(source.origin) == shared_data / "caa" / "test" / "sycophancy" / "test_dataset_ab.json"


@pytest.mark.parametrize("name", ["facts", "caa:sycophancy"])
def test_standard_set_needs_data_dir(no_data_dir, name):
    with pytest.raises(DataError) as info:
        read_source(name)
    assert DATA_DIR_ENV in str(info.value) and repr(name) in str(info.value)


def test_standard_set_file_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError) as info:
        read_source("caa:no-such-behaviour")
    message = str(info.value)
    assert "not found" in message
    assert str(tmp_path / "caa" / "generate" / "no-such-behaviour" / "generate_dataset.json") in message


def test_unknown_name_lists_known_sets(no_data_dir):
    with pytest.raises(DataError) as info:
        read_source("nonsense")
    message = str(info.value)
    assert "unknown dataset 'nonsense'" in message
    for known in ("honesty", "facts", "gpt4-facts", "caa:<behaviour>", "caa-test:<behaviour>"):
        assert known in message


@pytest.mark.parametrize("spec", ["missing.jsonl", "dir/missing.csv", "a/b/c"])
def test_nonexistent_path_not_found(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="dataset file not found"):
        read_source(spec)


def test_empty_spec():
    with pytest.raises(DataError, match="empty dataset argument"):
        read_source("  ")


def test_explicit_files_by_suffix(tmp_path, chat_tokenizer):
    pairs_path = write(tmp_path / "p.jsonl", jsonl(GOOD, {**GOOD, "label": 1}))
    assert read_source(pairs_path).kind == "pairs"
    csv_path = write(tmp_path / "s.csv", "statement,label\nA.,1\nB.,0\n")
    pairs, origin = load_contrast_pairs(csv_path, chat_tokenizer)
    assert origin == str(csv_path) and [p.label for p in pairs] == [1, 0]
    caa_path = write(tmp_path / "q.json", json.dumps(CAA))
    pairs, _ = load_contrast_pairs(str(caa_path))
    assert [p.positive.completion for p in pairs] == ["(A", "(B", "Sure thing"]
    list_path = write(tmp_path / "l.json", json.dumps([GOOD, {"positive": {"prompt": "p", "completion": "c"}, "negative": "n"}]))
    pairs, _ = load_contrast_pairs(str(list_path))
    assert pairs[1].positive == Example("p", "c")


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("bad.json", '[\n{"question": \n', r"bad\.json:3: invalid JSON"),
        ("obj.json", '{"a": 1}', r"obj\.json: expected a non-empty JSON list"),
        ("nil.json", "[]", r"nil\.json: expected a non-empty JSON list"),
        ("pairs.json", json.dumps([GOOD, {"positive": "x"}]), r"pairs\.json: record 2: missing field"),
        ("notes.txt", "hello", "unsupported file type '.txt'"),
    ],
)
def test_bad_explicit_files(tmp_path, name, text, fragment):
    with pytest.raises(DataError, match=fragment):
        read_source(write(tmp_path / name, text))


def test_limit(tmp_path):
    path = write(tmp_path / "p.jsonl", jsonl(*({"positive": f"p{i}", "negative": f"n{i}"} for i in range(6))))
    pairs, _ = load_contrast_pairs(path, limit=4)
    assert [p.positive.prompt for p in pairs] == ["p0", "p1", "p2", "p3"]
    assert len(load_contrast_pairs(path, limit=100)[0]) == 6
    for bad in (0, -1):
        with pytest.raises(DataError, match=f"limit must be at least 1, got {bad}"):
            load_contrast_pairs(path, limit=bad)


def test_hub_id_offline_fails_fast(monkeypatch):
    """A hub-looking id while offline is a one-line DataError within seconds, never a hang."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the libraries read these variables at import time, which may predate this test
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)

    outcome: dict[str, BaseException] = {}

    def attempt():
        try:
            read_source("someorg/someset")
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["exc"] = exc

    start = time.monotonic()
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "loading a hub id offline took more than 10 s"
    assert time.monotonic() - start < 10
    exc = outcome.get("exc")
    assert isinstance(exc, DataError), repr(exc)
    assert "someorg/someset" in str(exc) and "\n" not in str(exc)
