"""The fleet's rollup tables (PostgreSQL; migrations 0013-0015, ``khod.fleet.rollup``).

Apart from ``khod.store.schema`` so that the boot path, which imports that module, does
not build them: only Alembic's metadata (``migrations/env.py``) needs them, for
``command.check`` to compare the migrations with the tables. Nothing else reads these
objects; the fleet code reaches the tables in SQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text

from khod.store.schema import metadata


def _rollup_key(flag: str) -> list[Column[Any]]:
    return [
        Column("bucket", BigInteger, primary_key=True, autoincrement=False),  # -1: no time
        Column(flag, Boolean, primary_key=True),
        Column("previous_release", Text, primary_key=True),  # '' when the flag says none
        Column("release", Text, primary_key=True),
        Column("machine_id", String(64), primary_key=True),
    ]


# The transition report's counts, kept by PostgreSQL's triggers as rows arrive
# (migration 0013, khod.fleet.rollup); empty on SQLite. Per 30-day bucket of
# booted_at (created_at), transition and machine.
fleet_rollup_boots = Table(
    "fleet_rollup_boots",
    metadata,
    *_rollup_key("cold"),
    *(
        Column(c, BigInteger, nullable=False)
        for c in ("boots", "crashes", "logged_boots", "warned_boots", "warnings")
    ),
    Column("first_booted_at", BigInteger),
    Column("last_booted_at", BigInteger),
    # a transition's first and last boot (migration 0015)
    Index("ix_fleet_rollup_boots_first", "cold", "previous_release", "release", "first_booted_at"),
    Index("ix_fleet_rollup_boots_last", "cold", "previous_release", "release", "last_booted_at"),
)
fleet_rollup_attempts = Table(
    "fleet_rollup_attempts",
    metadata,
    *_rollup_key("has_prev"),
    *(
        Column(c, BigInteger, nullable=False)
        for c in ("attempts", "landed", "failed_to_land", "rejected", "without_handover")
    ),
)

# Above them (migration 0015, kept from their changes by PostgreSQL's triggers): per
# transition and machine, the sums over every bucket; per transition and stripe (a
# transaction writes the one of 64 it holds) those sums and the hosts whose sums are
# above 0. The whole-history report reads a row per transition and stripe.
_BOOT_SUMS = (
    "boots", "crashes", "observed_boots", "observed_crashes", "logged_boots", "warned_boots",
    "warnings", "derived_boots",
)  # fmt: skip
_BOOT_HOSTS = (
    "hosts", "observed_hosts", "observed_crash_hosts", "logged_hosts", "warned_hosts",
    "crash_hosts",
)  # fmt: skip
_ATTEMPT_SUMS = ("attempts", "landed", "failed_to_land", "rejected", "without_handover")


def _sums(name: str, flag: str, key: Column[Any] | None, counts: tuple[str, ...]) -> Table:
    """A table of sums per transition and ``key`` (its primary key), or, with no key,
    a transaction's pending changes per transition and machine (no primary key)."""
    keyed = key is not None
    by = key if key is not None else Column("machine_id", String(64), nullable=False)
    return Table(
        name,
        metadata,
        Column(flag, Boolean, primary_key=keyed, nullable=False),
        Column("previous_release", Text, primary_key=keyed, nullable=False),
        Column("release", Text, primary_key=keyed, nullable=False),
        by,
        *(Column(c, BigInteger, nullable=False) for c in counts),
        *(() if keyed else (Column("xid", BigInteger, nullable=False, index=True),)),
    )


fleet_rollup_host_boots = _sums(
    "fleet_rollup_host_boots", "cold", Column("machine_id", String(64), primary_key=True),
    _BOOT_SUMS,
)  # fmt: skip
fleet_rollup_host_attempts = _sums(
    "fleet_rollup_host_attempts", "has_prev",
    Column("machine_id", String(64), primary_key=True), _ATTEMPT_SUMS,
)  # fmt: skip
fleet_rollup_transition_boots = _sums(
    "fleet_rollup_transition_boots", "cold",
    Column("stripe", Integer, primary_key=True, autoincrement=False), _BOOT_SUMS + _BOOT_HOSTS,
)  # fmt: skip
fleet_rollup_transition_attempts = _sums(
    "fleet_rollup_transition_attempts", "has_prev",
    Column("stripe", Integer, primary_key=True, autoincrement=False),
    (*_ATTEMPT_SUMS, "hosts", "failed_hosts"),
)  # fmt: skip


# A transaction's changes to the bucket rollups until its commit adds them above
# (unlogged on PostgreSQL, no key: no row outlives its transaction; xid: the writer's).
fleet_rollup_pending_boots = _sums("fleet_rollup_pending_boots", "cold", None, _BOOT_SUMS)
fleet_rollup_pending_attempts = _sums(
    "fleet_rollup_pending_attempts", "has_prev", None, _ATTEMPT_SUMS
)
# the 64 stripes, a row each, that a commit locks to its end (owner only)
fleet_rollup_stripes = Table(
    "fleet_rollup_stripes",
    metadata,
    Column("stripe", Integer, primary_key=True, autoincrement=False),
)
fleet_rollup_pending_tx = Table(
    "fleet_rollup_pending_tx",
    metadata,
    Column("xid", BigInteger, primary_key=True, autoincrement=False),
)
# One row per machine the triggers have counted: they lock it, so that a machine's
# counts change one transaction at a time (no role but the owner reaches it).
fleet_rollup_locks = Table(
    "fleet_rollup_locks",
    metadata,
    Column("machine_id", String(64), primary_key=True),
)
