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
  whole items); :func:`paired_bootstrap_diff` for a paired difference of means,
  :func:`independent_bootstrap_diff` for a difference of means over two different item sets.
* :func:`holm_adjust` — Holm-Bonferroni step-down adjusted p-values (equal to
  ``statsmodels.stats.multitest.multipletests(method="holm")``).
* :func:`paired_proportion_diff_ci` — Tango's score interval for the difference of two
  proportions on the same items (:func:`tango_score`); :func:`paired_noninferiority` turns it
  into a one-sided non-inferiority test (upper bound of the drop against a margin, with its p).
* :func:`paired_ratio_noninferiority` — paired bootstrap of a perplexity ratio (same windows,
  both models) against a ratio margin.
* :func:`sign_flip_test` — paired randomisation test of a mean of per-item differences
  (exact below 17 non-zero items, else seeded Monte Carlo).
* :func:`mcnemar_mde`, :func:`mean_mde`, :func:`noninferiority_mde` — minimum detectable
  effects at a run's n, alpha and power (normal approximations, stated in every claim).
* :func:`mcnemar_min_p`, :func:`sign_flip_min_p` — the smallest p-value the discrete tests can
  give at their n (Tarone 1990): a test whose smallest p is not below alpha (:func:`powerless`)
  has no power at all, at any effect size, and leaves the multiple-testing family instead of
  inflating it.
"""

from __future__ import annotations

import itertools
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
    # at 0/n and n/n the bound is exactly 0 (or 1); rounding left 6.9e-18 there
    return (0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half))


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


def mcnemar_min_p(discordant: int, *, exact: bool | None = None) -> float:
    """The smallest two-sided p :func:`mcnemar_test` can give with ``discordant`` (``b + c``) items.

    The test is conditional on the discordant count: with ``d`` of them the most extreme split
    (all ``d`` one way) gives ``2 / 2^d`` exactly, or the chi-square p of ``(d - 1)^2 / d``.
    """
    if discordant < 0:
        raise ReptuneError(f"discordant count must be non-negative, got {discordant}")
    if discordant == 0:
        return 1.0
    return mcnemar_test(discordant, 0, exact=exact).pvalue


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
    (it must work along axis 1). Returns ``(nan, nan)`` for fewer than 2 values or a value
    that is not finite (a resample holding it has no finite mean, so no interval is meaningful).
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if data.size < 2 or not np.all(np.isfinite(data)):
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


def independent_bootstrap_diff(
    values_a: Sequence[float], values_b: Sequence[float], *, n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` of two independent samples (different items) with its percentile bootstrap CI.

    Each sample is resampled on its own (a stratified bootstrap): e.g. a gain on in-distribution
    items minus the gain on held-out items. ``(diff, nan, nan)`` when a sample has fewer than 2 values.
    """
    a = np.asarray(values_a, dtype=np.float64).reshape(-1)
    b = np.asarray(values_b, dtype=np.float64).reshape(-1)
    if not a.size or not b.size:
        return (math.nan, math.nan, math.nan)
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return (diff, math.nan, math.nan)
    means_a = a[_resample_indices(a.size, n_resamples, seed)].mean(axis=1)
    means_b = b[_resample_indices(b.size, n_resamples, seed + 1)].mean(axis=1)
    low, high = _percentiles(means_a - means_b, confidence)
    return (diff, low, high)


def proportion_metric(successes: int, n: int, confidence: float = 0.95) -> dict[str, float | int | str]:
    """A proportion as a metric dict with its Wilson interval."""
    low, high = wilson_interval(successes, n, confidence)
    return {"value": successes / n if n else math.nan, "ci_low": low, "ci_high": high, "n": n, "ci": "wilson"}


def mean_metric(values: Sequence[float], *, seed: int = 0, confidence: float = 0.95) -> dict[str, float | int | str]:
    """A mean as a metric dict with its seeded percentile bootstrap interval."""
    data = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(data, seed=seed, confidence=confidence)
    return {"value": float(data.mean()) if data.size else math.nan, "ci_low": low, "ci_high": high, "n": int(data.size), "ci": "bootstrap"}


