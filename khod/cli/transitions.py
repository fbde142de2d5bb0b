"""khoctl report transitions: the table, its JSON and its Prometheus metrics."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from khod.cli.common import print_json, print_text
from khod.errors import KhodError
from khod.fleet.report import RATES, Transition
from khod.fleet.stats import Comparison, Rate, Thresholds
from khod.records import TransitionVerdict

VERDICT_VALUE = {
    TransitionVerdict.WORSE: 1.0,
    TransitionVerdict.NO_EVIDENCE: 0.0,
    TransitionVerdict.BETTER: -1.0,
}
RATE_HELP = {
    "crash": "boots through this kexec that left a Panic or Oops record / boots",
    "warning": "boots through this kexec whose kernel log held a warning / boots counted",
    "land_failure": "attempts at this kexec that failed to land or were rejected / attempts",
}


def thresholds(args: argparse.Namespace) -> Thresholds:
    if not 0 < args.alpha < 1:
        raise KhodError(f"--alpha must be between 0 and 1, not {args.alpha}")
    if args.min_evidence < 0:
        raise KhodError(f"--min-evidence must be 0 or more, not {args.min_evidence}")
    return Thresholds(alpha=args.alpha, min_n=args.min_evidence, window=window(args))


def window(args: argparse.Namespace) -> int:
    """--window, else [fleet] window of the configuration, else 24h."""
    if getattr(args, "window", None) is not None:
        from khod.timespec import duration  # noqa: PLC0415

        seconds = duration(args.window)
        if seconds is None:
            raise KhodError(
                f"--window: expected a duration like '24h' or '7d', got {args.window!r}"
            )
        return seconds
    from khod.config import load_config  # noqa: PLC0415

    config = getattr(args, "config", None)
    return load_config(config, required=config is not None).fleet_window


def _duration(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0 and (unit != "d" or seconds > 86400):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def metrics(rows: Sequence[Transition], bad_rate: float, bad_min: int) -> bytes:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

    from khod.metrics import exposition  # noqa: PLC0415

    labels = ["previous_release", "release"]
    fams: dict[str, GaugeMetricFamily] = {}

    def fam(key: str, doc: str) -> GaugeMetricFamily:
        return fams.setdefault(
            key, GaugeMetricFamily(f"khod_fleet_transition_{key}", doc, labels=labels)
        )

    fam("boots", "Boots that came through this kexec")
    fam("hosts", "Hosts that took this kexec")
    fam("hosts_affected", "Hosts with at least one boot through this kexec that crashed")
    fam("crashes", "Boots through this kexec that left a Panic or Oops record")
    fam("observed_boots", "Boots whose observation window is over: the rates' boots")
    fam("window_seconds", "The observation window after landing before a boot counts")
    fam("crash_rate", "crashes / boots, of the observed boots")
    fam("bad", f"1 when the crash rate is >= {bad_rate} over >= {bad_min} boots")
    fam("attempts", "Kexec attempts at this transition that ran (khoctl kexec, the hook)")
    fam("landed", "Attempts that landed in the kernel they aimed at")
    fam("failed_to_land", "Attempts followed by a firmware boot or another kernel")
    fam("rejected", "Attempts whose handover the new kernel refused (ABI mismatch)")
    fam("without_handover", "Attempts that landed without a KHO handover (none, or kho=off)")
    fam("warned_boots", "Boots through this kexec whose kernel log held a warning")
    fam("warnings", "Warning lines (WARNING, BUG, Oops, hung task, lockup, MCE) in them")
    fam("derived_boots", "Boots counted here whose chain khod derived (attempt, derived)")
    for r in RATES:
        if r != "crash":
            fam(f"{r}_rate", RATE_HELP[r])
        fam(f"{r}_rate_low", f"Lower bound of the 95% Wilson interval of {r}_rate")
        fam(f"{r}_rate_high", f"Upper bound of the 95% Wilson interval of {r}_rate")
        fam(f"baseline_{r}_rate", f"{r}_rate of the release's baseline")
        fam(f"{r}_hosts_affected", f"Hosts with at least one event counted in {r}_rate")
        fam(f"{r}_e_value", f"The e-value of {r}_rate (by hosts) against its baseline")
    fam(
        "verdict",
        "1 worse than the transition's clean baseline, 0 no evidence, -1 better, by hosts "
        "(e-values, e-BH across the report: false alarms controlled over repeated runs)",
    )
    for t in rows:
        lv = [t.previous_release or "", t.release]
        for key in ("boots", "hosts", "crashes", "attempts", "landed", "failed_to_land"):
            fams[key].add_metric(lv, getattr(t, key))
        for key in ("hosts_affected", "observed_boots"):
            fams[key].add_metric(lv, getattr(t, key))
        fams["window_seconds"].add_metric(lv, t.window)
        for key in ("rejected", "without_handover", "warned_boots", "warnings", "derived_boots"):
            fams[key].add_metric(lv, getattr(t, key))
        if t.crash_rate is not None:  # no boot landed: no rate (the report's JSON: null)
            fams["crash_rate"].add_metric(lv, t.crash_rate)
        bad = t.crash_rate is not None and t.boots >= bad_min and t.crash_rate >= bad_rate
        fams["bad"].add_metric(lv, 1.0 if bad else 0.0)
        for name, c in t.rates.items():
            if c.observed.of:
                if name != "crash":
                    fams[f"{name}_rate"].add_metric(lv, c.observed.count / c.observed.of)
                fams[f"{name}_rate_low"].add_metric(lv, c.observed.low)
                fams[f"{name}_rate_high"].add_metric(lv, c.observed.high)
            if c.baseline is not None and c.baseline.of:
                fams[f"baseline_{name}_rate"].add_metric(lv, c.baseline.count / c.baseline.of)
            if c.hosts is not None:
                fams[f"{name}_hosts_affected"].add_metric(lv, c.hosts.count)
            if c.baseline is not None:
                fams[f"{name}_e_value"].add_metric(lv, c.e_value)
        if t.verdict is not None:
            fams["verdict"].add_metric(lv, VERDICT_VALUE[t.verdict])

    class _C:
        def collect(self) -> Any:
            return list(fams.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_C())
    return exposition(registry)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _rate(r: Rate | None) -> str:
    if r is None:
        return "-"
    if not r.of:
        return "0/0"
    return f"{r.count}/{r.of} {_pct(r.rate)} [{_pct(r.low)}, {_pct(r.high)}]"


def _hosts(c: Comparison) -> str:
    if c.hosts is None:
        return "-"
    base = c.baseline_hosts
    return f"{c.hosts.count}/{c.hosts.of}" + ("" if base is None else f" vs {base.count}/{base.of}")


def _e(c: Comparison) -> str:
    return "-" if c.baseline is None else f"{c.e_value:.3g}"


def _p(c: Comparison) -> str:
    if c.p_value is None:
        return "-"
    return "<1e-300" if c.p_value == 0 else f"{c.p_value:.2g}"  # below a double's range


def text(rows: Sequence[Transition], th: Thresholds) -> str:
    """Three tables: the boots that landed (as before), the attempts and the verdict,
    and each rate against its baseline."""
    from khod.cli.views import table  # noqa: PLC0415

    def name(t: Transition) -> dict[str, Any]:
        return {"from": t.previous_release or "(cold boot)", "to": t.release}

    landed = table(
        [
            {
                **name(t),
                "boots": t.boots,
                "observed": t.observed_boots,
                "hosts": t.hosts,
                "affected": t.hosts_affected,
                "crashes": t.crashes,
                "rate": _pct(t.crash_rate),
            }
            for t in rows
        ],
        (
            ("PREVIOUS_RELEASE", "from"),
            ("RELEASE", "to"),
            ("BOOTS", "boots"),
            ("OBSERVED", "observed"),
            ("HOSTS", "hosts"),
            ("HOSTS_AFFECTED", "affected"),
            ("CRASHES", "crashes"),
            ("CRASH_RATE", "rate"),
        ),
    )
    attempts = table(
        [
            {
                **name(t),
                **{
                    k: getattr(t, k)
                    for k in (
                        "attempts",
                        "landed",
                        "failed_to_land",
                        "rejected",
                        "without_handover",
                        "warned_boots",
                        "warnings",
                    )
                },
                "verdict": "(baseline)" if t.verdict is None else str(t.verdict),
            }
            for t in rows
        ],
        (
            ("PREVIOUS_RELEASE", "from"),
            ("RELEASE", "to"),
            ("ATTEMPTS", "attempts"),
            ("LANDED", "landed"),
            ("FAILED_TO_LAND", "failed_to_land"),
            ("REJECTED", "rejected"),
            ("NO_HANDOVER", "without_handover"),
            ("WARNED_BOOTS", "warned_boots"),
            ("WARNINGS", "warnings"),
            ("VERDICT", "verdict"),
        ),
    )
    tests = table(
        [
            {
                **name(t),
                "rate": key.replace("_", " "),
                "observed": _rate(c.observed),
                "baseline": _rate(c.baseline) + f" ({c.scope})",
                "hosts": _hosts(c),
                "p": _p(c),
                "e": _e(c),
                "verdict": "-" if c.verdict is None else str(c.verdict),
            }
            for t in rows
            for key, c in t.rates.items()
        ],
        (
            ("PREVIOUS_RELEASE", "from"),
            ("RELEASE", "to"),
            ("RATE", "rate"),
            ("TRANSITION (95% INTERVAL)", "observed"),
            ("BASELINE (95% INTERVAL)", "baseline"),
            ("HOSTS AFFECTED", "hosts"),
            ("P", "p"),
            ("E", "e"),
            ("VERDICT", "verdict"),
        ),
    )
    how = textwrap.fill(
        f"Verdict: by hosts, against a clean baseline (the release's cold boots; for "
        f"landing, the attempts into it from other releases, else the fleet's; never a "
        f"transition called worse). Worse when its e-value passes e-BH at {th.alpha:g} "
        f"across this report: a healthy transition is ever called worse, over every run, "
        f"with chance at most {th.alpha:g}. At least {th.min_n} hosts on each side. A boot "
        f"counts for the rates {_duration(th.window)} after it landed (its window). "
        f"P: Fisher's exact test on the hosts, for one look. Intervals: Wilson score, 95%.",
        width=88,
    )
    return "\n\n".join((landed, attempts, tests, how))


def with_iso_times(d: dict[str, Any]) -> dict[str, Any]:
    """The JSON times' convention (ISO 8601, UTC): first_booted, last_booted beside
    the seconds first_booted_at, last_booted_at (kept for the readers they have)."""
    from khod.cli.views import iso  # noqa: PLC0415

    d["first_booted"] = iso(d["first_booted_at"])
    d["last_booted"] = iso(d["last_booted_at"])
    return d


def predates_rollups(store: Any) -> bool:
    """A store whose schema has no rollups yet (before 0013; its owner upgrades it):
    said in one line, and the report counts every row. An empty one gets the schema as
    before; one a newer khod wrote is refused."""
    from khod.store.db import revision_off_head  # noqa: PLC0415
    from khod.store.schema import HEAD_REVISION  # noqa: PLC0415

    rev = revision_off_head(store)
    if rev is None:
        return False
    from khod.store import migrate  # noqa: PLC0415

    if not migrate.knows(rev):
        raise migrate.newer_than_head(store, rev)
    from khod.fleet.rollup import SINCE_REVISION  # noqa: PLC0415

    if migrate.at_or_after(rev, SINCE_REVISION):
        return False  # an older revision that keeps them: its triggers count as ours
    print_text(
        f"khoctl: note: {store.location} is at schema {rev}, older than this khoctl's "
        f"{HEAD_REVISION}: counting every boot (its owner upgrades it: khoctl db upgrade)",
        sys.stderr,
    )
    return True


def cmd_report(args: argparse.Namespace, since: float | None, until: float | None = None) -> int:
    from khod.fleet.report import transitions  # noqa: PLC0415
    from khod.store.db import open_store  # noqa: PLC0415

    th = thresholds(args)
    derived = getattr(args, "derived", "include")
    store = open_store(args.db, create=False, migrate=False)  # a reader migrates nothing
    try:
        recompute = getattr(args, "recompute", False) or predates_rollups(store)
        every = transitions(
            store,
            since,
            include_cold=args.include_cold,
            thresholds=th,
            until=until,
            derived=derived,
            recompute=recompute,
        )
        left_out = 0
        if derived == "exclude":
            from khod.fleet.report import derived_counts  # noqa: PLC0415

            left_out = sum(derived_counts(store, since, until).values())
    finally:
        store.dispose()
    counted = sum(t.derived_boots for t in every)
    rows = [
        t
        for t in every
        if (t.boots >= args.min_boots or t.attempts >= args.min_boots)
        # only: the transitions khod derived (their attempts beside them), and baselines
        and (derived != "only" or t.derived_boots or t.previous_release is None)
    ]
    if args.textfile:
        from khod.atomic import write_file  # noqa: PLC0415
        from khod.metrics import TEXTFILE_MODE  # noqa: PLC0415

        data = metrics(rows, args.bad_rate, args.bad_min_boots)
        try:
            write_file(args.textfile, data, TEXTFILE_MODE)
        except OSError as e:
            raise KhodError(f"cannot write {args.textfile}: {e.strerror or e}") from None
    if args.json:
        print_json([with_iso_times(t.as_json()) for t in rows], "report")
        return 0
    if not rows:
        print("no kexec transitions recorded")
        print(derived_line(derived, counted, left_out))
        return 0
    print_text(text(rows, th) + "\n" + derived_line(derived, counted, left_out))
    return 0


def derived_line(derived: str, counted: int, left_out: int) -> str:
    """How many boots through a kexec had a chain khod derived, and what --derived did."""
    what = "boot" if (left_out or counted) == 1 else "boots"
    if derived == "exclude":
        return (
            f"Derived: {left_out} {what} through a kexec whose chain khod derived "
            f"(metadata_source attempt or derived) left out (--derived exclude)."
        )
    return (
        f"Derived: {counted} {what} through a kexec counted here had a chain khod "
        f"derived (metadata_source attempt or derived; --derived {derived})."
    )
