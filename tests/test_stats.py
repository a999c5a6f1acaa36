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
    mcnemar_test,
    paired_bootstrap_diff,
    paired_mcnemar,
    wilson_interval,
)
from reptune.evaluation.tasks import perplexity_metrics

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
