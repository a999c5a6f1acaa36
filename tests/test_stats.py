"""Evaluation statistics against scipy and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from reptune.errors import ReptuneError
from reptune.evaluation.statistics import (
    bootstrap_ci,
    bootstrap_ratio_ci,
    holm_adjust,
    mcnemar_mde,
    mcnemar_min_p,
    mcnemar_test,
    mean_mde,
    noninferiority_mde,
    paired_bootstrap_diff,
    paired_mcnemar,
    paired_noninferiority,
    paired_proportion_diff_ci,
    paired_ratio_noninferiority,
    powerless,
    sign_flip_min_p,
    sign_flip_test,
    tango_score,
    wilson_interval,
)
from reptune.evaluation.tasks.perplexity import perplexity_metrics

sm_proportion = pytest.importorskip("statsmodels.stats.proportion")
sm_tables = pytest.importorskip("statsmodels.stats.contingency_tables")


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (37, 120), (999, 1000), (3, 7)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels_and_scipy(k, n, confidence):
    low, high = wilson_interval(k, n, confidence)
    ref = sm_proportion.proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    assert low == pytest.approx(ref[0], abs=1e-12) and high == pytest.approx(ref[1], abs=1e-12)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)


def test_wilson_edge_cases():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ReptuneError):
        wilson_interval(5, 3)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 1), (3, 9), (7, 7), (12, 12), (2, 20), (30, 12), (100, 80), (250, 249)])
def test_mcnemar_matches_statsmodels(b, c):
    table = [[50, b], [c, 40]]
    exact = mcnemar_test(b, c, exact=True)
    ref = sm_tables.mcnemar(table, exact=True)
    assert exact.pvalue == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-15)
    if b + c:
        chi = mcnemar_test(b, c, exact=False)
        ref = sm_tables.mcnemar(table, exact=False, correction=True)
        assert chi.statistic == pytest.approx(ref.statistic, rel=1e-12)
        assert chi.pvalue == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-15)
        assert chi.pvalue == pytest.approx(stats.chi2.sf(chi.statistic, 1), rel=1e-10, abs=1e-15)
    # exact binomial equals scipy's two-sided binomial test for p = 1/2
    if b + c:
        assert exact.pvalue == pytest.approx(stats.binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-10)


def test_mcnemar_default_switches_at_25_discordant():
    assert mcnemar_test(10, 14).method == "exact"
    assert mcnemar_test(10, 15).method == "chi2-cc"
    result = paired_mcnemar([1, 1, 0, 0, 1], [1, 0, 1, 1, 1])
    assert (result.b, result.c) == (1, 2)
    with pytest.raises(ReptuneError):
        paired_mcnemar([1], [1, 0])


def test_bootstrap_seeded_and_close_to_scipy():
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 2.0, size=300)
    first = bootstrap_ci(values, seed=7)
    assert first == bootstrap_ci(values, seed=7)
    assert first != bootstrap_ci(values, seed=8)
    ref = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=4000, random_state=0).confidence_interval
    assert first[0] == pytest.approx(ref.low, abs=0.06) and first[1] == pytest.approx(ref.high, abs=0.06)
    assert first[0] < values.mean() < first[1]
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))


def test_bootstrap_of_a_non_finite_value_is_no_interval():
    assert all(math.isnan(x) for x in bootstrap_ci([1.0, float("inf"), 2.0, 3.0]))
    assert all(math.isnan(x) for x in bootstrap_ci([1.0, float("nan"), 2.0]))


def test_ratio_and_paired_bootstrap():
    rng = np.random.default_rng(2)
    den = rng.integers(50, 100, size=200).astype(float)
    num = den * rng.normal(2.0, 0.3, size=200)
    low, high = bootstrap_ratio_ci(num, den, seed=0)
    assert low < num.sum() / den.sum() < high
    a = rng.normal(size=200)
    diff, low, high = paired_bootstrap_diff(a, a + 0.5, seed=0)
    assert diff == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_perplexity_ci_in_log_space_does_not_underflow():
    # 40 windows of 1000 tokens at ~5 nats per token: the probability of a window is
    # exp(-5000), 0.0 in float64; the CI must still be finite and bracket the perplexity
    rng = np.random.default_rng(3)
    counts = np.full(40, 1000)
    nll = counts * rng.normal(5.0, 0.2, size=40)
    metrics = perplexity_metrics(nll, counts, seed=0)
    value = metrics["perplexity"]["value"]
    assert value == pytest.approx(math.exp(nll.sum() / counts.sum()))
    assert 0 < metrics["perplexity"]["ci_low"] < value < metrics["perplexity"]["ci_high"] < math.inf


# ------------------------------------------------------------------ claims statistics (issue 9, points 4, 5, 7)


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(4)
    for m in (1, 2, 5, 12):
        p = list(rng.uniform(0, 0.2, size=m)) + [0.5] * (m // 3)
        ref = multitest.multipletests(p, method="holm")[1]
        assert holm_adjust(p) == pytest.approx(list(ref), abs=1e-12)
    assert holm_adjust([]) == []
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # a NaN p counts as 1 in any position (Python's sort has no order for NaN)
    nan = float("nan")
    for p in ([0.01, nan, 0.04, 0.03], [0.04, 0.03, nan, 0.01], [nan, 0.01, 0.03, 0.04]):
        expected = dict(zip([0.01, 0.03, 0.04], holm_adjust([0.01, 0.03, 0.04, 1.0])))
        got = holm_adjust(p)
        assert [g for g, q in zip(got, p) if math.isnan(q)] == [1.0]
        assert all(g == pytest.approx(expected[q]) for g, q in zip(got, p) if not math.isnan(q))


@pytest.mark.parametrize(("b", "c"), [(7, 2), (0, 5), (12, 12), (30, 4), (1, 0)])
def test_tango_score_at_zero_is_mcnemar(b, c):
    ref = sm_tables.mcnemar([[20, b], [c, 30]], exact=False, correction=False).statistic
    assert tango_score(b, c, 50 + b + c, 0.0) ** 2 == pytest.approx(ref, rel=1e-12)


def test_tango_interval_no_discordant_items_and_coverage():
    # no discordant item: the interval is [-z^2/(n+z^2), z^2/(n+z^2)], not a point
    z = stats.norm.ppf(0.975)
    diff, low, high = paired_proportion_diff_ci(40, 0, 0, 20)
    assert diff == 0 and high == pytest.approx(z * z / (60 + z * z), abs=1e-9) and low == pytest.approx(-high, abs=1e-9)
    diff, low, high = paired_proportion_diff_ci(3, 7, 2, 8)
    assert low < diff == 0.25 < high
    assert paired_proportion_diff_ci(3, 2, 7, 8)[1] == pytest.approx(-high, abs=1e-9)  # swapping the models mirrors it
    rng = np.random.default_rng(0)
    for probs in ([0.5, 0.1, 0.05, 0.35], [0.6, 0.02, 0.02, 0.36]):
        true = probs[1] - probs[2]
        covered = [lo <= true <= hi for _, lo, hi in (paired_proportion_diff_ci(*rng.multinomial(50, probs)) for _ in range(300))]
        assert 0.92 <= np.mean(covered) <= 0.99


def test_noninferiority_bound_and_p_agree_and_need_more_than_a_point_estimate():
    for table in ([40, 2, 1, 17], [30, 5, 5, 20], [60, 0, 0, 40], [10, 6, 1, 3]):
        for margin in (0.0, 0.02, 0.05, 0.1, 0.3):
            out = paired_noninferiority(*table, margin, alpha=0.05)
            assert (out["pvalue"] <= 0.05) == (out["upper"] <= margin), (table, margin)
    # the old rule read the point estimate: a drop of 0 on 60 items is not non-inferiority at 2 points
    out = paired_noninferiority(40, 3, 3, 14, 0.02)
    assert out["drop"] == 0 and out["upper"] > 0.02 and out["pvalue"] > 0.05
    # ... but it is on 4000 items with few flips
    assert paired_noninferiority(2600, 20, 20, 1360, 0.02)["pvalue"] < 0.05


def test_perplexity_ratio_noninferiority_is_paired():
    rng = np.random.default_rng(5)
    tokens = np.full(60, 256.0)
    base = tokens * rng.normal(3.0, 0.5, size=60)  # windows differ a lot from each other...
    tuned = base + tokens * rng.normal(0.03, 0.01, size=60)  # ... the paired change is small and steady
    out = paired_ratio_noninferiority(base, tuned, tokens, 1.10, seed=0)
    assert out["ratio"] == pytest.approx(math.exp((tuned.sum() - base.sum()) / tokens.sum()))
    assert out["ratio"] < out["upper"] < 1.10 and out["pvalue"] < 0.05
    # a point ratio under the limit whose bound is over it (few noisy windows) is not non-inferior
    few = paired_ratio_noninferiority(base[:4], base[:4] + tokens[:4] * np.array([0.0, 0.3, -0.1, 0.12]), tokens[:4], 1.10, seed=0)
    assert few["ratio"] < 1.10 < few["upper"] and few["pvalue"] > 0.05
    assert paired_ratio_noninferiority(base, base, tokens, 1.10)["upper"] == pytest.approx(1.0)
    with pytest.raises(ReptuneError):
        paired_ratio_noninferiority(base, base[:3], tokens, 1.10)


def test_sign_flip_test_matches_scipy_permutation():
    x = np.array([1.0, 1.0, 2.0, 1.0, -1.0, 1.0, 0.0, 2.0, -1.0])
    ref = stats.permutation_test((x,), np.mean, permutation_type="samples", alternative="two-sided").pvalue
    assert sign_flip_test(x) == pytest.approx(ref, abs=1e-12)
    assert sign_flip_test([0, 0, 0]) == 1.0
    many = np.array([1.0] * 30 + [-1.0] * 10)
    assert sign_flip_test(many, seed=1) == sign_flip_test(many, seed=1)
    assert sign_flip_test(many) == pytest.approx(stats.binomtest(30, 40).pvalue, abs=0.01)


def test_sign_flip_test_does_not_depend_on_scale_and_ignores_float_noise():
    x = np.array([1.0] * 10 + [-1.0])
    for scale in (1e-12, 1e-10, 1e-3, 1.0, 1e9):
        assert sign_flip_test(x * scale) == pytest.approx(sign_flip_test(x), abs=1e-12)
        assert sign_flip_min_p(x * scale) == sign_flip_min_p(x) == pytest.approx(2 / 2 ** 11)
    # a float-noise difference is no item: the test and its floor agree (5 items, not 6)
    noisy = [1.0] * 5 + [1e-12]
    assert sign_flip_test(noisy) == sign_flip_min_p(noisy) == sign_flip_test([1.0] * 5) == 0.0625
    # Monte Carlo: resamples in chunks of one seeded stream, the same p as one draw of them all
    many = np.linspace(-0.5, 1.5, 40)
    rng = np.random.default_rng(3)
    signs = rng.choice(np.array([1.0, -1.0]), size=(2500, many.size))
    observed = abs(many.sum()) - 1e-9 * np.abs(many).sum()
    assert sign_flip_test(many, n_resamples=2500, seed=3) == (1 + int(np.sum(np.abs(signs @ many) >= observed))) / 2501


def test_smallest_attainable_p_is_what_the_tests_give_at_the_extreme():
    # every item the same way is the most extreme outcome: the test's p there is the floor
    for values in ([0.3, 1.2, 0.7, 2.0], [1.0, 0.0, 1.0, 0.0, 0.0, 1.0], [5.0], np.linspace(0.1, 1.6, 16)):
        assert sign_flip_min_p(values) == pytest.approx(sign_flip_test(values), abs=1e-12)
        assert sign_flip_min_p(values) == sign_flip_min_p(-np.asarray(values))  # the signs do not matter
    assert sign_flip_min_p([0.3, 1.2, 0.7, 2.0]) == 0.125 and sign_flip_min_p([1, 0, 0, -1]) == 0.5
    assert sign_flip_min_p([0, 0]) == 1.0 and sign_flip_min_p([1.0] * 17, n_resamples=999) == 1e-3
    assert sign_flip_test(np.linspace(0.1, 1.7, 17), n_resamples=999) >= sign_flip_min_p(np.ones(17), n_resamples=999)
    rng = np.random.default_rng(0)
    for _ in range(20):  # never above any p the test gives on the same non-zero count
        x = rng.normal(size=int(rng.integers(1, 12)))
        assert sign_flip_test(x) >= sign_flip_min_p(x) - 1e-12
    for d in (0, 1, 4, 6, 24, 25, 40):
        assert mcnemar_min_p(d) == pytest.approx(mcnemar_test(d, 0).pvalue if d else 1.0)
        assert all(mcnemar_test(b, d - b).pvalue >= mcnemar_min_p(d) - 1e-12 for b in range(d + 1))
    assert mcnemar_min_p(4) == 0.125 and mcnemar_min_p(6) == pytest.approx(2 / 64)
    # rejection needs p < alpha: a smallest p equal to alpha is powerless; unknown or NaN is not known to be
    assert powerless(0.0625, 0.0625) and powerless(0.125, 0.05) and not powerless(0.031, 0.05)
    assert not powerless(None, 0.05) and not powerless(float("nan"), 0.05)
    # a non-finite difference (inf - inf losses) is no test, not p = 0
    assert math.isnan(sign_flip_test([1.0, float("nan"), 2.0])) and math.isnan(sign_flip_min_p([1.0, float("inf")]))
    with pytest.raises(ReptuneError):
        mcnemar_min_p(-1)


def test_minimum_detectable_effects_have_the_stated_power():
    power_mod = pytest.importorskip("statsmodels.stats.power")
    # one-sample mean: the normal-approximation MDE statsmodels solves for (ratio=0: one sample)
    d = power_mod.NormalIndPower().solve_power(effect_size=None, nobs1=57, alpha=0.05, power=0.8, ratio=0)
    assert mean_mde(1.0, 57) == pytest.approx(d, rel=1e-3)
    # McNemar: at the MDE, the chi-square test rejects in ~80% of simulated runs
    n, psi = 300, 0.2
    delta = mcnemar_mde(n, int(psi * n))
    assert 0 < delta < psi and mcnemar_mde(4 * n, int(psi * 4 * n)) < delta
    rng = np.random.default_rng(6)
    hits = []
    for _ in range(600):
        _, b, c = rng.multinomial(n, [1 - psi, (psi - delta) / 2, (psi + delta) / 2])
        hits.append(mcnemar_test(int(b), int(c), exact=False).pvalue < 0.05)
    assert 0.72 <= np.mean(hits) <= 0.86
    assert mcnemar_mde(0, 0) is None
    # a difference cannot exceed the discordance: where even "all of it one way" is not detectable
    # by the approximation, no MDE (it once returned 0.062 for 5 discordant items of 100, and 1.96 for n = 1)
    for n, d in ((100, 5), (100, 0), (1, 1), (3, 3), (160, 3)):
        assert mcnemar_mde(n, d) is None, (n, d)
    for n, d in ((100, 8), (160, 12), (316, 40), (57, 12)):
        assert 0 < mcnemar_mde(n, d) <= d / n, (n, d)
    assert noninferiority_mde(100, 10) == pytest.approx((stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) * math.sqrt(0.1 / 100))
