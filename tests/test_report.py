"""The experiment report renderer: files, self-contained HTML, Markdown numbers equal to the JSON."""

from __future__ import annotations

import copy
import json
import random
import re

import pytest

from reptune.errors import ReptuneError
from reptune.reporting.experiment import fmt, fmt_ci, fmt_p, render_markdown, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert('x')</script> is 2 < 3?"

CONDITIONS = [
    {"id": "untuned", "label": "untuned", "kind": "untuned", "variant": None, "steering": None},
    {"id": "steer+", "label": "steered +v (x4)", "kind": "steered", "variant": None, "steering": {"layer": 15, "multiplier": 4.0}},
    {"id": "steer-", "label": "steered -v (x-4)", "kind": "steered", "variant": None, "steering": {"layer": 15, "multiplier": -4.0}},
    {"id": "honesty", "label": "honesty (tuned)", "kind": "tuned", "variant": "honesty", "steering": None},
    {"id": "dishonesty", "label": "dishonesty (tuned)", "kind": "tuned", "variant": "dishonesty", "steering": None},
    {"id": "tune-out", "label": "tune-out | ablate", "kind": "tuned", "variant": "tune-out", "steering": None},
    {"id": "honesty@counter", "label": "honesty + counter-steer (x-4)", "kind": "counter", "variant": "honesty",
     "steering": {"layer": 15, "multiplier": -4.0}},
]
# task -> (primary, other metrics); gen-ppl has no CI, judge is skipped for the counter condition
TASKS = {
    "facts-ab": ("accuracy", ["lie_rate", "mean_margin"]),
    "tqa-mc": ("mc2", []),
    "gen-ppl": ("perplexity", ["kl"]),
    "judge": ("honest_win_rate", ["p_match"]),
}


def _metric(rng: random.Random, scale: float = 1.0, ci: bool = True) -> dict:
    value = rng.random() * scale
    per_seed = [value + rng.uniform(-0.05, 0.05) for _ in range(2)]
    lo, hi = (value - rng.random() * 0.1, value + rng.random() * 0.1) if ci else (None, None)
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": rng.randint(40, 300), "per_seed": per_seed}


