"""The study's data-driven decisions: steering by effect, knowledge, the learnability gate."""

from __future__ import annotations

import pytest

from reptune.pipeline.selection import knowledge_summary, learnability_gate, select_steering


def _grid(values: dict[tuple[int, float], float], nll: dict[tuple[int, float], float] | None = None) -> list[dict]:
    rows = [{"layer": None, "multiplier": 0.0, "value": 0.70, "mean_nll": 2.0}]
    for (layer, m), value in values.items():
        rows.append({"layer": layer, "multiplier": m, "value": value, "mean_nll": (nll or {}).get((layer, m), 2.1)})
    return rows


def test_layer_with_the_largest_spread_wins_not_the_first_or_deepest():
    rows = _grid({
        (5, 4.0): 0.72, (5, -4.0): 0.68,   # spread 0.04
        (10, 4.0): 0.80, (10, -4.0): 0.55,  # spread 0.25
        (20, 4.0): 0.71, (20, -4.0): 0.69,  # spread 0.02
    })
    selected, rule = select_steering(rows)
    assert selected["layer"] == 10
    assert selected["positive"] == 4.0 and selected["negative"] == -4.0
    assert selected["effect_positive"] == pytest.approx(0.10) and selected["effect_negative"] == pytest.approx(-0.15)
    assert selected["moved"] and "largest spread" in rule


def test_degenerate_cells_are_never_chosen():
    # layer 10 at +-8 moves the most but its text likelihood collapses
    rows = _grid(
        {(10, 4.0): 0.74, (10, 8.0): 0.95, (10, -4.0): 0.66, (10, -8.0): 0.20},
        nll={(10, 8.0): 4.5, (10, -8.0): 6.0},
    )
    selected, _ = select_steering(rows, max_nll_rise=1.0)
    assert selected["positive"] == 4.0 and selected["negative"] == -4.0
    assert {(d["layer"], d["multiplier"]) for d in selected["degenerate"]} == {(10, 8.0), (10, -8.0)}
    flagged = {r["multiplier"]: r["degenerate"] for r in rows if r["layer"] == 10}
    assert flagged == {4.0: False, 8.0: True, -4.0: False, -8.0: True}


def test_same_answer_rate_flags_a_cell_and_all_degenerate_falls_back_to_smallest():
    rows = _grid({(3, 2.0): 0.9, (3, 6.0): 0.9, (3, -2.0): 0.5})
    for row in rows:
        if row["multiplier"] > 0:
            row["same_answer_rate"] = 0.97
    selected, rule = select_steering(rows)
    assert selected["positive"] == 2.0 and selected["fallback"] == ["positive"]
    assert "smallest multiplier" in rule


def test_ties_prefer_the_smaller_multiplier():
    rows = _grid({(4, 2.0): 0.8, (4, 6.0): 0.8, (4, -2.0): 0.6, (4, -6.0): 0.6})
    selected, _ = select_steering(rows)
    assert selected["positive"] == 2.0 and selected["negative"] == -2.0


def test_no_movement_is_reported_as_not_moved():
    rows = _grid({(4, 2.0): 0.70, (4, -2.0): 0.70})
    selected, _ = select_steering(rows, min_effect=0.01)
    assert selected["moved"] is False


def test_sweep_needs_an_unsteered_cell():
    with pytest.raises(ValueError, match="unsteered"):
        select_steering([{"layer": 1, "multiplier": 2.0, "value": 0.5}])


def test_knowledge_summary_counts_overall_and_by_topic():
    records = [{"correct": True, "topic": "geo"}, {"correct": False, "topic": "geo"}, {"correct": True, "topic": "math"}]
    summary = knowledge_summary(records)
    assert summary["known"] == 2 and summary["n"] == 3 and summary["share"] == pytest.approx(2 / 3)
    assert summary["by_topic"]["geo"] == {"known": 1, "n": 2, "share": 0.5}


def test_learnability_gate_needs_both_directions():
    passed = learnability_gate(0.70, [0.82, 0.85], [0.55, 0.58])
    assert passed["passed"] and passed["truth_move"] == pytest.approx(0.135) and passed["lie_move"] == pytest.approx(0.135)
    one_way = learnability_gate(0.70, [0.90], [0.66])
    assert not one_way["passed"] and "not tested" in one_way["reason"]
    missing = learnability_gate(0.70, [], [0.5])
    assert not missing["passed"]
