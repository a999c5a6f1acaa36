"""Statistics for evaluation results, all in float64 and without scipy at run time.

* :func:`wilson_interval` — Wilson score interval for a proportion (no continuity correction;
  equals ``statsmodels.stats.proportion.proportion_confint(method="wilson")``).
* :func:`mcnemar_test` — paired test of two models' per-item correctness. With fewer than
  ``EXACT_BELOW`` (25) discordant items it is the *exact* two-sided binomial test
  (``p = min(1, 2 P(X <= min(b, c)))``, ``X ~ Bin(b + c, 1/2)``); otherwise the chi-square
  test *with* Edwards' continuity correction, ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of
  freedom. Both equal ``statsmodels``' ``mcnemar(exact=..., correction=True)``.
* :func:`bootstrap_ci` — seeded percentile bootstrap of any statistic of per-item values;
  :func:`bootstrap_ratio_ci` for token-weighted means (``sum(num) / sum(den)``, resampling
  whole items); :func:`paired_bootstrap_diff` for a paired difference of means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from reptune.errors import ReptuneError

EXACT_BELOW = 25  # discordant pairs below which McNemar uses the exact binomial test
DEFAULT_RESAMPLES = 2000


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ReptuneError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes / n`` (``(nan, nan)`` when ``n == 0``)."""
    if n < 0 or successes < 0 or successes > n:
        raise ReptuneError(f"invalid proportion {successes}/{n}")
    if n == 0:
        return (math.nan, math.nan)
    z = _z(confidence)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class McNemarResult:
    """Outcome of :func:`mcnemar_test`; ``b``: only A right, ``c``: only B right."""

    b: int
    c: int
    statistic: float
    pvalue: float
    method: str  # "exact" or "chi2-cc"

    def to_json(self) -> dict[str, float | int | str]:
        return {"b": self.b, "c": self.c, "statistic": self.statistic, "pvalue": self.pvalue, "method": self.method}


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Bin(n, 1/2), exactly (integer arithmetic)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    total = sum(math.comb(n, i) for i in range(k + 1))
    return float(total / (1 << n)) if n < 1000 else math.exp(math.log(total) - n * math.log(2.0))


def mcnemar_test(b: int, c: int, *, exact: bool | None = None) -> McNemarResult:
    """McNemar's test on discordant counts ``b`` and ``c``.

    Args:
        exact: ``True`` for the exact binomial test, ``False`` for chi-square with continuity
            correction, ``None`` (default) for exact when ``b + c < 25``.
    """
    if b < 0 or c < 0:
        raise ReptuneError(f"discordant counts must be non-negative, got {b}, {c}")
    n = b + c
    if exact is None:
        exact = n < EXACT_BELOW
    if exact:
        pvalue = min(1.0, 2.0 * _binom_cdf_half(min(b, c), n)) if n else 1.0
        return McNemarResult(b, c, float(min(b, c)), pvalue, "exact")
    if n == 0:
        return McNemarResult(b, c, 0.0, 1.0, "chi2-cc")
    statistic = (abs(b - c) - 1.0) ** 2 / n  # as statsmodels (no flooring at |b - c| = 0)
    pvalue = math.erfc(math.sqrt(statistic / 2.0))  # chi-square survival function, 1 d.o.f.
    return McNemarResult(b, c, statistic, pvalue, "chi2-cc")


def paired_mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], *, exact: bool | None = None) -> McNemarResult:
    """McNemar's test from two aligned per-item correctness lists."""
    if len(correct_a) != len(correct_b):
        raise ReptuneError(f"paired test needs the same items: {len(correct_a)} vs {len(correct_b)}")
    b = sum(1 for x, y in zip(correct_a, correct_b) if x and not y)
    c = sum(1 for x, y in zip(correct_a, correct_b) if y and not x)
    return mcnemar_test(b, c, exact=exact)


def _resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_resamples, n))


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    _z(confidence)  # validates
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Seeded percentile bootstrap CI of ``statistic`` (default: the mean) over items.

    ``statistic`` receives a ``[n_resamples, n]`` float64 array and returns ``[n_resamples]``
    (it must work along axis 1). Returns ``(nan, nan)`` for fewer than 2 values.
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if data.size < 2:
        return (math.nan, math.nan)
    indices = _resample_indices(data.size, n_resamples, seed)
    fn = statistic or (lambda x: x.mean(axis=1))
    return _percentiles(np.asarray(fn(data[indices]), dtype=np.float64), confidence)


def bootstrap_ratio_ci(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``sum(num) / sum(den)``, resampling (num, den) items together.

    Used for token-weighted means: per-window summed NLL over per-window token counts.
    """
    num = np.asarray(numerators, dtype=np.float64).reshape(-1)
    den = np.asarray(denominators, dtype=np.float64).reshape(-1)
    if num.shape != den.shape:
        raise ReptuneError("numerators and denominators differ in length")
    if num.size < 2:
        return (math.nan, math.nan)
    indices = _resample_indices(num.size, n_resamples, seed)
    return _percentiles(num[indices].sum(axis=1) / den[indices].sum(axis=1), confidence)


def paired_bootstrap_diff(
    values_a: Sequence[float], values_b: Sequence[float], *, n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``b - a`` over aligned items with its percentile bootstrap CI: ``(diff, low, high)``."""
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ReptuneError(f"paired comparison needs the same items: {a.size} vs {b.size}")
    diff = b - a
    low, high = bootstrap_ci(diff, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return (float(diff.mean()) if diff.size else math.nan, low, high)


def proportion_metric(successes: int, n: int, confidence: float = 0.95) -> dict[str, float | int | str]:
    """A proportion as a metric dict with its Wilson interval."""
    low, high = wilson_interval(successes, n, confidence)
    return {"value": successes / n if n else math.nan, "ci_low": low, "ci_high": high, "n": n, "ci": "wilson"}


def mean_metric(values: Sequence[float], *, seed: int = 0, confidence: float = 0.95) -> dict[str, float | int | str]:
    """A mean as a metric dict with its seeded percentile bootstrap interval."""
    data = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(data, seed=seed, confidence=confidence)
    return {"value": float(data.mean()) if data.size else math.nan, "ci_low": low, "ci_high": high, "n": int(data.size), "ci": "bootstrap"}