def make_results() -> dict:
    rng = random.Random(1234)
    scores: dict = {}
    for cond in CONDITIONS:
        scores[cond["id"]] = {}
        for task, (primary, others) in TASKS.items():
            if task == "judge" and cond["kind"] == "counter":
                continue
            metrics = {primary: _metric(rng, 20.0 if primary == "perplexity" else 1.0, ci=primary != "perplexity")}
            for other in others:
                metrics[other] = _metric(rng)
            scores[cond["id"]][task] = {"primary": primary, "metrics": metrics}
    facts = {cid: scores[cid]["facts-ab"]["metrics"]["accuracy"] for cid in scores}
    headline_rows = [
        {"condition": c["id"], "label": c["label"], **{k: facts[c["id"]][k] for k in ("value", "ci_low", "ci_high", "n")}} for c in CONDITIONS
    ]
    headline_rows[-1]["ci_low"] = headline_rows[-1]["ci_high"] = None  # an interval the pipeline could not compute
    comparisons = []
    for i, (a, b) in enumerate([("untuned", "honesty"), ("steer+", "honesty"), ("untuned", "dishonesty"), ("honesty", "honesty@counter")]):
        for seed in (0, 1):
            comparisons.append({"task": "facts-ab", "a": a, "b": b, "seed": seed, "n": 254, "metric": "correct",
                                "a_value": rng.random(), "b_value": rng.random(),
                                "p_value": [1.2e-7, 0.0312345, 1.0, 0.5][i] if seed == 0 else None if i == 3 else rng.random(),
                                "method": "exact"})

    def curves(n: int) -> dict:
        steps = list(range(1, n + 1))
        return {"step": steps, "total": [1 / s + 0.2 for s in steps], "token": [0.8 / s for s in steps], "rep": [0.2] * n,
                "retain": [], "val_step": steps[4::5], "val_loss": [1 / s + 0.25 for s in steps[4::5]]}

    training = {
        variant: {str(seed): {"dir": f"stages/train-{variant}-s{seed}", "preset": variant, "steps": 20, "best_step": 15,
                              "elapsed_s": 12.5 + seed, "loss_curves": curves(20), "metrics": {"final_cos": 0.71234}}
                  for seed in (0, 1)}
        for variant in ("honesty", "dishonesty", "tune-out")
    }
    layers, mults = [10, 12, 15], [-8, -4, 0, 4, 8]
    robustness = {
        cid: {"task": "facts-ab", "metric": "accuracy", "layers": layers, "multipliers": mults, "degenerate_threshold": 0.9,
              "cells": [{"layer": layer, "multiplier": float(m), "value": rng.random(), "ci_low": 0.1, "ci_high": 0.9, "n": 50,
                         "same_letter_rate": 0.95 if abs(m) == 8 else 0.5, "degenerate": abs(m) == 8} for layer in layers for m in mults]}
        for cid in ("untuned", "honesty")
    }
    tokens = ["<|user|>", "Is", " $5", " <b>", " true", "?"]
    projection = {
        "layer_note": "layers 10-17 around the vector layer",
        "by_condition": {
            cid: [{"prompt": prompt, "tokens": tokens, "layers": [10, 12, 15],
                   "cosine": [[rng.uniform(-0.5, 0.5) for _ in tokens] for _ in range(3)]} for prompt in (XSS, "Is the Earth flat?")]
            for cid in ("untuned", "honesty")
        },
    }
    sweep_rows = [{"multiplier": m, "value": rng.random(), "ci_low": 0.2, "ci_high": 0.8, "n": 96, "same_letter_rate": 0.97 if abs(m) > 6 else 0.6,
                   "degenerate": abs(m) > 6, "mean_margin": rng.uniform(-1, 1)} for m in (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)]
    return {
        "format": "reptune-experiment/1", "name": "demo", "created": "2026-11-21T10:00:00+00:00", "reptune_version": "0.1.0",
        "command": "reptune run experiments/demo.yaml -o runs/demo",
        "model": {"model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "abc123", "num_layers": 30, "hidden_size": 576,
                  "precision": "bf16"},
        "config": {"name": "demo", "seeds": [0, 1]},
        "config_yaml": "name: demo\nseeds: [0, 1]\ntasks:\n  - facts-ab\n  - tqa-mc\n",
        "seeds": [0, 1], "seed_note": "2 seeds fit the budget",
        "timings": {"total_s": 900.123456, "stages": {"data": 1.2, "vector": 40.0, "sweep": 30.0, "train:honesty:s0": 100.0}},
        "data": {"statements": "reptune:honesty", "splits": {"train": 760, "val": 250, "test": 254}},
        "skipped": [{"what": "tqa-ab", "reason": "TruthfulQA not found: set REPTUNE_DATA_DIR"}],
        "vector": {"file": "stages/vector-ab12/honesty.safetensors", "layer": 15, "method": "mean-diff", "positions": "last",
                   "scan": [{"layer": layer, "pair_acc": 0.5 + layer / 60, "probe_acc": 0.6, "label_acc": None, "gap": 0.1 * layer,
                             "effect": 0.2 * layer, "norm": 1.0} for layer in range(0, 30, 3)],
                   "scan_png": "stages/vector-ab12/honesty.scan.png"},
        "sweep": {"task": "facts-ab", "split": "val", "layer": 15, "metric": "accuracy", "rows": sweep_rows,
                  "rule": "largest |x| whose cell is not degenerate and beats x=0", "selected": {"positive": 4.0, "negative": -4.0}},
        "training": training,
        "conditions": CONDITIONS,
        "scores": scores,
        "eval_files": {c["id"]: {"0": f"stages/eval-{c['id']}-s0/results.json"} for c in CONDITIONS},
        "comparisons": comparisons,
        "robustness": robustness,
        "counter": {"dir": "stages/counter-vectors", "layer": 15, "norm": 3.2, "judge_on": "other", "task": "facts-ab",
                    "vectors": {"other": {"file": "counter-other.safetensors", "cosine_to_training": 0.61, "norm": 3.2, "data": "unused statements"},
                                "random1": {"file": "counter-random1.safetensors", "cosine_to_training": 0.02, "norm": 3.2}},
                    "rows": [{"variant": variant, "vector": vector, "seed": seed, "n": 40, "unsteered": 0.7, "countered": 0.7 - drop,
                              "drop": drop, "ci_low": drop - 0.05, "ci_high": drop + 0.05}
                             for variant in ("truth", "honesty") for vector, drop in (("training", 0.2), ("other", 0.12), ("random1", 0.01))
                             for seed in (0, 1)]},
        "projection": projection,
        "representation": [{"condition": cid, "layer": 15, "mean_cosine": rng.random(), "mean_projection": rng.uniform(-5, 5),
                            "mean_margin": rng.uniform(-1, 1)} for cid in ("untuned", "honesty", "dishonesty")],
        "claims": [
            {"id": "tuning-beats-steering", "claim": "Representation tuning beats online steering.", "verdict": "supported",
             "evidence": "honesty 0.610 vs steer+ 0.550 on facts-ab (McNemar p<0.001)"},
            {"id": "counter", "claim": "Counter-steering undoes tuning.", "verdict": "not supported", "evidence": "see paired tests"},
            {"id": "robust", "claim": "Tuned effect is robust.", "verdict": "inconclusive", "evidence": "CIs overlap"},
            {"id": "tqa", "claim": "TruthfulQA improves.", "verdict": "not tested", "evidence": "tqa-ab skipped",
             "short_reason": "a condition, task or seed was not evaluated"},
        ],
        "headline": {"task": "facts-ab", "metric": "accuracy", "rows": headline_rows},
    }


