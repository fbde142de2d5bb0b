"""The transition report from its per-host rows: counts, clean baselines, verdicts.

The units are hosts: a host at a transition (or at a release's cold boots) is one unit,
affected when at least one of its observed boots there crashed (warned), or one of its
attempts there failed to land. The baseline of ``P -> R`` is one no other transition
under test can poison:

- crashes and warnings: R's boots through no transition (cold, or from a release not
  known) (``"scope": "cold"``);
  when those come from fewer hosts than a verdict needs, R's boots from the other
  previous releases are added, but for those left out (below) (``"release"``);
- landing: the attempts into R from other previous releases, or, when too few hosts
  made them, every other transition's attempts in the fleet (``"fleet"``), in both
  cases but for those left out.

Left out are the transitions called worse in that rate and those merely suspect (above
their own baseline at p < 0.05 at this look): the report is repeated with them left out
of every baseline until that set stops changing (docs/verdicts.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from khod.fleet.stats import Comparison, Thresholds, compare, correct, overall
from khod.records import TransitionVerdict

RATES = ("crash", "warning", "land_failure")  # the rates each transition is tested on
_RANK = {TransitionVerdict.WORSE: 0, None: 1, TransitionVerdict.NO_EVIDENCE: 1}
Key = tuple[str | None, str]


@dataclass(frozen=True)
class Transition:
    previous_release: str | None  # None: the cold-boot baseline of a release
    release: str
    boots: int
    hosts: int
    crashes: int
    crash_rate: float | None  # of the observed boots; None: none observed
    first_booted_at: int | None
    last_booted_at: int | None
    attempts: int = 0
    landed: int = 0
    failed_to_land: int = 0
    rejected: int = 0
    without_handover: int = 0
    logged_boots: int = 0  # observed boots whose warnings were counted
    warned_boots: int = 0  # ... with at least one
    warnings: int = 0  # warning lines in all of them
    rates: dict[str, Comparison] = field(default_factory=dict)
    verdict: TransitionVerdict | None = None  # None: a baseline row
    observed_boots: int = 0  # whose window is over: the rates' boots
    hosts_affected: int = 0  # hosts with at least one crashed boot here
    window: int = 0  # seconds after landing before a boot is observed
    derived_boots: int = 0  # of ``boots``, those whose chain khod derived (attempt, derived)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "previous_release",
                "release",
                "boots",
                "hosts",
                "crashes",
                "crash_rate",
                "first_booted_at",
                "last_booted_at",
                "attempts",
                "landed",
                "failed_to_land",
                "rejected",
                "without_handover",
                "logged_boots",
                "warned_boots",
                "warnings",
                "observed_boots",
                "hosts_affected",
                "window",
                "derived_boots",
            )
        }
        out["rates"] = {k: c.as_json() for k, c in self.rates.items()}
        out["verdict"] = None if self.verdict is None else str(self.verdict)
        return out


@dataclass
class Group:
    """One (previous_release, release): its counts and which hosts did what."""

    prev: str | None
    release: str
    n: dict[str, int] = field(default_factory=dict)
    first: int | None = None
    last: int | None = None
    hosts: dict[str, set[str]] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)  # host counts, from the rollups

    def add(self, k: str, v: int) -> None:
        self.n[k] = self.n.get(k, 0) + v

    def host(self, k: str, machine: str, when: bool = True) -> None:
        if when:
            self.hosts.setdefault(k, set()).add(machine)

    def h(self, k: str) -> int:
        if k in self.counted:
            return self.counted[k]
        return len(self.hosts.get(k, ()))


# rate -> (boot/attempt counts k, n; host sets k, n)
_WHAT = {
    "crash": ("observed_crashes", "observed_boots", "crashed", "observed"),
    "warning": ("warned_boots", "logged_boots", "warned", "logged"),
    "land_failure": ("not_landed", "attempts", "failed", "attempted"),
}


_BOOT_N = (
    "boots",
    "crashes",
    "observed_boots",
    "observed_crashes",
    "logged_boots",
    "warned_boots",
    "warnings",
)
_ATTEMPT_N = ("attempts", "landed", "failed_to_land", "rejected", "without_handover")
# the report's queries' columns, in their order
BOOT_COLUMNS = ("previous_release", "release", "machine_id", *_BOOT_N, "first", "last")
ATTEMPT_COLUMNS = ("previous_release", "release", "machine_id", *_ATTEMPT_N)
# host sets: (name, index in _BOOT_N); crashed: in an observed boot, affected: in any
_BOOT_H = (("observed", 2), ("crashed", 3), ("logged", 4), ("warned", 5), ("affected", 1))
_TOTAL_H = ("all", "observed", "crashed", "logged", "warned", "affected")


def groups(boot_rows: Sequence[Any], attempt_rows: Sequence[Any]) -> dict[Key, Group]:
    """The per-host rows summed by transition, with the sets of hosts. A hot loop: the
    rows are unpacked by position, in the order of the report's two queries
    (``BOOT_COLUMNS``, ``ATTEMPT_COLUMNS``)."""
    out: dict[Key, Group] = {}
    for prev, rel, m, *counts, first, last in boot_rows:
        key = (prev, rel)
        g = out.get(key)
        if g is None:
            g = out[key] = Group(*key, n=dict.fromkeys(_BOOT_N, 0))
            g.hosts = {k: set() for k in ("all", *(h for h, _ in _BOOT_H))}
        v = [int(x or 0) for x in counts]
        n = g.n
        for k, x in zip(_BOOT_N, v, strict=True):
            n[k] += x
        hs = g.hosts
        hs["all"].add(m)
        for k, i in _BOOT_H:
            if v[i]:
                hs[k].add(m)
        if first is not None:
            g.first = int(first) if g.first is None else min(g.first, int(first))
            g.last = int(last) if g.last is None else max(g.last, int(last))
    for prev, rel, m, *counts in attempt_rows:
        if rel is None:
            continue
        key = (prev, rel)
        g = out.setdefault(key, Group(*key))
        v = [int(x or 0) for x in counts]
        for k, x in zip(_ATTEMPT_N, v, strict=True):
            g.add(k, x)
        failed = v[2] + v[3]  # failed to land, rejected
        g.add("not_landed", failed)
        g.host("attempted", m)
        g.host("failed", m, failed > 0)
    return out


def totals(boot_rows: Sequence[Any], attempt_rows: Sequence[Any]) -> dict[Key, Group]:
    """The groups from rows already summed by transition, with their host counts
    (``khod.fleet.rollup``): the boots' ``(previous_release, release, *_BOOT_N, first,
    last, *hosts)`` in the order of ``_TOTAL_H``; the attempts' ``(previous_release,
    release, *_ATTEMPT_N, attempted, failed)``."""
    out: dict[Key, Group] = {}
    nb = len(_BOOT_N)
    for prev, rel, *rest in boot_rows:
        v = [int(x or 0) for x in rest[:nb]]
        first, last = rest[nb], rest[nb + 1]
        g = out[(prev, rel)] = Group(prev, rel, n=dict(zip(_BOOT_N, v, strict=True)))
        g.first = None if first is None else int(first)
        g.last = None if last is None else int(last)
        hs = [int(x or 0) for x in rest[nb + 2 :]]
        g.counted.update(zip(_TOTAL_H, hs, strict=True))
    na = len(_ATTEMPT_N)
    for prev, rel, *rest in attempt_rows:
        key = (prev, rel)
        g = out.setdefault(key, Group(*key))
        v = [int(x or 0) for x in rest[:na]]
        for k, x in zip(_ATTEMPT_N, v, strict=True):
            g.add(k, x)
        g.add("not_landed", v[2] + v[3])
        g.counted["attempted"], g.counted["failed"] = (int(x or 0) for x in rest[na:])
    return out


def _pool(gs: Iterable[Group], rate: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(events, boots or attempts), (affected, units): a host in each group is a unit."""
    k, n, hk, hn = _WHAT[rate]
    gs = list(gs)
    return (
        (sum(g.n.get(k, 0) for g in gs), sum(g.n.get(n, 0) for g in gs)),
        (sum(g.h(hk) for g in gs), sum(g.h(hn) for g in gs)),
    )


