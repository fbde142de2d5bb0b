"""A seeded fleet simulator for the transition report's verdicts.

    python bench/fleet_sim.py [--fleets 40] [--hosts 300] [--seed 1]

Each fleet: --hosts hosts over a simulated week. Every host runs a release and
cold-boots now and then (maintenance, and after every crash); four rollouts (day 0.3,
2.5, 5 and 6.7: the last one starts inside the window) each take a random 60% of the
hosts, at random times over 1.5 days, from whatever they run to the new release
(kexec with a KHO handover). Per boot: a crash with chance ``crash`` at an
exponential time after landing (mean 6 h), a kernel warning with chance ``warn``; per
attempt: a failure to land with chance ``land``. One host per fleet crash-loops (70%
of its boots crash, whatever the release).

The report is run every 15 simulated minutes on what a fleet database would hold then
(a crash is known once the next boot found its record; an attempt once judged), by
``khod.fleet.verdicts.build`` (the new verdicts), and by the report as it was (boots,
Fisher p < alpha, 20 boots on each side, the baseline every other boot of the release,
no correction), in the same run. Printed:

- healthy fleets: the fraction of transitions ever called worse over the week;
- a bad transition (the second rollout's main transition, its crash rate 2x, 3x, 5x
  the fleet's; its land-failure rate the same): in how many of the fleets it was called
  worse, and the median hosts that had taken it and hours since its rollout began.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from khod.fleet.stats import Thresholds, fisher
from khod.fleet.verdicts import build

H, D = 3600.0, 86400.0
WEEK = 7 * D
LOOK = 900.0
ROLLOUTS = (0.3 * D, 2.5 * D, 5.0 * D, 6.7 * D)


@dataclass
class Boot:
    machine: str
    prev: str | None  # None: a cold boot
    release: str
    start: float
    end: float  # when the next boot began (inf: still running at the end)
    crashed: bool
    warned: bool


@dataclass
class Attempt:
    machine: str
    prev: str
    release: str
    at: float
    failed: bool


@dataclass(frozen=True)
class Rates:
    crash: float = 0.02
    warn: float = 0.05
    land: float = 0.02
    cold_per_day: float = 0.15


def simulate(
    rng: random.Random, hosts: int, rates: Rates, bad: tuple[str, str] | None, factor: float
) -> tuple[list[Boot], list[Attempt]]:
    boots: list[Boot] = []
    attempts: list[Attempt] = []
    looping = 0  # the crash-looping host

    def crash_p(m: int, prev: str | None, rel: str) -> float:
        if m == looping:
            return 0.7
        if bad is not None and (prev, rel) == bad:
            return min(1.0, rates.crash * factor)
        return rates.crash

    for m in range(hosts):
        name = f"{m:032x}"
        release = "r0" if m % 2 else "r1"
        events: list[tuple[float, str]] = []
        for i, t0 in enumerate(ROLLOUTS):
            if rng.random() < 0.6:
                events.append((t0 + rng.uniform(0, 1.5 * D), f"r{i + 2}"))
        t = 0.0
        while True:
            t += rng.expovariate(rates.cold_per_day / D)
            if t >= WEEK:
                break
            events.append((t, ""))
        events.sort()
        start, prev = -rng.uniform(0, 2 * D), None
        for at, target in [*events, (float("inf"), "")]:
            # the running boot, until the next event or its crash
            while True:
                p = crash_p(m, prev, release)
                crash_at = start + rng.expovariate(1 / (6 * H)) if rng.random() < p else None
                warned = rng.random() < rates.warn
                if crash_at is not None and crash_at < at and crash_at < WEEK:
                    boots.append(Boot(name, prev, release, start, crash_at, True, warned))
                    start, prev = crash_at + 600, None  # back up cold
                    continue
                break
            if at == float("inf"):
                boots.append(Boot(name, prev, release, start, at, False, warned))
                break
            if not target:  # maintenance: a cold boot of the same release
                boots.append(Boot(name, prev, release, start, at, False, warned))
                start, prev = at + 120, None
                continue
            if target == release:
                continue
            land = rates.land * (factor if bad == (release, target) else 1)
            failed = rng.random() < land
            attempts.append(Attempt(name, release, target, at + 120, failed))
            boots.append(Boot(name, prev, release, start, at, False, warned))
            start, prev = at + 60, (None if failed else release)
            release = target  # a failed landing comes up cold in the new release
    return boots, attempts


def rows_at(
    boots: list[Boot], attempts: list[Attempt], now: float, window: float
) -> tuple[list[Any], list[Any]]:
    """What the report's two queries would return at ``now``."""
    agg: dict[tuple[str | None, str, str], dict[str, Any]] = {}
    for b in boots:
        if b.start > now or b.start < 0:
            continue
        d = agg.setdefault(
            (b.prev, b.release, b.machine),
            dict.fromkeys(
                (
                    "boots",
                    "crashes",
                    "observed_boots",
                    "observed_crashes",
                    "logged_boots",
                    "warned_boots",
                    "warnings",
                ),
                0,
            )
            | {"first_booted_at": int(b.start), "last_booted_at": int(b.start)},
        )
        crashed = b.crashed and b.end + 600 <= now  # found by the next boot
        observed = b.start <= now - window
        d["boots"] += 1
        d["crashes"] += crashed
        d["last_booted_at"] = int(b.start)
        if observed:
            d["observed_boots"] += 1
            d["observed_crashes"] += crashed
            d["logged_boots"] += 1
            d["warned_boots"] += b.warned
            d["warnings"] += b.warned
    boot_rows = [(p, r, m, *d.values()) for (p, r, m), d in agg.items()]
    att: dict[tuple[str, str, str], dict[str, int]] = {}
    for a in attempts:
        if a.at > now:
            continue
        d2 = att.setdefault((a.prev, a.release, a.machine), {"attempts": 0, "failed": 0})
        d2["attempts"] += 1
        d2["failed"] += a.failed
    attempt_rows = [
        (p, r, m, d2["attempts"], d2["attempts"] - d2["failed"], d2["failed"], 0, 0)
        for (p, r, m), d2 in att.items()
    ]
    return boot_rows, attempt_rows