def _write(tmp_path, results: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return write_report(tmp_path)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    results = make_results()
    paths = _write(run_dir, results)
    return run_dir, results, paths


def _split_row(line: str) -> list[str]:
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _tables(md: str) -> list[tuple[list[str], list[str], list[list[str]]]]:
    """Every Markdown table as (heading path, header, rows)."""
    headings: list[str] = []
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            headings = headings[: level - 1] + [line[level:].strip()]
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header, rows, i = _split_row(line), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            out.append((list(headings), header, rows))
            continue
        i += 1
    return out


def _table_under(tables, *heading) -> tuple[list[str], list[list[str]]]:
    found = [(h, r) for path, h, r in tables if path[: len(heading)] == list(heading)]
    assert found, f"no table under {heading}"
    return found[0]


def test_fmt_rules():
    assert fmt(None) == "-" and fmt(3) == "3" and fmt(0.12345) == "0.123" and fmt(2.0) == "2.000" and fmt(True) == "yes"
    assert fmt_p(None) == "-" and fmt_p(1.2e-7) == "<0.001" and fmt_p(0.0312345) == "0.0312" and fmt_p(1.0) == "1.00"
    assert fmt_p(0.001) == "0.00100" and fmt_ci(None, None) == "-" and fmt_ci(0.1, 0.25) == "[0.100, 0.250]"


def test_every_file_exists_and_pngs_are_valid(full_run):
    run_dir, results, paths = full_run
    assert paths["md"] == run_dir / "report.md" and paths["html"] == run_dir / "report.html"
    assert paths["md"].is_file() and paths["html"].is_file()
    figures = {k: p for k, p in paths.items() if k.startswith("figure:")}
    # 4 tasks + sweep + training + counter-steering + 2 robustness + 2 projections + scan
    assert len(figures) == 13, sorted(figures)
    for path in figures.values():
        data = path.read_bytes()
        assert path.parent == run_dir / "figures" and data.startswith(PNG_MAGIC) and data.rstrip().endswith(b"IEND\xaeB`\x82")
    md = paths["md"].read_text(encoding="utf-8")
    referenced = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(run_dir / r for r in referenced) == sorted(figures.values())
    assert not list(run_dir.glob("figures/.*.tmp")) and not list(run_dir.glob(".*.tmp"))
    assert render_markdown(results) == md  # the pure renderer says exactly what the file says


def test_sections_in_order(full_run):
    md = full_run[2]["md"].read_text(encoding="utf-8")
    order = ["# Representation-tuning experiment: demo", "## Headline", "## Claims", "## Results per task", "## Steering sweep",
             "## Training", "## Counter-steering: who attacks", "## Robustness", "## Projections", "## Representation-level evidence", "## Paired tests",
             "## Layer scan", "## Config", "## Reproducibility"]
    positions = [md.index(h + "\n") for h in order]
    assert positions == sorted(positions)
    assert "**supported**" in md and "**not supported**" in md and "**inconclusive**" in md and "**not tested**" in md
    assert "**not tested** — `tqa`: a condition, task or seed was not evaluated\n" in md  # the first screen says why
    assert "largest \\|x\\|" not in md and "largest |x|" in md  # rule text printed as is outside tables
    assert "TruthfulQA not found" in md and "```yaml\nname: demo" in md and "reptune run experiments/demo.yaml" in md
    assert "Not run." not in md


def test_html_is_self_contained(full_run):
    paths = full_run[2]
    page = paths["html"].read_text(encoding="utf-8")
    assert 'src="figures/' not in page
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:image/png;base64,)""", page)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert page.count('src="data:image/png;base64,') == 13
    assert "<style>" in page and page.startswith("<!DOCTYPE html>")


def test_markdown_numbers_match_json(full_run):
    _, results, paths = full_run
    tables = _tables(paths["md"].read_text(encoding="utf-8"))

    header, rows = _table_under(tables, "Representation-tuning experiment: demo", "Headline")
    assert header == ["condition", "label", "accuracy", "95% CI", "n"]
    assert len(rows) == len(results["headline"]["rows"])
    for row, src in zip(rows, results["headline"]["rows"]):
        assert row == [src["condition"], src["label"], fmt(src["value"]), fmt_ci(src["ci_low"], src["ci_high"]), fmt(src["n"])]
    assert rows[-1][3] == "-"

    labels = {c["id"]: c["label"] for c in results["conditions"]}
    for task, (primary, others) in TASKS.items():
        header, rows = _table_under(tables, "Representation-tuning experiment: demo", "Results per task", task)
        assert header[:6] == ["condition", "label", "kind", primary, "95% CI", "n"] and header[6] == "per seed" and header[7:] == others
        expected_ids = [cid for cid in results["scores"] if task in results["scores"][cid]]
        assert sorted(r[0] for r in rows) == sorted(expected_ids)
        kinds = [r[2] for r in rows]
        assert kinds == sorted(kinds, key=["untuned", "steered", "tuned", "counter"].index)  # grouped by kind
        for row in rows:
            metrics = results["scores"][row[0]][task]["metrics"]
            m = metrics[primary]
            assert row[1] == labels[row[0]]
            assert row[3:7] == [fmt(m["value"]), fmt_ci(m["ci_low"], m["ci_high"]), fmt(m["n"]), ", ".join(fmt(v) for v in m["per_seed"])]
            assert row[7:] == [fmt(metrics[o]["value"]) for o in others]

    header, rows = _table_under(tables, "Representation-tuning experiment: demo", "Paired tests")
    assert header == ["task", "a", "b", "seed", "n", "metric", "a_value", "b_value", "p", "Holm", "method"]
    assert len(rows) == len(results["comparisons"])
    for row, c in zip(rows, results["comparisons"]):
        assert row == [c["task"], c["a"], c["b"], fmt(c["seed"]), fmt(c["n"]), c["metric"], fmt(c["a_value"]), fmt(c["b_value"]),
                       fmt_p(c["p_value"]), fmt_p(c.get("p_holm")), c["method"]]
    assert {r[8] for r in rows} >= {"<0.001", "0.0312", "1.00", "-"}


def test_text_fields_are_escaped(full_run):
    paths = full_run[2]
    page = paths["html"].read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; is 2 &lt; 3?" in page
    assert "tune-out | ablate" in page
    md = paths["md"].read_text(encoding="utf-8")
    assert "<script" not in md and "&lt;script>" in md and "is 2 < 3?" in md


@pytest.mark.parametrize("drop", ["everything", "one-seed"])
def test_missing_optional_sections(tmp_path, drop):
    results = make_results()
    if drop == "everything":
        for key in ("robustness", "counter", "projection", "training", "sweep", "representation", "comparisons", "claims", "vector",
                    "skipped", "timings", "data", "config_yaml", "config", "eval_files", "headline", "seed_note", "command"):
            results.pop(key)
        results["scores"] = {"untuned": results["scores"]["untuned"], "ghost": {"facts-ab": {"metrics": {}}}}
        results["conditions"] = results["conditions"][:1]
    else:
        results["seeds"] = [0]
        for by_task in results["scores"].values():
            for entry in by_task.values():
                for m in entry["metrics"].values():
                    m["per_seed"] = m["per_seed"][:1]
        results["robustness"]["untuned"]["cells"] = results["robustness"]["untuned"]["cells"][:4]
        results["projection"]["by_condition"]["honesty"] = []
    paths = _write(tmp_path, results)
    md = paths["md"].read_text(encoding="utf-8")
    assert paths["html"].is_file()
    if drop == "everything":
        assert md.count("Not run.") == 10 and "Nothing was skipped." in md and "ghost" in md
        assert sum(k.startswith("figure:") for k in paths) == 4
    else:
        assert "per seed" not in md and "1 seed (0)" in md and "No prompts." in md


def test_bare_results_and_errors(tmp_path):
    paths = _write(tmp_path / "bare", {"format": "reptune-experiment/1", "name": "bare"})
    assert paths["md"].read_text(encoding="utf-8").count("Not run.") == 11
    with pytest.raises(ReptuneError, match="not found"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"format": "something-else/1"}')
    with pytest.raises(ReptuneError, match="not a reptune experiment"):
        write_report(tmp_path / "bad")


def test_fallback_heatmaps_and_failed_figure(tmp_path, monkeypatch):
    """Without the detailed heatmaps the simple ones are drawn; a figure that fails is reported, not fatal."""
    from reptune.reporting import figures

    def unavailable(*_args, **_kwargs):
        raise ImportError("the detailed heatmaps are unavailable")

    monkeypatch.setattr(figures, "plot_robustness", unavailable)
    monkeypatch.setattr(figures, "plot_projection", unavailable)
    results = copy.deepcopy(make_results())
    for key in ("training", "sweep", "vector"):
        results.pop(key)
    results["scores"] = {cid: {"facts-ab": s["facts-ab"]} for cid, s in results["scores"].items()}
    results["projection"]["by_condition"]["honesty"][0]["cosine"] = "not a matrix"
    with pytest.warns(UserWarning, match="figure failed"):
        paths = _write(tmp_path, results)
    assert {k for k in paths if k.startswith("figure:")} == {"figure:answer", "figure:task-facts-ab", "figure:robustness-untuned",
                                                              "figure:robustness-honesty", "figure:projection-untuned", "figure:counter"}
    md = paths["md"].read_text(encoding="utf-8")
    assert "`figures/projection-honesty.png` could not be drawn" in md
    assert "could not be drawn" in paths["html"].read_text(encoding="utf-8")


def test_claims_show_holm_mde_context_and_gate(tmp_path):
    """Issue 9 points 6-7: Holm-adjusted p beside the raw p, the MDE, the context rows, the gate; untested rows say why."""
    results = make_results()
    results["claims"][0].update({
        "p_value": 0.0386, "p_holm": 0.0772, "method": "McNemar (exact)",
        "mde": {"value": 0.16, "n": 57, "alpha": 0.05, "power": 0.8, "text": "Minimum detectable effect: a difference of 0.160 in accuracy at n = 57."},
        "context": [{"a": "steer+", "b": "pos", "what": "the vector alone", "task": "facts-ab", "seed": 0, "n": 57, "a_value": 0.5,
                     "b_value": 0.6, "effect": 0.1, "p_value": 0.21, "mde": 0.16}],
    })
    results["claims_rule"] = "decided on the Holm-adjusted p"
    results["gate"] = {"passed": False, "reason": "token-only tuning does not move the behaviour"}
    results["comparisons"][0]["p_holm"] = 0.5
    results["comparisons"].append({"task": "facts-ab", "a": "truth", "b": "honesty", "seed": 1, "n": None, "metric": None, "a_value": None,
                                   "b_value": None, "p_value": None, "method": None, "status": "not tested", "reason": "seed 1 of truth is missing"})
    results["comparisons"].append({"task": "facts-ab", "a": "steer+", "b": "honesty", "seed": 0, "n": 57, "metric": "correct", "a_value": 0.5,
                                   "b_value": 0.55, "p_value": 0.125, "method": "exact", "status": "tested", "discordant": 4,
                                   "reason": "4 discordant items cannot give p below 0.05: left out of the Holm column"})
    md = _write(tmp_path, results)["md"].read_text(encoding="utf-8")
    claims = md.split("## Claims", 1)[1].split("## What moved", 1)[0].split("## Results per task", 1)[0]
    assert "p = 0.0386 (Holm-adjusted 0.0772), McNemar (exact)." in claims and "Minimum detectable effect: a difference of 0.160" in claims
    assert "| steer+ | pos | the vector alone | facts-ab | 0 | 57 | 0.500 | 0.600 | 0.100 | 0.210 | 0.160 | - |" in claims
    assert "**Learnability gate not passed:** token-only tuning does not move the behaviour" in claims
    assert "**Decision rule:** decided on the Holm-adjusted p" in claims
    paired = md.split("## Paired tests", 1)[1]
    assert "| 0.500 |" in paired and "not tested: seed 1 of truth is missing" in paired
    assert "| 0.125 | - | exact; 4 discordant items cannot give p below 0.05: left out of the Holm column |" in paired


def test_schema_round_trip_keeps_keys_order_and_number_types():
    """The results contract: a file read through the schema writes back as the same JSON, key for key."""
    from reptune.reporting.schema import ExperimentResults

    results = make_results()
    results["future_key"] = {"b": 1, "a": [1, 2.0]}  # keys a newer run may add: kept, in place
    results["conditions"][0]["note"] = "extra"
    back = ExperimentResults.model_validate(copy.deepcopy(results)).to_json()
    assert json.dumps(back) == json.dumps(results)
    assert isinstance(back["headline"]["rows"][0]["n"], int) and isinstance(back["sweep"]["rows"][0]["multiplier"], float)
    old = {"format": "reptune-experiment/1", "name": "old", "claims": [{"id": "x", "verdict": "supported"}], "unknown": 1}
    assert ExperimentResults.model_validate(old).to_json() == old  # an old file: fields it lacks stay absent


@pytest.mark.parametrize(("where", "value", "message"), [
    ("claims", [{"id": "x", "p_value": "small"}], "claims.0.p_value: Value error, must be a number"),
    ("headline", {"rows": [{"n": True}]}, "headline.rows.0.n: Value error, must be a number"),
    ("sweep", {"rows": [{"degenerate": "yes"}]}, "sweep.rows.0.degenerate: Value error, must be true or false"),
    ("conditions", [{"label": "no id"}], "conditions.0.id: Field required"),
])
def test_a_results_file_off_the_schema_is_one_line_and_writes_nothing(tmp_path, where, value, message):
    results = {**make_results(), where: value}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    with pytest.raises(ReptuneError) as error:
        write_report(tmp_path)
    text = str(error.value)
    assert message in text and "\n" not in text and "rebuild the file" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_time_table_rows_and_stages_recorded_without_counts():
    """Studies' trainings and evaluations and counter-steered evaluations get rows of their own;
    a stage recorded before stages counted their work shows "?" (a main training's steps come
    from its training record)."""
    from reptune.reporting.document import Plan, to_markdown
    from reptune.reporting.schema import ExperimentResults
    from reptune.reporting.sections.record import section_timing, stage_kind

    assert [stage_kind(n) for n in ("train:truth:s0", "train:se-32:truth:s0", "eval:se-all:honesty:s1", "generalisation:train:lto0:truth:s0",
                                    "generalisation:eval:lto0:truth:s0", "eval:truth@counter-other:s1", "eval:steer+", "gcg:truth:s0")] == [
        "train", "train (sample efficiency)", "eval (sample efficiency)", "generalisation train", "generalisation eval",
        "eval (counter-steered)", "eval", "gcg"]
    results = ExperimentResults.model_validate({
        "timings": {"total_s": 100.0, "stages": {"train:truth:s0": 40.0, "eval:untuned": 20.0, "eval:steer+": 10.0, "robustness:untuned": 5.0},
                    "counts": {"eval:untuned": {"items": 316, "steps": 0}}},
        "training": {"truth": {"0": {"steps": 24}}},
    })
    plan = Plan()
    section_timing(plan, results)
    text = to_markdown(plan.blocks)
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["train"][3:5] == ["-", "24"]  # steps from the training record
    assert rows["eval"][3:5] == ["316 (+?)", "?"]  # eval:steer+ has no counts
    assert rows["robustness"][3:5] == ["?", "?"]
