"""Fair counter-steering (issue 12, part 2): vectors the tuned models were not trained on, and the claim judged on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reptune.data.pairs import Statement, honesty_pairs
from reptune.errors import ReptuneError
from reptune.evaluation.registry import TaskResult
from reptune.evaluation.runner import EvalResults
from reptune.pipeline.claims import judge
from reptune.pipeline.config import parse_config
from reptune.pipeline.counter import counter_rows, persona_pairs, random_directions, rescaled, used_statements


def twins(correct: list[bool]) -> TaskResult:
    """facts-twin-like records: which twin was preferred, and whether it was the true one."""
    records = [{"id": f"p{i}", "twin": "true" if ok else "false", "correct": ok, "margin": 1.0 if ok else -1.0} for i, ok in enumerate(correct)]
    return TaskResult(task="facts-twin", metrics={"accuracy": {"value": float(np.mean(correct))}}, records=records, primary="accuracy", binary_key="correct")


def loaded(levels: dict[str, list[bool]], seeds=(0,)) -> dict[str, dict[str, EvalResults]]:
    return {cond: {str(s): EvalResults(tasks={"facts-twin": twins(ok)}, seed=s) for s in seeds} for cond, ok in levels.items()}


def flips(n: int, wrong: int, seed: int = 0) -> list[bool]:
    """n items, the first ``wrong`` of a seeded permutation wrong (not degenerate: both twins appear)."""
    order = np.random.default_rng(seed).permutation(n)
    return [bool(order[i] >= wrong) for i in range(n)]


def resists(claims: list[dict]) -> dict:
    return next(c for c in claims if c["id"] == "resists-counter-steering")


def scenario(truth_other_wrong: int, honesty_other_wrong: int, truth_random_wrong: int, n: int = 200) -> dict[str, dict[str, EvalResults]]:
    """truth and honesty right on 180 of n; each counter condition makes more of them wrong."""
    base = flips(n, 20, seed=1)
    worse = lambda extra, seed: [ok and flag for ok, flag in zip(base, flips(n, extra, seed))]
    return loaded({
        "truth": base, "honesty": base,
        "truth@counter": worse(60, 2), "honesty@counter": worse(5, 3),  # the training vector: honesty barely drops (it was tuned towards it)
        "truth@counter-other": worse(truth_other_wrong, 4), "honesty@counter-other": worse(honesty_other_wrong, 5),
        "truth@counter-random1": worse(truth_random_wrong, 6), "honesty@counter-random1": worse(truth_random_wrong, 7),
    })


def test_judged_on_the_other_vector_not_the_training_one():
    # with the training vector honesty resists (60 vs 5 flips); with the other vector both drop alike
    claims = judge(scenario(40, 40, 4), headline_task="facts-twin", counter_judge="other")
    claim = resists(claims)
    assert claim["judged_on"] == "other" and claim["verdict"] in ("inconclusive", "not supported")
    assert "the other-data vector" in claim["evidence"] and "random floor" in claim["evidence"]
    # the paper's test is context, and there it would have looked like resistance
    paper = [row for row in claim["context"] if row["a"] == "truth@counter"]
    assert paper and paper[0]["effect"] > 0.2 and paper[0]["p_value"] < 0.001
    assert any(row["a"] == "truth@counter-random1" for row in claim["context"])
    # judged on the training vector (the paper's setting), the same data supports the claim
    assert resists(judge(scenario(40, 40, 4), headline_task="facts-twin", counter_judge="training"))["verdict"] == "supported"


def test_other_vector_resisted_is_supported_and_the_floor_is_recorded():
    claim = resists(judge(scenario(50, 5, 3), headline_task="facts-twin", counter_judge="other"))
    assert claim["verdict"] == "supported", claim["evidence"]
    floor = claim["floor"][0]
    assert floor["drop"] == pytest.approx(0.25, abs=0.02) and floor["bite"] > 0.2 and floor["ci_low"] > 0


def test_an_attack_no_stronger_than_random_directions_is_not_tested():
    claim = resists(judge(scenario(6, 1, 30), headline_task="facts-twin", counter_judge="other"))
    assert claim["verdict"] == "not tested"
    assert "does not lower truth more than norm-matched random directions" in claim["reason"]
    assert claim["tests"], "still measured: the paired test and its power are shown"


def test_the_other_vector_must_exist_for_every_seed():
    data = scenario(50, 5, 3)
    for cond in ("truth@counter-other", "honesty@counter-other"):
        data[cond] = {"0": data[cond]["0"]}
    for cond in ("truth", "honesty"):
        data[cond]["1"] = data[cond]["0"]
    claim = resists(judge(data, seeds=[0, 1], headline_task="facts-twin", counter_judge="other"))
    assert claim["verdict"] == "not tested" and "seed 1 of honesty@counter-other is missing" in claim["reason"]


def test_counter_rows_are_paired_drops():
    data = scenario(50, 5, 3)
    rows = counter_rows(data, "facts-twin", ["training", "other", "random1"])
    assert [(r["variant"], r["vector"]) for r in rows] == [(v, w) for v in ("honesty", "truth") for w in ("training", "other", "random1")]
    truth_other = next(r for r in rows if r["variant"] == "truth" and r["vector"] == "other")
    assert truth_other["drop"] == pytest.approx(truth_other["unsteered"] - truth_other["countered"])
    assert truth_other["ci_low"] < truth_other["drop"] < truth_other["ci_high"] and truth_other["n"] == 200


def test_random_directions_are_norm_matched_seeded_and_spread():
    a = random_directions(64, 3, 2.5, seed=7)
    b = random_directions(64, 3, 2.5, seed=7)
    c = random_directions(64, 3, 2.5, seed=8)
    assert all(float(v.norm()) == pytest.approx(2.5, rel=1e-6) for v in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    cos = torch.nn.functional.cosine_similarity(a[0], a[1], dim=0)
    assert abs(float(cos)) < 0.5
    assert float(rescaled(torch.tensor([3.0, 4.0]), 1.0).norm()) == pytest.approx(1.0)
    with pytest.raises(ReptuneError, match="zero or non-finite"):
        rescaled(torch.zeros(4), 1.0)


def test_other_pairs_use_the_statements_the_main_vector_did_not():
    statements = [Statement(f"Fact number {i} holds.", i % 2) for i in range(20)]
    main = honesty_pairs(statements[:8])
    used = used_statements(main)
    assert used == {s.text for s in statements[:8]}
    pairs, note = persona_pairs(statements, used, None, "Always truthful.", "Always lying.", limit=5)
    assert len(pairs) == 5 and not {p.meta["statement"] for p in pairs} & used and note.startswith("12 train statements")
    assert pairs[0].positive.prompt.startswith("Always truthful.") and pairs[0].negative.prompt.startswith("Always lying.")
    # too few unused statements: all of them, said so
    pairs, note = persona_pairs(statements[:10], {s.text for s in statements[:8]}, None, "T", "L", limit=None)
    assert len(pairs) == 10 and "too few unused" in note


@pytest.mark.parametrize("bad, message", [
    ({"counter": {"other": False}}, "judge_on: other needs other: true"),
    ({"counter": {"random": -1}}, "counter.random"),
    ({"counter": {"judge_on": "random"}}, "counter.judge_on"),
    ({"counter": {"honest_persona": "  "}}, "must not be empty"),
    ({"counter": {"pairs_limit": 2}}, "counter.pairs_limit"),
])
def test_bad_counter_config_is_one_line(bad, message):
    with pytest.raises(ReptuneError, match=message) as info:
        parse_config(bad)
    assert "\n" not in str(info.value)