# ------------------------------------------------------------------ multiple testing and power


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (family = all of ``pvalues``).

    ``p_(i)`` sorted ascending becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting
    where the adjusted p is below alpha controls the family-wise error rate at alpha. A p that is
    not a number (NaN) counts as 1: it sorts last and is never rejected, whatever the input order.
    """
    m = len(pvalues)
    values = [float(p) if not math.isnan(float(p)) else 1.0 for p in pvalues]
    order = sorted(range(m), key=lambda i: values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted


def _z_power(alpha: float, power: float, two_sided: bool) -> tuple[float, float]:
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ReptuneError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    dist = NormalDist()
    return dist.inv_cdf(1.0 - alpha / 2.0 if two_sided else 1.0 - alpha), dist.inv_cdf(power)


def mcnemar_mde(n: int, discordant: int, *, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest accuracy difference (share of all ``n`` items) McNemar detects with ``power``.

    Connor's (1987) approximation with the observed discordance rate ``psi = discordant / n``
    (at least one discordant item is assumed): the ``delta`` solving
    ``delta sqrt(n) = z_{1-alpha/2} sqrt(psi) + z_power sqrt(psi - delta^2)``. A difference cannot
    exceed the discordance (``|delta| <= psi``: every discordant item one way), so ``None`` when
    even ``delta = psi`` is not detectable by the approximation (a handful of discordant items,
    about ``z^2``), and when ``n < 1``.
    """
    if n < 1:
        return None
    z_a, z_b = _z_power(alpha, power, True)
    psi = max(int(discordant), 1) / n

    def detectable(delta: float) -> bool:
        return delta * math.sqrt(n) >= z_a * math.sqrt(psi) + z_b * math.sqrt(max(psi - delta * delta, 0.0))

    if not detectable(psi):
        return None
    low, high = 0.0, psi
    for _ in range(100):
        mid = (low + high) / 2.0
        if detectable(mid):
            high = mid
        else:
            low = mid
    return float(high)


def mean_mde(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8, two_sided: bool = True) -> float | None:
    """Smallest mean (in the units of the per-item values) detectable: ``(z_a + z_power) sd / sqrt(n)``."""
    if n < 1 or not math.isfinite(sd):
        return None
    z_a, z_b = _z_power(alpha, power, two_sided)
    return float((z_a + z_b) * sd / math.sqrt(n))