def baseline(
    g: Group, rate: str, by_key: dict[Key, Group], worse: set[Key], th: Thresholds
) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The scope, the counts and the host counts of ``g``'s clean baseline in ``rate``."""
    others = [
        o
        for o in by_key.values()
        if o.prev is not None and o is not g and (o.prev, o.release) not in worse
    ]
    into = [o for o in others if o.release == g.release]
    if rate == "land_failure":
        scope, pool = "release", into
        if _pool(pool, rate)[1][1] < max(th.min_n, 1):
            scope, pool = "fleet", others
    else:
        cold = [by_key[k] for k in ((None, g.release),) if k in by_key]
        scope, pool = "cold", cold
        if _pool(pool, rate)[1][1] < max(th.min_n, 1):
            scope, pool = "release", cold + into
    counts, hosts = _pool(pool, rate)
    return scope, counts, hosts


def _compare(
    by_key: dict[Key, Group], worse: dict[str, set[Key]], th: Thresholds
) -> dict[Key, dict[str, Comparison]]:
    out: dict[Key, dict[str, Comparison]] = {}
    for key, g in by_key.items():
        rates = {}
        for rate in RATES if g.prev is not None else RATES[:2]:
            k, n, hk, hn = _WHAT[rate]
            if g.prev is None:
                rates[rate] = compare(g.n.get(k, 0), g.n.get(n, 0), None, th)
                continue
            scope, base, base_hosts = baseline(g, rate, by_key, worse[rate], th)
            own = (g.h(hk), g.h(hn))
            rates[rate] = compare(
                g.n.get(k, 0), g.n.get(n, 0), base, th, scope, hosts=own, base_hosts=base_hosts
            )
        out[key] = rates
    # one report, one family: e-BH over every rate of every transition
    flat = [(key, r, c) for key, rates in out.items() for r, c in rates.items()]
    fixed = correct([c for _, _, c in flat], th.alpha)
    for (key, r, _), c in zip(flat, fixed, strict=True):
        out[key][r] = c
    return out


