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
- **Boots that landed** (through a kexec from a known release, ``THROUGH_KEXEC``, a KHO
  handover or not): a boot crashed when the next boot on its machine found a pstore
  record with a Panic or Oops reason that describes it (a dump of several parts, or an
  Oops then a Panic, is one crashed boot); it warned when its kernel log held any of the
  kernel's own warnings (``boots.warnings`` > 0; boots recorded before khod counted them
  are left out of that rate).
- **Per host**: the queries group by machine too, so that ``khod.fleet.verdicts`` can
  count hosts, pick each transition's clean baseline and give the verdicts
  (``khod.fleet.stats``); a boot counts for the rates once it is observed: its window
  (``Thresholds.window``) is over.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from sqlalchemy import case, func, literal, select
from sqlalchemy.exc import SQLAlchemyError

from khod.errors import StoreError
from khod.fleet import rollup
from khod.fleet.stats import Thresholds
from khod.fleet.verdicts import RATES, Transition, build, report, totals
from khod.records import (
    CRASH_REASONS,
    DERIVED_CHOICES,
    FAILED_TO_LAND,
    RAN,
    REJECTED,
    THROUGH_KEXEC,
    WITHOUT_HANDOVER,
    MetadataSource,
    Verdict,
)
from khod.store.handle import Store, describe_db_error
from khod.store.schema import boots, kexec_attempts, pstore_records

__all__ = [
    "DERIVED_CHOICES",
    "RATES",
    "Transition",
    "attempts_query",
    "derived_counts",
    "transitions",
    "transitions_query",
]
DERIVED_SOURCES = (str(MetadataSource.ATTEMPT), str(MetadataSource.DERIVED))


def _derived() -> Any:
    """A boot whose chain khod derived (NULL, the kernel said nothing: not derived)."""
    return func.coalesce(boots.c.metadata_source, "").in_(DERIVED_SOURCES)


# the kinds of boot a kexec made: with a known previous release, a transition's (on a
# fleet without KHO every kexec is kexec-no-handover, its chain derived by khod)
def _window(q: Any, column: Any, since: float | None, until: float | None, as_: type) -> Any:
    """``q`` kept to rows whose ``column`` is from ``since`` to ``until`` (either open),
    the bounds bound as the column's type (``as_``: int for boot times, float for an
    attempt's)."""
    if since is not None:
        q = q.where(column >= literal(as_(since)))
    if until is not None:
        q = q.where(column <= literal(as_(until)))
    return q


def _through() -> Any:
    """A boot through a kexec from a known release: a transition's boot."""
    return boots.c.kind.in_([str(k) for k in THROUGH_KEXEC]) & boots.c.previous_release.is_not(None)


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
    since: float | None = None,
    include_cold: bool = True,
    observed_before: float | None = None,
    until: float | None = None,
    derived: str = "include",
) -> Any:
    """Boots by (previous_release, release, machine); previous_release NULL: the
    release's boots through no transition (cold, or a kexec from a release not known). A
    boot is *observed* (counts for the rates) once it began before ``observed_before``:
    its window is over, crashed or not (counting a boot once it ended would count a
    fresh rollout's crashes before its healthy boots); every boot when that is None.
    ``derived`` (``DERIVED_CHOICES``) selects the boots through a kexec by where their
    chain came from; the baselines' boots are kept either way."""
    crashed = _crashed()
    kexec = boots.c.kind == "kexec"
    through = _through()
    prev = case((through, boots.c.previous_release), else_=None)
    observed: Any = (
        literal(True)
        if observed_before is None
        else boots.c.booted_at <= literal(int(observed_before))
    )

    def when(cond: Any, value: Any = 1) -> Any:
        return case((cond & observed, value))

    q = (
        select(  # in the order of khod.fleet.verdicts.BOOT_COLUMNS: read by position
            prev.label("previous_release"),
            boots.c.release,
            boots.c.machine_id,
            func.count().label("boots"),
            func.count(crashed.c.boot_pk).label("crashes"),
            func.count(when(literal(True))).label("observed_boots"),
            func.count(when(crashed.c.boot_pk.is_not(None))).label("observed_crashes"),
            func.count(when(boots.c.warnings.is_not(None))).label("logged_boots"),
            func.count(when(boots.c.warnings > 0)).label("warned_boots"),
            func.coalesce(func.sum(boots.c.warnings), 0).label("warnings"),
            func.min(boots.c.booted_at).label("first_booted_at"),
            func.max(boots.c.booted_at).label("last_booted_at"),
        )
        .select_from(boots.outerjoin(crashed, crashed.c.boot_pk == boots.c.id))
        .group_by(prev, boots.c.release, boots.c.machine_id)
    )
    # a KHO kexec with no known previous release (no metadata, nothing derived): left
    # out; the others without one are their release's baseline
    q = q.where(through | ~kexec if include_cold else through)
    if derived != "include":
        q = q.where(~through | (_derived() if derived == "only" else ~_derived()))
    return _window(q, boots.c.booted_at, since, until, int)