def noninferiority_mde(n: int, discordant: int, *, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest margin a paired non-inferiority test can establish with ``power`` when nothing changed.

    One-sided at ``alpha``: ``(z_{1-alpha} + z_power) sqrt(psi / n)``, ``psi`` the observed
    discordance rate (at least one discordant item assumed).
    """
    if n < 1:
        return None
    z_a, z_b = _z_power(alpha, power, False)
    return float((z_a + z_b) * math.sqrt(max(int(discordant), 1) / n) / math.sqrt(n))


# ------------------------------------------------------------------ paired proportions


def _check_table(a: int, b: int, c: int, d: int) -> int:
    if min(a, b, c, d) < 0:
        raise ReptuneError(f"paired counts must be non-negative, got {a}, {b}, {c}, {d}")
    n = a + b + c + d
    if n == 0:
        raise ReptuneError("paired proportions need at least one item")
    return n


def tango_score(b: int, c: int, n: int, delta: float) -> float:
    """Tango's (1998) score statistic for H0 ``p1 - p2 = delta`` on paired items.

    ``b`` items only the first got right, ``c`` only the second, ``n`` items in all:
    ``T = (b - c - n delta) / sqrt(n (2 q + delta (1 - delta)))`` with ``q`` the constrained
    maximum-likelihood estimate of P(only the second right). ``T(0)`` is McNemar's z,
    ``(b - c) / sqrt(b + c)``. Decreasing in ``delta``.
    """
    if b + c == 0 and delta == 0.0:
        return 0.0
    big_a = 2.0 * n
    big_b = -b - c + (2.0 * n - b + c) * delta
    big_c = -c * delta * (1.0 - delta)
    q = (math.sqrt(max(big_b * big_b - 4.0 * big_a * big_c, 0.0)) - big_b) / (2.0 * big_a)
    var = n * (2.0 * q + delta * (1.0 - delta))
    diff = b - c - n * delta
    if var <= 0.0:
        return math.copysign(math.inf, diff) if diff else 0.0
    return diff / math.sqrt(var)


def _tango_bound(b: int, c: int, n: int, z: float, upper: bool) -> float:
    """The ``delta`` where ``T(delta) = -z`` (upper) or ``+z`` (lower), by bisection."""
    theta = (b - c) / n
    low, high = (theta, 1.0) if upper else (-1.0, theta)
    target = -z if upper else z
    for _ in range(200):
        mid = (low + high) / 2.0
        if tango_score(b, c, n, mid) > target:  # T decreases in delta: mid lies below the bound
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def paired_proportion_diff_ci(a: int, b: int, c: int, d: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """``p1 - p2`` on the same items with Tango's asymptotic score interval.

    Counts over ``n`` items: ``a`` both right, ``b`` only the first right, ``c`` only the
    second right, ``d`` neither; ``p1 = (a + b) / n``, ``p2 = (a + c) / n``. The interval is
    ``{delta: |T(delta)| <= z}`` (:func:`tango_score`), recommended for paired proportions by
    Fagerland, Lydersen and Laake (2014); it has width even when no item is discordant
    (then ``[-z^2 / (n + z^2), z^2 / (n + z^2)]``). Returns ``(diff, low, high)``.
    """
    n = _check_table(a, b, c, d)
    z = _z(confidence)
    return ((b - c) / n, _tango_bound(b, c, n, z, upper=False), _tango_bound(b, c, n, z, upper=True))


def paired_noninferiority(a: int, b: int, c: int, d: int, margin: float, *, alpha: float = 0.05) -> dict[str, float | int]:
    """Non-inferiority of a second score to a first on the same items: is the drop below ``margin``?

    The drop is ``p1 - p2`` (first minus second; counts as :func:`paired_proportion_diff_ci`).
    ``upper`` is the one-sided ``1 - alpha`` upper confidence bound of the drop (Tango score);
    ``pvalue = Phi(T(margin))`` is the one-sided score-test p of H0 ``drop >= margin``, so
    ``pvalue <= alpha`` exactly when ``upper <= margin``.
    """
    n = _check_table(a, b, c, d)
    _z(1.0 - 2.0 * alpha)
    z = NormalDist().inv_cdf(1.0 - alpha)
    upper = _tango_bound(b, c, n, z, upper=True)
    pvalue = NormalDist().cdf(tango_score(b, c, n, float(margin))) if margin < 1.0 else 0.0
    return {"drop": (b - c) / n, "upper": upper, "margin": float(margin), "pvalue": float(pvalue), "n": n, "discordant": b + c, "alpha": alpha}


def paired_ratio_noninferiority(
    nll_first: Sequence[float], nll_second: Sequence[float], tokens: Sequence[float], margin: float, *,
    alpha: float = 0.05, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
) -> dict[str, float | int]:
    """Is ``ppl_second / ppl_first`` below ``margin``? Paired bootstrap over the same windows.

    ``nll_*`` are per-window summed NLLs (nats) of the two models on the same windows,
    ``tokens`` the per-window target-token counts. The ratio is
    ``exp(sum(nll_second) / sum(tokens) - sum(nll_first) / sum(tokens))``; windows are resampled
    whole and together for both models. ``upper`` is the ``1 - alpha`` percentile of the
    bootstrap ratios (one-sided bound), ``pvalue`` the share of resamples at or above ``margin``
    (at least ``1 / (n_resamples + 1)``), ``se_log`` the bootstrap SD of the log ratio.
    """
    first = np.asarray(nll_first, dtype=np.float64).reshape(-1)
    second = np.asarray(nll_second, dtype=np.float64).reshape(-1)
    count = np.asarray(tokens, dtype=np.float64).reshape(-1)
    if not first.shape == second.shape == count.shape:
        raise ReptuneError("perplexity ratio needs the same windows for both models")
    if margin <= 0 or not 0.0 < alpha < 0.5:
        raise ReptuneError(f"ratio margin must be positive and alpha in (0, 0.5), got {margin}, {alpha}")
    if first.size < 2 or count.sum() <= 0:
        return {"ratio": math.nan, "upper": math.nan, "margin": float(margin), "pvalue": math.nan, "n": int(first.size), "se_log": math.nan}
    log_ratio = (second.sum() - first.sum()) / count.sum()
    idx = _resample_indices(first.size, n_resamples, seed)
    samples = (second[idx].sum(axis=1) - first[idx].sum(axis=1)) / count[idx].sum(axis=1)
    upper = float(np.percentile(samples, 100.0 * (1.0 - alpha)))
    pvalue = max(float(np.mean(samples >= math.log(margin))), 1.0 / (n_resamples + 1))
    return {"ratio": float(math.exp(log_ratio)), "upper": math.exp(upper), "margin": float(margin), "pvalue": pvalue,
            "n": int(first.size), "se_log": float(samples.std(ddof=1))}


EXACT_FLIPS_UP_TO = 16
_TIE = 1e-9  # relative to sum |d|: below it a difference is float noise, and observed sums within it are ties
_FLIP_CHUNK = 1000  # Monte Carlo sign flips drawn per matrix product


def sign_flip_test(differences: Sequence[float], *, n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided paired randomisation test of ``mean(differences) == 0``.

    Under H0 each item's difference is as likely negated; p is the share of sign assignments
    whose |mean| reaches the observed one. Exact (all ``2^k`` flips of the ``k`` non-zero
    items) for ``k <= 16``, else ``(1 + hits) / (1 + n_resamples)`` over seeded random flips.
    A difference below ``1e-9`` of the total ``sum |d|`` counts as zero (float noise: flipping it
    cannot change the statistic), so the test does not depend on the differences' scale.
    Returns 1.0 when every difference is zero, NaN when one is not finite (no test).
    """
    values = _nonzero(differences)
    if values is None:
        return math.nan
    if values.size == 0:
        return 1.0
    observed = abs(values.sum()) - _TIE * float(np.abs(values).sum())
    if values.size <= EXACT_FLIPS_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=int(values.size))))
        return float(np.mean(np.abs(signs @ values) >= observed))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, _FLIP_CHUNK):  # chunks of one seeded stream: memory ~ chunk x k, not n_resamples x k
        signs = rng.choice(np.array([1.0, -1.0]), size=(min(_FLIP_CHUNK, n_resamples - start), values.size))
        hits += int(np.sum(np.abs(signs @ values) >= observed))
    return (1 + hits) / (1 + n_resamples)


