"""Rates with their confidence, and whether a transition's rate differs from its
baseline's.

- Each rate ``k / n`` comes with its Wilson score interval (95% by default): unlike
  ``p +- z*sqrt(p(1-p)/n)`` it stays inside [0, 1] and is honest at 0 of 3 or 3 of 3.
- The units compared are hosts, not boots (one crash-looping machine is one host):
  k1 of n1 hosts of the transition against k2 of n2 hosts of its baseline.
- ``p_value`` is Fisher's exact test on that 2x2 table, two-sided by doubling the
  smaller one-sided p-value: exact at small counts, where a z-test is not. It is shown,
  and it is right for one look at one transition; the verdict is not built on it.
- The verdict is built on an e-value (``e_value``): the likelihood ratio of the
  transition's hosts under a rate some times the baseline's (odds ratios
  ``ODDS_RATIOS``, averaged) against the baseline's own rate, taken at the top of its
  65% interval (``Thresholds.bound``; at its bottom for ``better``), so that a small
  baseline's luck is not taken for its rate. Under a transition no worse than
  its baseline it is a test supermartingale in the hosts: by Ville's inequality it ever
  reaches 1/alpha, over any number of reports on growing data, with chance at most
  alpha. Across the transitions of one report, e-BH (Wang & Ramdas 2022, the e-value
  Benjamini-Hochberg, valid under any dependence) keeps the false discovery rate at
  alpha: the k largest e-values are ``worse`` when the k-th is >= m / (alpha k).
- A verdict needs at least ``min_n`` hosts on each side; anything less is ``no
  evidence``. docs/verdicts.md argues the choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from khod.records import TransitionVerdict


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.01  # false alarms: per transition over all looks, FDR per report
    min_n: int = 5  # hosts needed on each side for a verdict
    confidence: float = 0.95  # of the intervals shown
    bound: float = 0.65  # of the baseline's interval whose top (bottom) the test is against
    window: int = 86400  # seconds after landing before a boot counts for the rates


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

    observed: Rate  # boots (attempts)
    baseline: Rate | None  # None: a baseline row itself
    p_value: float | None  # two-sided, on hosts; None without a baseline
    verdict: TransitionVerdict | None
    scope: str = "release"  # the baseline: cold boots, the same release, the whole fleet
    hosts: Rate | None = None  # hosts with at least one event / hosts
    baseline_hosts: Rate | None = None
    e_value: float = 1.0  # against "no worse than the baseline"
    e_value_better: float = 1.0  # against "no better than the baseline"
    enough: bool = False  # min_n hosts on each side: the test takes part in e-BH

    def as_json(self) -> dict[str, Any]:
        base = None if self.baseline is None else {**self.baseline.as_json(), "scope": self.scope}
        if base is not None and self.baseline_hosts is not None:
            base["hosts"] = self.baseline_hosts.as_json()
        return {
            **self.observed.as_json(),
            "baseline": base,
            "p_value": self.p_value,
            "verdict": None if self.verdict is None else str(self.verdict),
            "hosts": None if self.hosts is None else self.hosts.as_json(),
            "e_value": self.e_value,
            "e_value_better": self.e_value_better,
        }


ODDS_RATIOS = (1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0, 1000.0)
E_MAX = 1e300  # JSON has no infinity


def e_value(k: int, n: int, p0: float, worse: bool = True) -> float:
    """The mixture likelihood ratio of k events in n hosts: rates whose odds are
    ``ODDS_RATIOS`` times p0's (divided by them when not ``worse``), equally weighted,
    against p0. Each term is a supermartingale under any rate at or below p0 (above
    it, when not ``worse``), and so is their mean."""
    if n == 0 or not 0.0 < p0 < 1.0:
        return 1.0
    odds0 = p0 / (1 - p0)
    logs = []
    for r in ODDS_RATIOS:
        odds = odds0 * r if worse else odds0 / r
        p = odds / (1 + odds)
        logs.append(k * math.log(p / p0) + (n - k) * math.log((1 - p) / (1 - p0)))
    top = max(logs)
    log_e = top + math.log(sum(math.exp(x - top) for x in logs) / len(logs))
    return E_MAX if log_e > math.log(E_MAX) else math.exp(log_e)


def e_bh(evalues: list[float], alpha: float) -> list[bool]:
    """e-BH: the k largest are discoveries, k the largest with e_(k) >= m / (alpha k)."""
    m = len(evalues)
    order = sorted(range(m), key=lambda i: -evalues[i])
    k = max((j + 1 for j, i in enumerate(order) if evalues[i] * alpha * (j + 1) >= m), default=0)
    chosen = set(order[:k])
    return [i in chosen for i in range(m)]


def compare(
    k1: int,
    n1: int,
    base: tuple[int, int] | None,
    th: Thresholds,
    scope: str = "release",
    *,
    hosts: tuple[int, int] | None = None,
    base_hosts: tuple[int, int] | None = None,
) -> Comparison:
    """Boots (attempts) k1 of n1 against ``base``; the test is on ``hosts`` against
    ``base_hosts`` (the boots themselves when not given). The verdict is ``no evidence``
    until ``correct`` has seen every comparison of the report."""
    observed = rate(k1, n1, th.confidence)
    if base is None:
        return Comparison(observed, None, None, None)
    hk1, hn1 = hosts or (k1, n1)
    hk2, hn2 = base_hosts or base
    baseline = rate(*base, th.confidence)
    h1, h2 = rate(hk1, hn1, th.confidence), rate(hk2, hn2, th.confidence)
    p = None
    if hn1 and hn2:
        p_ge, p_le = fisher(hk1, hn1, hk2, hn2)
        p = min(1.0, 2 * min(p_ge, p_le))
    enough = hn1 >= max(th.min_n, 1) and hn2 >= max(th.min_n, 1)
    low, high = wilson(hk2, hn2, th.bound)
    return Comparison(
        observed,
        baseline,
        p,
        TransitionVerdict.NO_EVIDENCE,
        scope,
        h1,
        h2,
        e_value(hk1, hn1, high) if enough else 1.0,
        e_value(hk1, hn1, low, worse=False) if enough else 1.0,
        enough,
    )


def correct(comparisons: list[Comparison], alpha: float) -> list[Comparison]:
    """The verdicts of one report's comparisons: e-BH at alpha over those with enough
    hosts, separately for worse and for better (worse wins)."""
    from dataclasses import replace  # noqa: PLC0415

    tested = [i for i, c in enumerate(comparisons) if c.enough]
    worse = e_bh([comparisons[i].e_value for i in tested], alpha)
    better = e_bh([comparisons[i].e_value_better for i in tested], alpha)
    out = list(comparisons)
    for i, w, b in zip(tested, worse, better, strict=True):
        v = TransitionVerdict.WORSE if w else TransitionVerdict.BETTER if b else None
        if v is not None:
            out[i] = replace(out[i], verdict=v)
    return out


def overall(comparisons: list[Comparison]) -> TransitionVerdict:
    """worse if any rate is worse; better if one is better and none is worse."""
    verdicts = {c.verdict for c in comparisons}
    for v in (TransitionVerdict.WORSE, TransitionVerdict.BETTER):
        if v in verdicts:
            return v
    return TransitionVerdict.NO_EVIDENCE
