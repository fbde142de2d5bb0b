"""Rates with their confidence, and whether a transition's rate differs from its
baseline's.

- Each rate ``k / n`` comes with its Wilson score interval (95% by default): unlike
  ``p +- z*sqrt(p(1-p)/n)`` it stays inside [0, 1] and is honest at 0 of 3 or 3 of 3.
- The verdict is Fisher's exact test on the 2x2 table (transition: k1 of n1; baseline:
  k2 of n2), two-sided by doubling the smaller one-sided p-value. It is exact at the
  small counts that crash rates live at, where a two-proportion z-test is not (1 crash
  in 20 boots against a 0.4% baseline is z = 3.2, "significant", while the exact
  chance of seeing it is 8%). ``worse``/``better`` needs p < alpha and at least
  ``min_n`` on each side; anything less is ``no evidence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from khod.records import TransitionVerdict


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.01  # two-sided significance of a verdict
    min_n: int = 20  # boots (attempts) needed on each side for a verdict
    confidence: float = 0.95  # of the intervals shown


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Fisher's exact test: (P(X >= k1), P(X <= k1)) for X the first row's count under
    the hypergeometric law the margins give (no difference between the rows).

    Only the tail away from the distribution's centre is summed (terms shrink
    geometrically there, so the sum stops early); the other is 1 minus it."""
    big_n, big_k = n1 + n2, k1 + k2
    lo, hi = max(0, n1 - (big_n - big_k)), min(n1, big_k)
    log_base = _log_comb(big_k, k1) + _log_comb(big_n - big_k, n1 - k1) - _log_comb(big_n, n1)

    def ratio_up(x: int) -> float:  # pmf(x + 1) / pmf(x)
        return (big_k - x) * (n1 - x) / ((x + 1) * (big_n - big_k - n1 + x + 1))

    upper = k1 * big_n >= n1 * big_k  # k1 at or above the mean: the upper tail is small
    total, term, x = 1.0, 1.0, k1
    while (x < hi) if upper else (x > lo):
        term *= ratio_up(x) if upper else 1 / ratio_up(x - 1)
        x += 1 if upper else -1
        total += term
        if term < total * 1e-17:
            break
    small = min(1.0, math.exp(log_base + math.log(total)))
    other = min(1.0, max(0.0, 1.0 - small + math.exp(log_base)))
    return (small, other) if upper else (other, small)


@dataclass(frozen=True)
class Rate:
    count: int
    of: int
    low: float
    high: float

    @property
    def rate(self) -> float | None:
        return self.count / self.of if self.of else None

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "of": self.of,
            "rate": self.rate,
            "interval": [self.low, self.high],
        }


def rate(k: int, n: int, confidence: float = 0.95) -> Rate:
    return Rate(k, n, *wilson(k, n, confidence))


@dataclass(frozen=True)
class Comparison:
    """One rate of a transition against the same rate of its baseline."""

    observed: Rate
    baseline: Rate | None  # None: a baseline row itself
    p_value: float | None  # two-sided; None without a baseline
    verdict: TransitionVerdict | None
    scope: str = "release"  # what the baseline is: the same release, or the whole fleet

    def as_json(self) -> dict[str, Any]:
        base = None if self.baseline is None else {**self.baseline.as_json(), "scope": self.scope}
        return {
            **self.observed.as_json(),
            "baseline": base,
            "p_value": self.p_value,
            "verdict": None if self.verdict is None else str(self.verdict),
        }


def compare(
    k1: int, n1: int, base: tuple[int, int] | None, th: Thresholds, scope: str = "release"
) -> Comparison:
    observed = rate(k1, n1, th.confidence)
    if base is None:
        return Comparison(observed, None, None, None)
    k2, n2 = base
    baseline = rate(k2, n2, th.confidence)
    if n1 == 0 or n2 == 0:
        return Comparison(observed, baseline, None, TransitionVerdict.NO_EVIDENCE, scope)
    p_ge, p_le = fisher(k1, n1, k2, n2)
    p = min(1.0, 2 * min(p_ge, p_le))
    verdict = TransitionVerdict.NO_EVIDENCE
    if p < th.alpha and n1 >= th.min_n and n2 >= th.min_n:
        worse = k1 * n2 > k2 * n1
        verdict = TransitionVerdict.WORSE if worse else TransitionVerdict.BETTER
    return Comparison(observed, baseline, p, verdict, scope)


def overall(comparisons: list[Comparison]) -> TransitionVerdict:
    """worse if any rate is worse; better if one is better and none is worse."""
    verdicts = {c.verdict for c in comparisons}
    for v in (TransitionVerdict.WORSE, TransitionVerdict.BETTER):
        if v in verdicts:
            return v
    return TransitionVerdict.NO_EVIDENCE