def old_worse(boots: list[Boot], attempts: list[Attempt], now: float) -> set[tuple[str, str]]:
    """The report as it was: boots (a running boot counts as not crashed), the baseline
    every other boot of the release (cold and from other releases), Fisher p < 0.01
    with 20 on each side, no correction."""
    n: dict[tuple[str | None, str], list[int]] = {}
    for b in boots:
        if 0 <= b.start <= now:
            c = n.setdefault((b.prev, b.release), [0, 0, 0])
            c[0] += 1
            c[1] += b.crashed and b.end + 600 <= now
            c[2] += b.warned
    a: dict[tuple[str, str], list[int]] = {}
    for x in attempts:
        if x.at <= now:
            c2 = a.setdefault((x.prev, x.release), [0, 0])
            c2[0] += 1
            c2[1] += x.failed
    out = set()

    def worse(k1: int, n1: int, k2: int, n2: int) -> bool:
        if n1 < 20 or n2 < 20:
            return False
        p_ge, p_le = fisher(k1, n1, k2, n2)
        return min(1.0, 2 * min(p_ge, p_le)) < 0.01 and k1 * n2 > k2 * n1

    for (prev, rel), (nb, nc, nw) in n.items():
        if prev is None:
            continue
        rb = sum(v[0] for (p, r), v in n.items() if r == rel) - nb
        rc = sum(v[1] for (p, r), v in n.items() if r == rel) - nc
        rw = sum(v[2] for (p, r), v in n.items() if r == rel) - nw
        if worse(nc, nb, rc, rb) or worse(nw, nb, rw, rb):
            out.add((prev, rel))
    fleet = [sum(v[0] for v in a.values()), sum(v[1] for v in a.values())]
    for (prev, rel), (na, nf) in a.items():
        into = [v for (p, r), v in a.items() if r == rel and p != prev]
        k2, n2 = sum(v[1] for v in into), sum(v[0] for v in into)
        if n2 < 20:
            k2, n2 = fleet[1] - nf, fleet[0] - na
        if worse(nf, na, k2, n2):
            out.add((prev, rel))
    return out


def run_fleet(
    seed: int, hosts: int, th: Thresholds, bad: tuple[str, str] | None, factor: float
) -> dict[str, Any]:
    rng = random.Random(seed)
    boots, attempts = simulate(rng, hosts, Rates(), bad, factor)
    transitions = {(a.prev, a.release) for a in attempts}
    first: dict[str, dict[tuple[str, str], float]] = {"new": {}, "old": {}}
    now = LOOK
    while now <= WEEK:
        b, a = rows_at(boots, attempts, now, th.window)
        new = {
            (t.previous_release or "", t.release)
            for t in build(b, a, th, False)
            if t.verdict == "worse"
        }
        for name, flagged in (("new", new), ("old", old_worse(boots, attempts, now))):
            for k in flagged:
                first[name].setdefault(k, now)
        now += LOOK
    took = {}
    if bad is not None:
        for name in ("new", "old"):
            at = first[name].get(bad)
            if at is not None:
                n = len({x.machine for x in attempts if (x.prev, x.release) == bad and x.at <= at})
                took[name] = (n, (at - ROLLOUTS[1]) / H)
    return {"transitions": transitions, "first": first, "took": took}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleets", type=int, default=40)
    ap.add_argument("--hosts", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--bound", type=float, default=Thresholds.bound, help=argparse.SUPPRESS)
    ap.add_argument("--power-fleets", type=int, default=10)
    args = ap.parse_args(argv)
    th = Thresholds(alpha=args.alpha, bound=args.bound)
    seeds = [args.seed * 100_000 + i for i in range(args.fleets)]
    print(
        f"{args.fleets} fleets of {args.hosts} hosts, a week each, a report every 15 min "
        f"({int(WEEK / LOOK)} looks), alpha {args.alpha:g}, window {th.window // 3600}h"
    )
    total, ever = 0, {"new": 0, "old": 0}
    for s in seeds:
        r = run_fleet(s, args.hosts, th, None, 1.0)
        total += len(r["transitions"])
        for name in ever:
            ever[name] += len(r["first"][name])
    print(f"healthy: {total} transitions; ever called worse over the week:")
    for name, label in (("new", "new (hosts, e-BH)"), ("old", "old (boots, Fisher)")):
        print(f"  {label:<22} {ever[name]:>4} = {ever[name] / total:.2%}")
    bad = ("r2", "r3")
    print(f"bad transition {bad[0]} -> {bad[1]} (crash and land failure rates x factor):")
    print("  factor  method                  flagged   median hosts  median hours")
    for factor in (2.0, 3.0, 5.0):
        found: dict[str, list[tuple[int, float]]] = {"new": [], "old": []}
        for s in seeds[: args.power_fleets]:
            r = run_fleet(s, args.hosts, th, bad, factor)
            for name, v in r["took"].items():
                found[name].append(v)
        for name, label in (("new", "new (hosts, e-BH)"), ("old", "old (boots, Fisher)")):
            f = found[name]
            med = [f"{statistics.median(x[i] for x in f):.1f}" if f else "-" for i in (0, 1)]
            print(
                f"  {factor:>4.0f}x   {label:<22} {len(f):>3}/{args.power_fleets:<4}  "
                f"{med[0]:>12}  {med[1]:>12}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
