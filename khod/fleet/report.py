"""Fleet reports. ``transitions``: for each (previous_release, release) a kexec went
through, what became of the attempts to take it, what happened to the boots that
landed, and whether that is worse than the release's baseline (``khod.fleet.stats``).

- **Attempts** come from the kexec attempt records (``khoctl kexec``, the kexec.target
  hook) and their verdicts: ``landed``; **failed to land** (``cold-boot``,
  ``mismatch``: a firmware boot or another kernel came next, a hang in the old
  kernel's shutdown or an early death of the new one that no pstore record may tell
  of); **rejected** (``abi-mismatch``: the new kernel refused the handover); **without
  handover** (``landed-without-handover``). Superseded, failed-to-load and open
  attempts did not run and are not counted. An attempt's transition is its expected
  previous release and its target's release (a hook's attempt knows the target only
  from the boot that judged it: one that fell back to firmware names none and is left
  out).
- **Boots that landed** (kind ``kexec``): a boot crashed when the next boot on its
  machine found a pstore record with a Panic or Oops reason that describes it (a dump
  of several parts, or an Oops then a Panic, is one crashed boot); it warned when its
  kernel log held any of the kernel's own warnings (``boots.warnings`` > 0; boots
  recorded before khod counted them are left out of that rate).
- **The baseline** of ``P -> R``: the boots of R that took no KHO handover (the
  ``(cold boot)`` row: cold, rejected, or without handover) with the boots of R that
  came from another previous release; for landing, the attempts into R from another
  previous release, or, when those are fewer than the verdict needs (``min_n``), every
  other attempt in the fleet (``"scope": "fleet"``): a transition that never lands is
  often the only way into its release.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, distinct, func, literal, select
from sqlalchemy.exc import SQLAlchemyError

from khod.errors import StoreError
from khod.fleet.stats import Comparison, Thresholds, compare, overall
from khod.records import (
    CRASH_REASONS,
    FAILED_TO_LAND,
    RAN,
    REJECTED,
    WITHOUT_HANDOVER,
    TransitionVerdict,
    Verdict,
)
from khod.store.handle import Store, describe_db_error
from khod.store.schema import boots, kexec_attempts, pstore_records

RATES = ("crash", "warning", "land_failure")  # the rates each transition is tested on
_RANK = {TransitionVerdict.WORSE: 0, None: 1, TransitionVerdict.NO_EVIDENCE: 1}


@dataclass(frozen=True)
class Transition:
    previous_release: str | None  # None: the cold-boot baseline of a release
    release: str
    boots: int
    hosts: int
    crashes: int
    crash_rate: float | None  # None: no boot landed
    first_booted_at: int | None
    last_booted_at: int | None
    attempts: int = 0
    landed: int = 0
    failed_to_land: int = 0
    rejected: int = 0
    without_handover: int = 0
    logged_boots: int = 0  # boots whose warnings were counted
    warned_boots: int = 0  # ... with at least one
    warnings: int = 0  # warning lines in all of them
    rates: dict[str, Comparison] = field(default_factory=dict)
    verdict: TransitionVerdict | None = None  # None: a baseline row

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
            )
        }
        out["rates"] = {k: c.as_json() for k, c in self.rates.items()}
        out["verdict"] = None if self.verdict is None else str(self.verdict)
        return out


def _crashed() -> Any:
    return (
        select(pstore_records.c.describes.label("boot_pk"))
        .where(
            pstore_records.c.reason.in_(CRASH_REASONS),
            pstore_records.c.describes.is_not(None),
        )
        .distinct()
        .subquery("crashed")
    )


def transitions_query(
    since: float | None = None, include_cold: bool = True, until: float | None = None
) -> Any:
    """Boots by (previous_release, release); previous_release NULL: the release's
    boots that took no KHO handover."""
    crashed = _crashed()
    kexec = boots.c.kind == "kexec"
    prev = case((kexec, boots.c.previous_release), else_=None)
    q = (
        select(
            prev.label("previous_release"),
            boots.c.release,
            func.count().label("boots"),
            func.count(distinct(boots.c.machine_id)).label("hosts"),
            func.count(crashed.c.boot_pk).label("crashes"),
            func.count(boots.c.warnings).label("logged_boots"),
            func.count(case((boots.c.warnings > 0, 1))).label("warned_boots"),
            func.coalesce(func.sum(boots.c.warnings), 0).label("warnings"),
            func.min(boots.c.booted_at).label("first_booted_at"),
            func.max(boots.c.booted_at).label("last_booted_at"),
        )
        .select_from(boots.outerjoin(crashed, crashed.c.boot_pk == boots.c.id))
        .group_by(prev, boots.c.release)
    )
    # a kexec without metadata (before 7.1) has no known previous release: left out
    known = kexec & boots.c.previous_release.is_not(None)
    q = q.where(known | ~kexec if include_cold else known)
    if since is not None:
        q = q.where(boots.c.booted_at >= literal(int(since)))
    if until is not None:
        q = q.where(boots.c.booted_at <= literal(int(until)))
    return q


def attempts_query(since: float | None = None, until: float | None = None) -> Any:
    """The attempts that ran, by (previous_release, release), counted by outcome."""
    a = kexec_attempts
    judged_by = boots.alias("judged_by")
    release = func.coalesce(
        a.c.target_release, case((a.c.verdict != Verdict.COLD_BOOT, judged_by.c.release))
    )

    def n(verdicts: tuple[str, ...]) -> Any:
        return func.count(case((a.c.verdict.in_(verdicts), 1)))

    q = (
        select(
            a.c.expected_previous_release.label("previous_release"),
            release.label("release"),
            func.count().label("attempts"),
            n((Verdict.LANDED,)).label("landed"),
            n(FAILED_TO_LAND).label("failed_to_land"),
            n(REJECTED).label("rejected"),
            n(WITHOUT_HANDOVER).label("without_handover"),
        )
        .select_from(a.outerjoin(judged_by, judged_by.c.id == a.c.verdict_boot))
        .where(a.c.verdict.in_([str(v) for v in RAN]))
        .group_by(a.c.expected_previous_release, release)
    )
    if since is not None:
        q = q.where(a.c.created_at >= literal(float(since)))
    if until is not None:
        q = q.where(a.c.created_at <= literal(float(until)))
    return q


Key = tuple[str | None, str]
_BOOT_COUNTS = ("boots", "crashes", "logged_boots", "warned_boots")
_ATTEMPT_COUNTS = ("attempts", "landed", "failed_to_land", "rejected", "without_handover")


def build(
    boot_rows: Sequence[Any], attempt_rows: Sequence[Any], th: Thresholds, include_cold: bool
) -> list[Transition]:
    """The report from the two queries' rows: counts, baselines, verdicts."""
    by_key: dict[Key, dict[str, Any]] = {}
    for r in boot_rows:
        by_key[(r.previous_release, r.release)] = dict(r._mapping)
    for r in attempt_rows:
        if r.release is None:
            continue
        d = by_key.setdefault(
            (r.previous_release, r.release),
            {"previous_release": r.previous_release, "release": r.release},
        )
        d.update({k: int(getattr(r, k)) for k in _ATTEMPT_COUNTS})
    # per release: all its boots (fresh or through any transition), all attempts into it
    totals: dict[str, dict[str, int]] = {}
    for (_prev, rel), d in by_key.items():
        t = totals.setdefault(rel, dict.fromkeys(_BOOT_COUNTS + _ATTEMPT_COUNTS, 0))
        for k in _BOOT_COUNTS + _ATTEMPT_COUNTS:
            t[k] += int(d.get(k) or 0)
    fleet_attempts = sum(t["attempts"] for t in totals.values())
    fleet_not_landed = sum(t["failed_to_land"] + t["rejected"] for t in totals.values())
    out = []
    for (prev, rel), d in by_key.items():
        if prev is None and not include_cold:
            continue
        c = {k: int(d.get(k) or 0) for k in _BOOT_COUNTS + _ATTEMPT_COUNTS}
        base = None if prev is None else {k: totals[rel][k] - c[k] for k in c}
        not_landed = c["failed_to_land"] + c["rejected"]

        def versus(k: str, n: str, base: dict[str, int] | None = base) -> tuple[int, int] | None:
            return None if base is None else (base[k], base[n])

        rates = {
            "crash": compare(c["crashes"], c["boots"], versus("crashes", "boots"), th),
            "warning": compare(
                c["warned_boots"], c["logged_boots"], versus("warned_boots", "logged_boots"), th
            ),
        }
        if base is not None:
            scope, k2, n2 = "release", base["failed_to_land"] + base["rejected"], base["attempts"]
            if n2 < th.min_n:
                scope, k2, n2 = (
                    "fleet",
                    fleet_not_landed - not_landed,
                    fleet_attempts - c["attempts"],
                )
            rates["land_failure"] = compare(not_landed, c["attempts"], (k2, n2), th, scope)
        first, last = d.get("first_booted_at"), d.get("last_booted_at")
        out.append(
            Transition(
                previous_release=prev,
                release=rel,
                boots=c["boots"],
                hosts=int(d.get("hosts") or 0),
                crashes=c["crashes"],
                crash_rate=c["crashes"] / c["boots"] if c["boots"] else None,
                first_booted_at=None if first is None else int(first),
                last_booted_at=None if last is None else int(last),
                **{k: c[k] for k in _ATTEMPT_COUNTS},
                logged_boots=c["logged_boots"],
                warned_boots=c["warned_boots"],
                warnings=int(d.get("warnings") or 0),
                rates=rates,
                verdict=None if prev is None else overall(list(rates.values())),
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


def transitions(
    store: Store,
    since: float | None = None,
    include_cold: bool = False,
    thresholds: Thresholds | None = None,
    until: float | None = None,
) -> list[Transition]:
    """Rows sorted worst first: by verdict, then crash rate, then boots (more
    evidence first)."""
    try:
        with store.engine.connect() as conn:
            boot_rows = conn.execute(transitions_query(since, until=until)).all()
            attempt_rows = conn.execute(attempts_query(since, until)).all()
    except SQLAlchemyError as e:
        raise StoreError(f"cannot read {store.location}: {describe_db_error(e)}") from None
    return build(boot_rows, attempt_rows, thresholds or Thresholds(), include_cold)
