"""Evaluation suite: registry, crafted-case scoring, tasks, perplexity, steering, resume, CLI."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, ClassVar

import pytest
import torch
from conftest import build_model
from conftest import constant_logits_model as constant_model

from reptune import cli
from reptune.errors import DataError, ReptuneError
from reptune.evaluation import (
    Task,
    available_tasks,
    compare_results,
    evaluate,
    get_task,
    load_eval_results,
    register_task,
)
from reptune.evaluation.registry import TASKS
from reptune.evaluation.scoring import continuation_logprobs, next_token_logprobs, prompt_token_ids, sliding_windows
from reptune.evaluation.tasks.base import parse_ab_answer

TOY_TEXT = (
    "The sky is blue. The grass is green. Paris is the capital of France. Water boils at 100 degrees. "
    "Two plus two is four. Cats are mammals. Hello world, the quick brown fox jumps over the lazy dog."
)


@pytest.fixture(scope="module")
def model():
    return build_model("llama", chat=True)




@pytest.fixture()
def data_dir(shared_data, monkeypatch):
    monkeypatch.setenv("REPTUNE_DATA_DIR", str(shared_data))
    return shared_data


# ---------------------------------------------------------------- registry
def test_registry_lists_and_rejects():
    names = available_tasks()
    for name in ("facts-ab", "tqa-ab", "tqa-mc1", "tqa-mc2", "mmlu", "perplexity", "kl", "caa:<behaviour>"):
        assert name in names
    with pytest.raises(ReptuneError, match="unknown task 'nope'; available: caa:<behaviour>, facts-ab"):
        get_task("nope")
    with pytest.raises(ReptuneError, match="needs a parameter"):
        get_task("caa")
    with pytest.raises(ReptuneError, match="has no option 'window'"):
        get_task("mmlu", window=3)
    assert get_task("caa:sycophancy").full_name == "caa:sycophancy"
    assert get_task("perplexity", window="64").options["window"] == 64
    with pytest.raises(ReptuneError, match="expected int"):
        get_task("perplexity", window="big")


def test_register_custom_task(model):
    @register_task
    class Echo(Task):
        name = "test-echo"
        defaults: ClassVar[dict[str, Any]] = {"n": 5}

        def load_items(self, handle, limit):
            return [{"id": str(i)} for i in range(self.options["n"])], "memory", "h"

        def score(self, handle, items, *, batch_size, context, advance):
            return [{"correct": int(item["id"]) % 2 == 0} for item in items]

        def summarize(self, records, seed):
            from reptune.evaluation.statistics import proportion_metric

            return {"accuracy": proportion_metric(sum(r["correct"] for r in records), len(records))}

    try:
        result = get_task("test-echo", n=4).run(model, limit=3)
        assert [r["id"] for r in result.records] == ["0", "1", "2"]
        assert result.value == pytest.approx(2 / 3)
        assert 0 < result.metrics["accuracy"]["ci_low"] < result.value < result.metrics["accuracy"]["ci_high"]
        with pytest.raises(ReptuneError, match="--limit must be at least 1"):
            get_task("test-echo").run(model, limit=0)
    finally:
        TASKS.pop("test-echo")


# ---------------------------------------------------------------- scoring on crafted models
def test_next_token_logprobs_crafted():
    tokenizer = build_model("llama").tokenizer
    bias = torch.zeros(len(tokenizer))
    a, b = tokenizer("A", add_special_tokens=False)["input_ids"][0], tokenizer("B", add_special_tokens=False)["input_ids"][0]
    bias[b] = 5.0
    bias[a] = 2.0
    handle = constant_model(bias)
    expected = torch.log_softmax(bias.double(), -1)
    got = next_token_logprobs(handle, ["short", "a much longer prompt here", "x"], [a, b], batch_size=2)
    assert got.shape == (3, 2)
    for row in got:
        assert row[0] == pytest.approx(float(expected[a]), abs=1e-5) and row[1] == pytest.approx(float(expected[b]), abs=1e-5)


def test_facts_ab_crafted_model_always_answers_b(tmp_path):
    handle = build_model("llama", chat=True)
    task = get_task("facts-ab")
    items, _, _ = task.load_items(handle, 10)
    from reptune.data.ab import letter_token_ids

    a, b = letter_token_ids(handle.tokenizer, items[0]["prompt"])
    bias = torch.zeros(len(handle.tokenizer))
    bias[b], bias[a] = 3.0, 1.0
    handle = constant_model(bias)
    result = task.run(handle, limit=10, batch_size=3)
    for item, record in zip(items, result.records):
        assert record["answer"] == "B"
        assert record["correct"] == (item["correct"] == 1)
        assert record["margin"] == pytest.approx(2.0 if item["correct"] == 1 else -2.0, abs=1e-5)
    n_correct = sum(item["correct"] == 1 for item in items)
    assert result.metrics["accuracy"]["value"] == pytest.approx(n_correct / 10)
    assert result.metrics["lie_rate"]["value"] == pytest.approx(1 - n_correct / 10)
    assert result.metrics["unparsed_rate"]["value"] == 0


def test_continuation_logprobs_crafted_and_batched(model):
    tokenizer = model.tokenizer
    bias = torch.randn(len(tokenizer), generator=torch.Generator().manual_seed(0))
    handle = constant_model(bias)
    logp = torch.log_softmax(bias.double(), -1)
    pairs = [("The sky is", " blue."), ("Two plus two is", " four and more"), ("x", " y")]
    scores = continuation_logprobs(handle, pairs, batch_size=2)
    for (prompt, cont), score in zip(pairs, scores):
        ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        assert score.n_tokens == len(ids)
        assert score.logprob == pytest.approx(float(logp[ids].sum()), abs=1e-4)
    # on a real (random) model: batched, padded rows equal a plain unbatched forward
    plain = []
    for prompt, cont in pairs:
        ctx = prompt_token_ids(tokenizer, prompt)
        ids = ctx + tokenizer(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = torch.log_softmax(model.model(torch.tensor([ids])).logits[0].double(), -1)
        plain.append(sum(float(out[p - 1, ids[p]]) for p in range(len(ctx), len(ids))))
    for batch_size in (1, 3):
        got = [s.logprob for s in continuation_logprobs(model, pairs, batch_size=batch_size)]
        assert got == pytest.approx(plain, abs=1e-4)


def test_parse_ab_answer():
    assert parse_ab_answer("A") == 0
    assert parse_ab_answer(" (B) because") == 1
    assert parse_ab_answer("Answer: b") == 1
    assert parse_ab_answer("B) False") == 1
    assert parse_ab_answer("a cat") is None
    assert parse_ab_answer("Absolutely") is None
    assert parse_ab_answer("True, it is.", ["False", "True"]) == 1
    assert parse_ab_answer("I am not sure") is None


def test_facts_ab_generation_mode(model):
    result = get_task("facts-ab", scoring="generate", max_new_tokens=3).run(model, limit=4, batch_size=2)
    for record in result.records:
        assert "completion" in record
        assert record["unparsed"] == (record["answer"] is None)
        assert record["correct"] + record["lie"] + record["unparsed"] == 1
    total = sum(result.metrics[m]["value"] for m in ("accuracy", "lie_rate", "unparsed_rate"))
    assert total == pytest.approx(1.0)
    with pytest.raises(ReptuneError, match="scoring must be logprob or generate"):
        get_task("facts-ab", scoring="vibes").run(model, limit=2)


# ---------------------------------------------------------------- perplexity
def test_sliding_windows_cover_every_token_once():
    for n, window, stride in [(100, 16, 8), (100, 16, 16), (17, 16, 3), (5, 16, 8), (64, 8, 1)]:
        windows = sliding_windows(n, window, stride)
        scored = [t for b, e, k in windows for t in range(e - k, e)]
        assert scored == list(range(1, n))
        assert all(e - b <= window and k < e - b for b, e, k in windows)
    with pytest.raises(ReptuneError):
        sliding_windows(100, 8, 9)


def test_perplexity_equals_exp_mean_nll(model, tmp_path):
    path = tmp_path / "toy.txt"
    path.write_text(TOY_TEXT, encoding="utf-8")
    ids = model.tokenizer(TOY_TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model.model(torch.tensor([ids])).logits[0].double()
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="mean")
    result = get_task("perplexity", data=str(path), window=len(ids) + 5, stride=8).run(model)
    assert result.metrics["perplexity"]["tokens"] == len(ids) - 1
    assert result.value == pytest.approx(math.exp(float(nll)), rel=1e-5)

    # sliding windows: the Hugging Face recipe, computed independently with labels=-100
    window, stride = 16, 8
    total_nll, total, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        target_len = end - prev_end
        inputs = torch.tensor([ids[begin:end]])
        labels = inputs.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            loss = model.model(inputs, labels=labels).loss
        valid = int((labels[:, 1:] != -100).sum())
        total_nll += float(loss) * valid
        total += valid
        prev_end = end
        if end == len(ids):
            break
    result = get_task("perplexity", data=str(path), window=window, stride=stride).run(model, batch_size=3)
    assert result.metrics["perplexity"]["tokens"] == total == len(ids) - 1
    assert result.value == pytest.approx(math.exp(total_nll / total), rel=1e-5)
    low, high = result.metrics["perplexity"]["ci_low"], result.metrics["perplexity"]["ci_high"]
    assert low < result.value < high


# ---------------------------------------------------------------- tasks on the shared data
def test_tasks_on_shared_data(model, data_dir):
    results = evaluate(model, "facts-ab,tqa-ab,tqa-mc1,tqa-mc2,mmlu,caa:sycophancy", limit=6, batch_size=4)
    assert set(results.tasks) == {"facts-ab", "tqa-ab", "tqa-mc1", "tqa-mc2", "mmlu", "caa:sycophancy"}
    for result in results.tasks.values():
        assert len(result.records) == 6
        assert all("id" in r for r in result.records)
        value = result.value
        assert 0.0 <= value <= 1.0
    mmlu = results["mmlu"]
    assert len({r["subject"] for r in mmlu.records}) == 6  # round-robin over subjects
    mc2 = results["tqa-mc2"].records[0]
    assert 0 < mc2["mc2"] < 1
    caa = results["caa:sycophancy"].records[0]
    assert 0 < caa["p_match"] < 1 and caa["matching"] == (caa["p_match"] > 0.5)
    subset = evaluate(model, [get_task("mmlu", subjects="anatomy,astronomy")], limit=4)
    assert {r["subject"] for r in subset["mmlu"].records} == {"anatomy", "astronomy"}


def test_mc1_mc2_crafted(model, tmp_path):
    # one question; the constant model prefers token-wise whichever answer has higher bias mass
    tokenizer = model.tokenizer
    good = " blue"
    bias = torch.zeros(len(tokenizer))
    for token in tokenizer(good, add_special_tokens=False)["input_ids"]:
        bias[token] += 4.0
    handle = constant_model(bias)
    path = tmp_path / "mc.json"
    path.write_text(json.dumps([{"question": "What colour is the sky?", "mc1_targets": {"green": 0, "blue": 1}, "mc2_targets": {"blue": 1, "green": 0}}]))
    mc1 = get_task("tqa-mc1", data=str(path), primer=False).run(handle)
    assert mc1.records[0]["correct"] and mc1.records[0]["choice"] == 1
    mc2 = get_task("tqa-mc2", data=str(path), primer=False).run(handle)
    lp_good, lp_bad = mc2.records[0]["logprobs"]
    assert mc2.value == pytest.approx(math.exp(lp_good) / (math.exp(lp_good) + math.exp(lp_bad)), rel=1e-6)
    assert mc2.value > 0.5


def test_missing_data_says_where_to_get_it(model, monkeypatch):
    monkeypatch.delenv("REPTUNE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="REPTUNE_DATA_DIR.*mmlu/test"):
        evaluate(model, "mmlu", limit=2)
    with pytest.raises(DataError, match="sylinrl/TruthfulQA"):
        evaluate(model, "tqa-mc1", limit=2)
    with pytest.raises(DataError, match="caa-test:sycophancy"):
        evaluate(model, "caa:sycophancy", limit=2)


# ---------------------------------------------------------------- steering, KL, resume, compare
def test_steered_evaluation_and_kl(model, tmp_path):
    zero = {1: torch.zeros(model.hidden_size)}
    big = {1: torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(0)) * 20}
    plain = evaluate(model, "facts-ab", limit=8)
    same = evaluate(model, "facts-ab", limit=8, vector=zero, multiplier=3.0, layers="1")
    assert [r["margin"] for r in plain["facts-ab"].records] == pytest.approx([r["margin"] for r in same["facts-ab"].records], abs=1e-6)
    steered = evaluate(model, ["facts-ab", get_task("kl", data="honesty")], limit=8, vector=big, multiplier=1.0, layers="1")
    assert steered.steering["multiplier"] == 1.0 and steered.steering["layers"] == [1]
    assert [r["margin"] for r in plain["facts-ab"].records] != pytest.approx([r["margin"] for r in steered["facts-ab"].records], abs=1e-3)
    kl_data = {"data": "honesty"}
    assert evaluate(model, [get_task("kl", **kl_data)], limit=4)["kl"].value == pytest.approx(0.0, abs=1e-6)
    steered_kl = evaluate(model, [get_task("kl", **kl_data)], limit=4, vector=big, layers="1")["kl"]
    assert steered_kl.value > 1e-3
    # the hooks are gone afterwards
    again = evaluate(model, "facts-ab", limit=8)
    assert [r["margin"] for r in again["facts-ab"].records] == pytest.approx([r["margin"] for r in plain["facts-ab"].records], abs=1e-6)


def test_interrupted_eval_resumes(model, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    full = evaluate(model, "facts-ab", limit=12, batch_size=2)
    task = get_task("facts-ab")
    task.chunk_items = 4
    original = type(task).score
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(task), "score", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, [task], limit=12, batch_size=1, output=out)
    assert not out.exists()
    cache = out.with_name("res.json.partial") / "facts-ab.jsonl"
    assert len(cache.read_text().splitlines()) == 1 + 8
    from reptune.evaluation.runner import cached_items, resume_cache

    assert resume_cache(out) == cache.parent and cached_items(out) == 8  # what an interrupted `reptune eval` reports kept
    monkeypatch.setattr(type(task), "score", original)
    resumed = evaluate(model, "facts-ab", limit=12, batch_size=2, output=out)
    assert resumed["facts-ab"].resumed_items == 8
    assert [r["margin"] for r in resumed["facts-ab"].records] == pytest.approx([r["margin"] for r in full["facts-ab"].records], abs=1e-5)
    assert not cache.parent.exists()
    loaded = load_eval_results(out)
    assert loaded["facts-ab"].records == json.loads(out.read_text())["tasks"]["facts-ab"]["records"]
    assert loaded.seed == 0


def test_compare_paired(model, tmp_path):
    big = {1: torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(1)) * 30}
    a = evaluate(model, "facts-ab", limit=20, output=tmp_path / "a.json")
    b = evaluate(model, "facts-ab", limit=20, vector=big, layers="1", output=tmp_path / "b.json")
    rows = compare_results(tmp_path / "a.json", tmp_path / "b.json")
    row = rows[0]
    xs = [r["correct"] for r in a["facts-ab"].records]
    ys = [r["correct"] for r in b["facts-ab"].records]
    assert row["n"] == 20 and row["mcnemar"]["b"] == sum(x and not y for x, y in zip(xs, ys))
    assert row["mcnemar"]["c"] == sum(y and not x for x, y in zip(xs, ys))
    assert row["continuous"]["metric"] == "margin"
    same = compare_results(a, a)[0]
    assert same["mcnemar"]["pvalue"] == 1.0 and same["continuous"]["diff"] == 0.0


# ---------------------------------------------------------------- CLI
class Run:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err


@pytest.fixture()
def run(monkeypatch, capsys):
    monkeypatch.setenv("REPTUNE_DEBUG", "0")

    def invoke(*args):
        monkeypatch.setattr(sys, "argv", ["reptune", *map(str, args)])
        capsys.readouterr()
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return invoke


def one_error(result: Run) -> str:
    assert result.code == 2, result.err[-2000:]
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.err
    return lines[0]


def test_cli_eval_and_compare(run, tiny_dir, tmp_path, data_dir):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    result = run("eval", "--model", tiny_dir, "--tasks", "facts-ab,mmlu", "--limit", "6", "--precision", "fp32", "-o", a)
    assert result.code == 0, result.err
    data = json.loads(a.read_text())
    assert set(data["tasks"]) == {"facts-ab", "mmlu"} and len(data["tasks"]["mmlu"]["records"]) == 6
    assert "accuracy" in result.out
    result = run("eval", "--model", tiny_dir, "--tasks", "facts-ab,mmlu", "--limit", "6", "--precision", "fp32",
                 "--set", "mmlu.subjects=anatomy", "--data", "facts-ab=gpt4-facts", "-o", b)
    assert result.code == 0, result.err
    data = json.loads(b.read_text())
    assert {r["subject"] for r in data["tasks"]["mmlu"]["records"]} == {"anatomy"}
    assert data["tasks"]["facts-ab"]["data"].endswith("gpt4_facts.csv")
    result = run("compare", a, b, "-o", tmp_path / "cmp.json")
    assert result.code == 0, result.err
    assert "McNemar" in result.out and "facts-ab" in result.out
    assert json.loads((tmp_path / "cmp.json").read_text())["tasks"][0]["task"] == "facts-ab"


def test_cli_eval_bad_input(run, tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    line = one_error(run("eval", "--model", tiny_dir, "--tasks", "facts-ab,bogus", "-o", out))
    assert "unknown task 'bogus'" in line and "mmlu" in line and "caa:<behaviour>" in line
    line = one_error(run("eval", "--model", tiny_dir, "--tasks", "facts-ab", "--limit", "0", "-o", out))
    assert "--limit must be at least 1" in line
    monkeypatch.delenv("REPTUNE_DATA_DIR", raising=False)
    line = one_error(run("eval", "--model", tiny_dir, "--tasks", "mmlu", "-o", out))
    assert "REPTUNE_DATA_DIR" in line
    line = one_error(run("eval", "--model", tiny_dir, "--tasks", "facts-ab", "--set", "mmlu.subjects=x", "-o", out))
    assert "not in --tasks" in line
    line = one_error(run("eval", "--model", tiny_dir, "--tasks", "facts-ab", "--data", "missing.csv", "-o", out))
    assert "missing.csv" in line
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    line = one_error(run("compare", tmp_path / "nope.json", tmp_path / "nope2.json"))
    assert "not found" in line


@pytest.mark.real_model
def test_embedded_facts_ab_batched_equals_single(embedded):
    task = get_task("facts-ab")
    batched = task.run(embedded, limit=4, batch_size=4)
    single = task.run(embedded, limit=4, batch_size=1)
    assert [r["margin"] for r in batched.records] == pytest.approx([r["margin"] for r in single.records], abs=2e-3)
    assert batched.metrics["accuracy"]["n"] == 4


def test_standard_names_fall_back_to_the_hub_when_reachable(monkeypatch, tmp_path):
    from reptune.data import sources

    monkeypatch.setenv("REPTUNE_DATA_DIR", str(tmp_path))  # a data folder without the sets
    monkeypatch.setattr(sources, "_hub_reachable", lambda: True)
    assert sources.resolve_data("truthfulqa", "truthfulqa-mc") == "truthfulqa/truthful_qa"
    assert sources.resolve_data("mmlu", "mmlu") == "cais/mmlu"
    assert sources.resolve_data("wikitext2", "wikitext2") == "Salesforce/wikitext"
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text("local text\n")
    assert sources.resolve_data("wikitext2", "wikitext2") == tmp_path / "wikitext2" / "wiki.test.raw"  # local copy first
    monkeypatch.setattr(sources, "_hub_reachable", lambda: False)
    with pytest.raises(DataError, match="not found.*the hub is not reachable"):
        sources.resolve_data("mmlu", "mmlu")
    monkeypatch.delenv("REPTUNE_DATA_DIR")
    with pytest.raises(DataError, match=r"needs \$REPTUNE_DATA_DIR.*the hub is not reachable"):
        sources.resolve_data("truthfulqa", "truthfulqa-csv")