SUSPECT = 0.05  # a rate above its baseline at this p (one look) is left out of the others'


def suspect(c: Comparison) -> bool:
    """Called worse, or above its baseline at p < SUSPECT: not clean enough to be a
    baseline for another transition."""
    if c.verdict == TransitionVerdict.WORSE:
        return True
    h, b = c.hosts, c.baseline_hosts
    if c.p_value is None or h is None or b is None or not h.of or not b.of:
        return False
    return c.p_value < SUSPECT and h.count * b.of > b.count * h.of


def build(
    boot_rows: Sequence[Any], attempt_rows: Sequence[Any], th: Thresholds, include_cold: bool
) -> list[Transition]:
    """The report from the two queries' per-host rows."""
    return report(groups(boot_rows, attempt_rows), th, include_cold)


def report(by_key: dict[Key, Group], th: Thresholds, include_cold: bool) -> list[Transition]:
    """The report from the transitions' counts."""
    worse: dict[str, set[Key]] = {r: set() for r in RATES}
    for _ in range(8):  # leave the worse out of the baselines until that settles
        rates = _compare(by_key, worse, th)
        now = {r: {k for k, rs in rates.items() if r in rs and suspect(rs[r])} for r in RATES}
        if now == worse:
            break
        worse = now
    out = []
    for key, g in by_key.items():
        prev, rel = key
        if prev is None and not include_cold:
            continue
        n = g.n
        observed = n.get("observed_boots", 0)
        out.append(
            Transition(
                previous_release=prev,
                release=rel,
                boots=n.get("boots", 0),
                hosts=g.h("all"),
                crashes=n.get("crashes", 0),
                crash_rate=n.get("observed_crashes", 0) / observed if observed else None,
                first_booted_at=g.first,
                last_booted_at=g.last,
                attempts=n.get("attempts", 0),
                landed=n.get("landed", 0),
                failed_to_land=n.get("failed_to_land", 0),
                rejected=n.get("rejected", 0),
                without_handover=n.get("without_handover", 0),
                logged_boots=n.get("logged_boots", 0),
                warned_boots=n.get("warned_boots", 0),
                warnings=n.get("warnings", 0),
                rates=rates[key],
                verdict=None if prev is None else overall(list(rates[key].values())),
                observed_boots=observed,
                hosts_affected=g.h("affected"),
                window=th.window,
            )
        )
    out.sort(
        key=lambda t: (
            _RANK.get(t.verdict, 2),
            -(t.crash_rate or 0.0),
            -t.boots,
            -t.attempts,
            t.previous_release or "",
            t.release,
        )
    )
    return out