def _nonzero(differences: Sequence[float]) -> np.ndarray | None:
    """The differences the sign-flip test counts (``[k]`` float64), ``None`` when one is not finite."""
    values = np.asarray(differences, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        return None
    return values[np.abs(values) > _TIE * float(np.abs(values).sum())]


def powerless(min_p: float | None, alpha: float) -> bool:
    """Whether a test whose smallest attainable p is ``min_p`` can never reject at ``alpha``
    (rejection needs p < alpha). Unknown (``None``) or non-finite: not known to be powerless."""
    return min_p is not None and math.isfinite(float(min_p)) and float(min_p) >= alpha


def sign_flip_min_p(differences: Sequence[float], *, n_resamples: int = 10000) -> float:
    """The smallest p :func:`sign_flip_test` can give on these differences, whatever their signs.

    Only the ``k`` items the test counts (non-zero beyond float noise, as there) matter: exactly,
    every item the same way is reached by 2 of the ``2^k`` sign assignments, so
    ``min(1, 2 / 2^k)``; by Monte Carlo (``k > 16``) ``1 / (1 + n_resamples)``.
    ``[1, 0, 0, 1]`` (two of four paired 0/1 items differ) can never go below p = 0.5. NaN when
    a difference is not finite (as the test).
    """
    values = _nonzero(differences)
    if values is None:
        return math.nan
    k = int(values.size)
    if k == 0:
        return 1.0
    if k <= EXACT_FLIPS_UP_TO:
        return min(1.0, 2.0 / float(1 << k))
    return 1.0 / (1 + n_resamples)