def derived_query(since: float | None = None, until: float | None = None) -> Any:
    """The boots through a kexec whose chain khod derived, by (previous_release, release)."""
    q = (
        select(boots.c.previous_release, boots.c.release, func.count())
        .where(_through(), _derived())
        .group_by(boots.c.previous_release, boots.c.release)
    )
    return _window(q, boots.c.booted_at, since, until, int)


def derived_counts(
    store: Store, since: float | None = None, until: float | None = None
) -> dict[tuple[str, str], int]:
    """``derived_query``'s counts, whatever ``--derived`` keeps."""
    try:
        with store.engine.connect() as conn:
            return derived_counts_in(conn, since, until)
    except SQLAlchemyError as e:
        raise StoreError(f"cannot read {store.location}: {describe_db_error(e)}") from None


def derived_counts_in(
    conn: Any, since: float | None = None, until: float | None = None
) -> dict[tuple[str, str], int]:
    return {(p, r): int(n) for p, r, n in conn.execute(derived_query(since, until))}


def attempts_query(since: float | None = None, until: float | None = None) -> Any:
    """The attempts that ran, by (previous_release, release, machine), by outcome."""
    a = kexec_attempts
    judged_by = boots.alias("judged_by")
    release = func.coalesce(
        a.c.target_release, case((a.c.verdict != Verdict.COLD_BOOT, judged_by.c.release))
    )

    def n(verdicts: tuple[str, ...]) -> Any:
        return func.count(case((a.c.verdict.in_(verdicts), 1)))

    q = (
        select(  # in the order of khod.fleet.verdicts.ATTEMPT_COLUMNS
            a.c.expected_previous_release.label("previous_release"),
            release.label("release"),
            a.c.machine_id,
            func.count().label("attempts"),
            n((Verdict.LANDED,)).label("landed"),
            n(FAILED_TO_LAND).label("failed_to_land"),
            n(REJECTED).label("rejected"),
            n(WITHOUT_HANDOVER).label("without_handover"),
        )
        .select_from(a.outerjoin(judged_by, judged_by.c.id == a.c.verdict_boot))
        .where(a.c.verdict.in_([str(v) for v in RAN]))
        .group_by(a.c.expected_previous_release, release, a.c.machine_id)
    )
    return _window(q, a.c.created_at, since, until, float)


def transitions(
    store: Store,
    since: float | None = None,
    *,
    include_cold: bool = False,
    thresholds: Thresholds | None = None,
    now: float | None = None,
    until: float | None = None,
    derived: str = "include",
    recompute: bool = False,
) -> list[Transition]:
    """Rows sorted worst first: by verdict, then crash rate, then boots (more
    evidence first). A boot counts for the rates once the window after it is over
    (``thresholds.window`` before ``now``). ``derived``: see ``transitions_query``;
    each row's ``derived_boots`` are those of its boots counted. On PostgreSQL the
    counts come from the rollups (``khod.fleet.rollup``) unless ``recompute`` or
    ``derived`` leaves some boots out (the rollups count every boot): then, as on
    SQLite, from every boot and attempt in the window."""
    th = thresholds or Thresholds()
    before = (time.time() if now is None else now) - th.window
    try:
        with store.engine.connect() as conn:
            if not recompute and derived == "include" and conn.dialect.name == "postgresql":
                boot_totals, attempt_totals, derived_n = rollup.read(conn, since, until, before)
                rows = report(totals(boot_totals, attempt_totals), th, include_cold)
                if derived_n is None:
                    derived_n = derived_counts_in(conn, since, until)
                return _with_derived(rows, derived_n)
            boot_rows = conn.execute(
                transitions_query(since, observed_before=before, until=until, derived=derived)
            ).all()
            attempt_rows = conn.execute(attempts_query(since, until)).all()
    except SQLAlchemyError as e:
        raise StoreError(f"cannot read {store.location}: {describe_db_error(e)}") from None
    rows = build(boot_rows, attempt_rows, th, include_cold)
    if derived == "exclude":
        return rows
    return _with_derived(rows, derived_counts(store, since, until))


def _with_derived(rows: list[Transition], counts: dict[tuple[str, str], int]) -> list[Transition]:
    return [
        replace(t, derived_boots=counts.get((t.previous_release, t.release), 0))
        if t.previous_release is not None
        else t
        for t in rows
    ]
