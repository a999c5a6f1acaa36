"""The claims judge (issue 9, points 4-7): paired tests on per-item records, Holm, degeneracy, seeds, MDE, gate."""

from __future__ import annotations

import numpy as np
import pytest

from reptune.evaluation.registry import TaskResult
from reptune.evaluation.runner import EvalResults
from reptune.evaluation.statistics import holm_adjust, mcnemar_mde
from reptune.pipeline.analysis import judge_claims, paired_tests
from reptune.pipeline.claims import chosen_option, claim_spec, degeneracy, judge, new_problems
from reptune.pipeline.config import ClaimThresholds

THRESHOLDS = ClaimThresholds()


def pair(both: int, only_a: int, only_b: int, neither: int, seed: int = 0) -> tuple[list[bool], list[bool]]:
    """Two aligned correctness lists with the given 2x2 counts, items shuffled (seeded)."""
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    order = np.random.default_rng(seed).permutation(len(a))
    return [a[i] for i in order], [b[i] for i in order]


def ab(correct: list[bool], *, task: str = "facts-ab", always: str | None = None) -> TaskResult:
    """facts-ab-like records: gold letters alternate, labels alternate in pairs; ``always``: one option text."""
    records = []
    for i, ok in enumerate(correct):
        gold, label = "AB"[i % 2], (i // 2) % 2
        if always is not None:  # the option text `always` ("True"/"False") at whichever letter carries it
            true_letter = gold if label else "BA"["AB".index(gold)]
            answer = true_letter if always == "True" else "BA"["AB".index(true_letter)]
            ok = answer == gold
        else:
            answer = gold if ok else "BA"["AB".index(gold)]
        records.append({"id": str(i), "gold": gold, "answer": answer, "label": label, "correct": ok})
    return TaskResult(task=task, metrics={"accuracy": {"value": sum(r["correct"] for r in records) / len(records)}},
                      records=records, primary="accuracy", binary_key="correct")


def mmlu(correct: list[bool]) -> TaskResult:
    records = [{"id": str(i), "gold": "ABCD"[i % 4], "answer": "ABCD"[i % 4] if ok else "ABCD"[(i + 1) % 4], "correct": ok}
               for i, ok in enumerate(correct)]
    return TaskResult(task="mmlu", metrics={}, records=records, primary="accuracy", binary_key="correct")


def ppl(nll_per_token: list[float], tokens: int = 256) -> TaskResult:
    records = [{"id": f"w{i}", "nll": v * tokens, "n_tokens": tokens} for i, v in enumerate(nll_per_token)]
    return TaskResult(task="perplexity", metrics={}, records=records, primary="perplexity")


def run(by_cond: dict[str, dict[str, TaskResult]], seeds: tuple[int, ...] = (0,)) -> dict[str, dict[str, EvalResults]]:
    """``{cond: {task: result}}`` -> loaded; tuned conditions get every seed unless ``cond#seed`` keys are used."""
    loaded: dict[str, dict[str, EvalResults]] = {}
    for key, tasks in by_cond.items():
        cond, _, only = key.partition("#")
        cond_seeds = [int(only)] if only else ([seeds[0]] if cond in ("untuned", "steer+", "steer-") else list(seeds))
        for seed in cond_seeds:
            loaded.setdefault(cond, {})[str(seed)] = EvalResults(tasks=dict(tasks), seed=seed)
    return loaded


def claim(claims: list[dict], cid: str) -> dict:
    return next(c for c in claims if c["id"] == cid)


# ------------------------------------------------------------------ point 4: non-inferiority


def _capability_run(mmlu_counts, ppl_shift: float, windows: int = 60, seed: int = 0) -> dict:
    base_m, tuned_m = pair(*mmlu_counts, seed=seed)
    rng = np.random.default_rng(seed)
    base_nll = list(rng.normal(3.0, 0.4, size=windows))
    tuned_nll = [v + ppl_shift + rng.normal(0, 0.005) for v in base_nll]
    return run({"untuned": {"mmlu": mmlu(base_m), "perplexity": ppl(base_nll)}, "honesty": {"mmlu": mmlu(tuned_m), "perplexity": ppl(tuned_nll)}})


def test_capability_cost_needs_the_upper_bound_not_the_point_estimate():
    # no MMLU drop at all on 60 items (3 flips each way), perplexity unchanged: the old rule said supported
    got = claim(judge(_capability_run((33, 3, 3, 21), 0.0), {}, THRESHOLDS), "small-capability-cost")
    assert got["verdict"] == "inconclusive"
    test = got["tests"][0]
    assert test["mmlu"]["drop"] == 0 and test["mmlu"]["upper"] > THRESHOLDS.max_mmlu_drop
    assert "upper bound" in got["evidence"] and got["mde"]["value"] > THRESHOLDS.max_mmlu_drop
    # 4000 items with few flips and a 1% perplexity rise: non-inferior on both
    got = claim(judge(_capability_run((2600, 10, 10, 1380), 0.01), {}, THRESHOLDS), "small-capability-cost")
    assert got["verdict"] == "supported", got["evidence"]
    assert got["tests"][0]["perplexity"]["upper"] <= 1.10 and got["p_holm"] < 0.05
    # a perplexity ratio over the limit is not supported
    assert claim(judge(_capability_run((2600, 10, 10, 1380), 0.2), {}, THRESHOLDS), "small-capability-cost")["verdict"] == "not supported"


def test_capability_cost_not_tested_without_both_tasks_or_at_chance():
    loaded = _capability_run((2600, 10, 10, 1380), 0.0)
    for cond in loaded.values():
        for result in cond.values():
            del result.tasks["perplexity"]  # MMLU alone made it "supported" before
    got = claim(judge(loaded, {}, THRESHOLDS), "small-capability-cost")
    assert got["verdict"] == "not tested" and "perplexity was not evaluated" in got["reason"]
    # base MMLU at 26% on 200 items: its Wilson interval contains chance
    got = claim(judge(_capability_run((50, 2, 2, 146), 0.0), {}, THRESHOLDS), "small-capability-cost")
    assert got["verdict"] == "not tested" and "chance" in got["reason"]


# ------------------------------------------------------------------ point 5: difference in differences


def _counter_run(h, hc, t, tc, seeds=(0,)) -> dict:
    return run({"honesty": {"facts-ab": ab(h)}, "honesty@counter": {"facts-ab": ab(hc)},
                "truth": {"facts-ab": ab(t)}, "truth@counter": {"facts-ab": ab(tc)}}, seeds)


def test_resistance_is_the_drop_not_the_level():
    n = 200
    # honesty starts 30 points higher and drops exactly as much as truth: zero resistance
    base = np.random.default_rng(1).permutation(n) / n
    h, hc = list(base < 0.9), list(base < 0.6)
    t, tc = list(base < 0.6), list(base < 0.3)
    got = claim(judge(_counter_run(h, hc, t, tc), {}, THRESHOLDS), "resists-counter-steering")
    assert got["tests"][0]["effect"] == pytest.approx(0.0) and got["verdict"] == "not supported"
    assert got["tests"][0]["drop_honesty"] == pytest.approx(got["tests"][0]["drop_truth"])
    # honesty keeps its level under counter-steering, truth loses 30 points: resistance
    got = claim(judge(_counter_run(t, t, t, tc), {}, THRESHOLDS), "resists-counter-steering")
    assert got["verdict"] == "supported" and got["tests"][0]["effect"] == pytest.approx(0.3, abs=0.08)
    assert got["tests"][0]["ci_low"] > 0 and got["mde"]["value"] < 0.3 and "difference in differences" in got["evidence"]


# ------------------------------------------------------------------ point 6: context rows


def test_tuning_beats_steering_shows_truth_and_pos_beside_it():
    steer, honesty = pair(40, 2, 30, 28)
    _, truth = pair(40, 10, 20, 30, seed=2)
    _, pos = pair(40, 15, 5, 40, seed=3)
    loaded = run({"untuned": {"facts-ab": ab(steer)}, "steer+": {"facts-ab": ab(steer)}, "honesty": {"facts-ab": ab(honesty)},
                  "truth": {"facts-ab": ab(truth)}, "pos": {"facts-ab": ab(pos)}})
    got = claim(judge(loaded, {}, THRESHOLDS), "tuning-beats-steering")
    assert got["verdict"] == "supported"
    rows = {(r["a"], r["b"]): r for r in got["context"]}
    assert set(rows) == {("steer+", "truth"), ("steer+", "pos"), ("truth", "honesty")}
    assert rows[("steer+", "pos")]["b_value"] == pytest.approx(sum(pos) / len(pos)) and "p_holm" not in rows[("steer+", "pos")]


# ------------------------------------------------------------------ point 7: Holm, degeneracy, seeds, MDE


def test_holm_adjusted_p_decides():
    # two claims, each with exact McNemar p = 0.0386 (2 vs 10 discordant): raw p < 0.05 for both, Holm 0.077
    steer, honesty = pair(30, 2, 10, 18)
    truth, honesty_tqa = pair(30, 2, 10, 18, seed=4)
    loaded = run({"steer+": {"facts-ab": ab(steer)}, "honesty": {"facts-ab": ab(honesty), "tqa-ab": ab(honesty_tqa, task="tqa-ab")},
                  "truth": {"tqa-ab": ab(truth, task="tqa-ab")}})
    claims = judge(loaded, {}, THRESHOLDS)
    for cid in ("tuning-beats-steering", "generalises-to-truthfulqa"):
        got = claim(claims, cid)
        assert got["p_value"] == pytest.approx(0.0386, abs=1e-4) and got["p_holm"] == pytest.approx(2 * got["p_value"])
        assert got["verdict"] == "inconclusive"
    assert claim(claims, "resists-counter-steering")["p_holm"] is None  # not tested: not in the family


def _study_claim(cid: str, differences: list[float], p_value: float) -> dict:
    """A study's claim (extra_specs) with one sign-flip test on ``differences``."""
    from reptune.evaluation.statistics import sign_flip_min_p

    test = {"seed": 0, "n": len(differences), "effect": float(np.mean(differences)), "effect_ok": float(np.mean(differences)) > 0,
            "p_value": p_value, "method": "paired sign-flip test", "min_p": sign_flip_min_p(differences), "mde": 0.3}
    return claim_spec(cid, f"{cid} holds", [test], new_problems(), "numbers.", "a difference of {mde:.3f} at n = {n}")


def test_a_test_that_cannot_reach_alpha_is_not_tested_and_leaves_the_holm_family():
    # two McNemar claims at p = 0.0386 each (Holm 0.077 between them, as above) and a study claim on 4 items, every one
    # the claimed way: its sign-flip p is 0.125, the smallest 4 items allow. In the family it would make the others' Holm
    # p 3 x 0.0386 = 0.116; it can never be rejected, so it is not tested and the others keep 2 x 0.0386.
    steer, honesty = pair(30, 2, 10, 18)
    truth, honesty_tqa = pair(30, 2, 10, 18, seed=4)
    loaded = run({"steer+": {"facts-ab": ab(steer)}, "honesty": {"facts-ab": ab(honesty), "tqa-ab": ab(honesty_tqa, task="tqa-ab")},
                  "truth": {"tqa-ab": ab(truth, task="tqa-ab")}})
    small = _study_claim("resists-gcg", [0.5, 0.7, 0.6, 0.8], 0.125)
    claims = judge(loaded, {}, THRESHOLDS, extra_specs=[small])
    got = claim(claims, "resists-gcg")
    assert got["verdict"] == "not tested" and got["p_holm"] is None and got["p_value"] == 0.125
    assert "smallest p its test can give on these 4 items (4 non-zero differences) is 0.125" in got["reason"] and "Holm family" in got["reason"]
    assert got["mde"]["value"] is None and got["mde"]["power"] == 0.0 and "none at n = 4" in got["mde"]["text"]
    for cid in ("tuning-beats-steering", "generalises-to-truthfulqa"):
        assert claim(claims, cid)["p_holm"] == pytest.approx(2 * claim(claims, cid)["p_value"])
    # 6 items can reach 2/64 = 0.031 < 0.05: tested, in the family (Holm over three tests)
    six = _study_claim("resists-gcg", [0.5, 0.7, 0.6, 0.8, 0.2, 0.4], 0.03125)
    got = claim(judge(loaded, {}, THRESHOLDS, extra_specs=[six]), "resists-gcg")
    assert got["verdict"] == "inconclusive" and got["p_holm"] == pytest.approx(3 * 0.03125) and "reason" not in got
    # alpha 0.0625 and 5 items: p = 2/32 = 0.0625 at best, never below alpha (supported needs p < alpha), so not tested either
    five = _study_claim("resists-gcg", [0.5, 0.7, 0.6, 0.8, 0.2], 0.0625)
    got = claim(judge(loaded, {}, {"alpha": 0.0625}, extra_specs=[five]), "resists-gcg")
    assert got["verdict"] == "not tested" and "(5 non-zero differences) is 0.0625, not below alpha 0.0625" in got["reason"]
    # McNemar with 4 discordant items of 60 (all four the claimed way): p = 0.125 at best, whatever n is
    steer, honesty = pair(40, 0, 4, 16)
    got = claim(judge(run({"steer+": {"facts-ab": ab(steer)}, "honesty": {"facts-ab": ab(honesty)}}), {}, THRESHOLDS), "tuning-beats-steering")
    assert got["verdict"] == "not tested" and "60 items (4 discordant) is 0.125" in got["reason"] and got["tests"][0]["min_p"] == 0.125
    assert got["short_reason"] == "its test cannot reach alpha at this n"


def test_paired_table_leaves_rows_without_power_out_of_its_holm_column():
    honesty = [True] * 40 + [False] * 20
    steer = [not x if i < 4 else x for i, x in enumerate(reversed(honesty))][::-1]  # differs from honesty on 4 items
    truth = [False] * 10 + [True] * 2 + honesty[12:]  # differs on 12: 10 honesty right, 2 truth right (p = 0.0386)
    truth[40:42] = [True, True]
    loaded = run({"steer+": {"facts-ab": ab(steer)}, "honesty": {"facts-ab": ab(honesty)}, "truth": {"facts-ab": ab(truth)}})
    rows = {(r["a"], r["b"]): r for r in paired_tests(loaded, [0]) if r["status"] == "tested"}
    weak, strong = rows[("steer+", "honesty")], rows[("truth", "honesty")]
    assert weak["discordant"] == 4 and weak["p_value"] == 0.125 and "p_holm" not in weak
    assert "4 discordant items cannot give p below 0.05" in weak["reason"]
    assert strong["discordant"] == 12 and strong["p_value"] == pytest.approx(0.0386, abs=1e-4) and "reason" not in strong
    in_family = [r for r in rows.values() if "p_holm" in r]
    assert strong in in_family and all(r["discordant"] > 5 for r in in_family)
    adjusted = holm_adjust([r["p_value"] for r in in_family])  # the family without the row that cannot reach alpha
    assert [r["p_holm"] for r in in_family] == pytest.approx(adjusted) and len(in_family) < len(rows)


def test_degenerate_option_text_never_supports():
    steer, honesty = pair(40, 2, 30, 28)
    always_false = ab(steer, always="False")  # letters alternate (50% "A"), the text is always "False"
    assert chosen_option(always_false.records[0]) == "False" and degeneracy(always_false.records) is not None
    assert degeneracy(ab(steer).records) is None
    loaded = run({"steer+": {"facts-ab": always_false}, "honesty": {"facts-ab": ab(honesty)}})
    got = claim(judge(loaded, {}, THRESHOLDS), "tuning-beats-steering")
    assert got["verdict"] == "not tested" and "the same option text (False)" in got["reason"] and got["degenerate"]
    assert got["short_reason"] == "a compared condition is degenerate"
    twins = [{"id": str(i), "twin": "first", "correct": i % 3 == 0} for i in range(50)]
    assert "the same twin" in degeneracy(twins)


def test_a_missing_seed_is_not_tested_and_never_reuses_another_seed():
    truth, honesty = pair(30, 2, 20, 18)
    loaded = run({"steer+": {"tqa-ab": ab(truth, task="tqa-ab")}, "truth#0": {"tqa-ab": ab(truth, task="tqa-ab")},
                  "honesty": {"tqa-ab": ab(honesty, task="tqa-ab")}}, seeds=(0, 1))
    rows = [r for r in paired_tests(loaded, [0, 1]) if (r["a"], r["b"]) == ("truth", "honesty")]
    assert [(r["seed"], r["status"]) for r in rows] == [(0, "tested"), (1, "not tested")]
    assert rows[1]["p_value"] is None and "seed 1 of truth is missing" in rows[1]["reason"] and "p_holm" in rows[0]
    # steered conditions are seed-free: paired with every seed's tuned model
    assert {r["seed"] for r in paired_tests(loaded, [0, 1]) if (r["a"], r["b"]) == ("steer+", "honesty") and r["status"] == "tested"} == {0, 1}
    got = claim(judge(loaded, {}, THRESHOLDS, seeds=[0, 1]), "generalises-to-truthfulqa")
    assert got["verdict"] == "not tested" and "seed 1 of truth is missing" in got["reason"]


def test_every_tested_claim_states_its_mde():
    steer, honesty = pair(20, 3, 9, 25)
    loaded = run({"steer+": {"facts-ab": ab(steer)}, "honesty": {"facts-ab": ab(honesty)}})
    got = claim(judge(loaded, {}, THRESHOLDS), "tuning-beats-steering")
    assert got["mde"]["value"] == pytest.approx(mcnemar_mde(57, 12)) and got["mde"]["n"] == 57
    assert got["mde"]["alpha"] == 0.05 and got["mde"]["power"] == 0.8 and "Minimum detectable effect" in got["mde"]["text"]
    # 7 discordant items can reach p < 0.05 (tested), but no difference they allow has power 0.8: no MDE number
    steer, honesty = pair(200, 0, 7, 109)
    got = claim(judge(run({"steer+": {"facts-ab": ab(steer)}, "honesty": {"facts-ab": ab(honesty)}}), {}, THRESHOLDS), "tuning-beats-steering")
    assert got["verdict"] == "supported" and got["mde"]["value"] is None and got["mde"]["n"] == 316
    assert "none at n = 316 with 7 discordant items" in got["mde"]["text"]


# ------------------------------------------------------------------ for the lead: gate and headline task


def test_gate_and_headline_task():
    steer, honesty = pair(40, 2, 30, 28)
    loaded = run({"steer+": {"facts-twin": ab(steer, task="facts-twin")}, "honesty": {"facts-twin": ab(honesty, task="facts-twin")}})
    assert claim(judge_claims({}, [], THRESHOLDS, loaded=loaded), "tuning-beats-steering")["verdict"] == "not tested"
    got = judge_claims({}, [], THRESHOLDS, loaded=loaded, headline_task="facts-twin")
    assert claim(got, "tuning-beats-steering")["verdict"] == "supported"
    gate = {"passed": False, "reason": "token-only tuning does not move the behaviour", "truth_move": 0.01, "lie_move": 0.0}
    gated = judge_claims({}, [], THRESHOLDS, loaded=loaded, headline_task="facts-twin", gate=gate)
    assert [c["verdict"] for c in gated] == ["not tested"] * 4 and all(c["reason"].startswith(gate["reason"]) for c in gated)
    # still measured, never judged: the paired test and its power are shown beside the reason
    beats = claim(gated, "tuning-beats-steering")
    assert beats["p_value"] is not None and beats["p_holm"] is None and beats["mde"]["value"] > 0
    assert beats["gate"]["passed"] is False and "Not tested: " + gate["reason"] in beats["evidence"]
    passed = judge_claims({}, [], THRESHOLDS, loaded=loaded, headline_task="facts-twin", gate={**gate, "passed": True})
    assert claim(passed, "tuning-beats-steering")["verdict"] == "supported"


def test_no_shared_items_is_not_tested():
    honesty = ab([True, False, True, False])
    steer = ab([True, True, False, False])
    for record in steer.records:
        record["id"] = "other-" + record["id"]  # different items: nothing to pair
    got = claim(judge(run({"steer+": {"facts-ab": steer}, "honesty": {"facts-ab": honesty}}), {}, THRESHOLDS), "tuning-beats-steering")
    assert got["verdict"] == "not tested" and "too few shared items" in got["reason"]
    loaded = _capability_run((30, 2, 2, 26), 0.0, windows=1)
    got = claim(judge(loaded, {}, THRESHOLDS), "small-capability-cost")
    assert got["verdict"] == "not tested" and "too few shared items" in got["reason"]


def test_thresholds_from_a_dict_and_defaults():
    from reptune.pipeline.claims import ClaimSettings

    assert ClaimSettings.from_thresholds(None) == ClaimSettings()
    settings = ClaimSettings.from_thresholds({"alpha": 0.01, "max_mmlu_drop": 0.05})
    assert settings.alpha == 0.01 and settings.max_mmlu_drop == 0.05 and settings.power == 0.8
    assert ClaimSettings.from_thresholds(ClaimThresholds(alpha=0.1)).alpha == 0.1


def test_a_seed_free_comparison_prints_its_p_once():
    """Steered vs untuned is one test repeated for each seed: "What moved" prints its p once;
    a tuned condition's seeds differ and keep one p each."""
    from reptune.pipeline.analysis import _p

    same = {"p_value": 0.118, "n": 316, "a_value": 0.788, "b_value": 0.81}
    assert _p([dict(same, seed=s) for s in range(3)], seed_free=True) == "p=0.118"
    assert _p([dict(same, seed=s) for s in range(2)]) == "p=0.118, p=0.118"  # two seeds that happen to agree stay two
    assert _p([dict(same, seed=0), dict(same, seed=1, p_value=0.2)]) == "p=0.118, p=0.2"
    assert _p([{"p_value": None}], seed_free=True) == "no test"
