"""lm-eval:<task> on a tiny model, offline, with a local task YAML and a local JSONL data set."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from conftest import build_model

pytest.importorskip("lm_eval")

from reptune.errors import ReptuneError
from reptune.evaluation import available_tasks, evaluate, get_task
from reptune.evaluation.robustness import run_robustness
from reptune.steering import steer

DOCS = [
    {"question": "What colour is the sky?", "choices": ["blue", "green"], "label": 0},
    {"question": "What colour is grass?", "choices": ["blue", "green"], "label": 1},
    {"question": "Is water wet?", "choices": ["yes", "no"], "label": 0},
    {"question": "Two plus two?", "choices": ["four", "five", "six"], "label": 0},
    {"question": "Are cats mammals?", "choices": ["no", "yes"], "label": 1},
    {"question": "Where is Paris?", "choices": ["France", "Spain", "the moon"], "label": 0},
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    data = folder / "tinyqa.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS), encoding="utf-8")
    (folder / "tinyqa.yaml").write_text(
        "task: tinyqa\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    return folder


def choice_logprobs(handle, doc):
    """Summed log-prob of " choice" after the question, tokenised as lm-eval does (whole string, then split)."""
    context = f"Question: {doc['question']}\nAnswer:"
    out = []
    for choice in doc["choices"]:
        whole = handle.tokenizer(context + " " + choice)["input_ids"]
        n_context = len(handle.tokenizer(context)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(handle.model(torch.tensor([whole])).logits[0].double(), -1)
        out.append(sum(float(logp[p - 1, whole[p]]) for p in range(n_context, len(whole))))
    return out


def test_accuracy_matches_independent_logprobs(task_dir):
    handle = build_model("llama")
    result = get_task("lm-eval:tinyqa", include_path=str(task_dir)).run(handle, batch_size=4)
    assert [r["id"] for r in result.records] == [str(i) for i in range(len(DOCS))]
    hits = []
    for doc, record in zip(DOCS, result.records):
        expected = choice_logprobs(handle, doc)
        assert record["logprobs"] == pytest.approx(expected, abs=1e-4)
        best = max(range(len(expected)), key=expected.__getitem__)
        assert record["choice"] == best and record["answer"] == "ABC"[best]
        assert record["correct"] == (best == doc["label"]) == bool(record["acc"])
        assert record["target"] == doc["label"]
        hits.append(best == doc["label"])
    acc = result.metrics["acc"]
    n = len(hits)
    mean = sum(hits) / n
    stderr = math.sqrt(sum((h - mean) ** 2 for h in hits) / (n - 1) / n)
    assert result.primary == "acc" and acc["value"] == pytest.approx(mean) and acc["n"] == n
    assert acc["stderr"] == pytest.approx(stderr) and acc["ci"] == "normal-stderr"
    assert acc["ci_low"] == pytest.approx(mean - 1.959964 * stderr) and acc["ci_high"] == pytest.approx(mean + 1.959964 * stderr)
    assert result.binary_key == "correct"
    limited = get_task("lm-eval:tinyqa", include_path=str(task_dir)).run(handle, limit=2)
    assert [r["id"] for r in limited.records] == ["0", "1"]
    assert [lp for r in limited.records for lp in r["logprobs"]] == pytest.approx([lp for r in result.records[:2] for lp in r["logprobs"]], abs=1e-5)


def test_steering_hooks_apply(task_dir):
    handle = build_model("llama")
    vector = {1: torch.randn(handle.hidden_size, generator=torch.Generator().manual_seed(0)) * 20}
    task = get_task("lm-eval:tinyqa", include_path=str(task_dir))
    steered = evaluate(handle, [task], vector=vector, layers="1", multiplier=1.0, limit=3)["lm-eval:tinyqa"]
    with steer(handle, vector, multiplier=1.0):
        expected = [choice_logprobs(handle, doc) for doc in DOCS[:3]]
    got = [lp for r in steered.records for lp in r["logprobs"]]
    assert got == pytest.approx([lp for row in expected for lp in row], abs=1e-4)
    plain = [choice_logprobs(handle, doc) for doc in DOCS[:3]]  # the hooks are gone afterwards
    assert got != pytest.approx([lp for row in plain for lp in row], abs=1e-2)
    # an lm-eval task inside a robustness grid: letters from the multiple-choice answers
    grid = run_robustness(handle, vector, task, [1], [0, 1], limit=3, batch_size=4)
    assert [c.n for c in grid.cells] == [3, 3] and all(c.same_letter_rate is not None for c in grid.cells)
    steered_cell = grid.task_results[(1, 1.0)]
    assert [lp for r in steered_cell.records for lp in r["logprobs"]] == pytest.approx(got, abs=1e-4)


def test_registry_and_errors(task_dir, monkeypatch):
    assert "lm-eval:<task>" in available_tasks()
    with pytest.raises(ReptuneError, match="needs a parameter"):
        get_task("lm-eval")
    with pytest.raises(ReptuneError, match="include_path is not a folder"):
        get_task("lm-eval:tinyqa", include_path=str(task_dir / "nope"))
    with pytest.raises(ReptuneError, match="no metric 'bleu'"):
        get_task("lm-eval:tinyqa", include_path=str(task_dir), metric="bleu").load_items(build_model("llama"), None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "lm_eval" else real(name, *args))
    with pytest.raises(ReptuneError, match=r"pip install 'reptune\[lmeval\]'"):
        get_task("lm-eval:tinyqa")


def test_cli_lm_eval(tiny_dir, task_dir, tmp_path, cli_run):
    out = tmp_path / "res.json"
    result = cli_run("eval", "--model", tiny_dir, "--tasks", "lm-eval:tinyqa", "--set", f"lm-eval:tinyqa.include_path={task_dir}", "--limit", "4", "-o", out)  # bf16
    assert result.code == 0, result.err
    data = json.loads(out.read_text())["tasks"]["lm-eval:tinyqa"]
    assert len(data["records"]) == 4 and 0.0 <= data["metrics"]["acc"]["value"] <= 1.0
    assert data["data"].startswith("lm-eval:tinyqa")
