"""Tables (SQLAlchemy Core). Schema changes go through Alembic migrations in
``migrations/`` only; ``command.check`` in the tests catches drift between the two.

Core, not the ORM: the boot path imports this module, and the ORM costs more start-up
time than the whole of khod's own work.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect

# The revision ``migrations/versions`` ends at; a test checks they agree. Knowing it
# here lets start-up skip importing Alembic when the database is already current.
HEAD_REVISION = "0018"

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# what a kernel u32 can hold, and a pstore dmesg header's 10 digits (Column.info: the
# import checks values against it, khod.fleet.format.int_range)
U32 = {"range": (0, 2**32)}
DIGITS10 = {"range": (0, 10**10)}

# A 64-bit integer: BIGINT on PostgreSQL, INTEGER on SQLite (already 64-bit there, and an
# INTEGER PRIMARY KEY stays the rowid). Every row id a fleet fills is one (a fleet runs
# past 2**31 rows), and every value whose kernel type is wider than an int32.
Int64 = BigInteger().with_variant(Integer(), "sqlite")


class KText(TypeDecorator[str]):
    """Text that came from the kernel or a file. PostgreSQL's text cannot hold U+0000,
    so a NUL is stored as the four characters ``\\x00`` on every backend (the escape
    the decoders use for invalid UTF-8); the raw bytes are kept beside it."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is not None and "\x00" in value:
            return value.replace("\x00", "\\x00")
        return value

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return value


# One row per boot, keyed by (machine_id, boot_id).
boots = Table(
    "boots",
    metadata,
    Column("id", Int64, primary_key=True),
    Column("machine_id", String(64), nullable=False, index=True),
    Column("boot_id", String(64), nullable=False),
    Column("booted_at", BigInteger, index=True),  # btime, seconds since the epoch
    # the order boots were recorded in on their machine (1, 2, ...; carried by exports):
    # a boot's predecessor is the one before it, whatever the wall clock said. NULL for
    # boots imported from exports that predate it: they order by id, before the others.
    Column("seq", Int64),
    Column("release", KText, nullable=False),
    Column("cmdline", KText, nullable=False),
    # kexec | kexec-rejected | kexec-no-handover | cold
    Column("kind", String(20), nullable=False),
    Column("kind_reason", KText),
    Column("kho_enabled", Boolean, nullable=False),
    Column("kho_abi", KText),  # incoming root compatible, verbatim
    Column("memory_map_handed", Boolean),
    Column("previous_release", KText),
    Column("previous_release_raw", LargeBinary),
    Column(
        "kexec_count", Int64, info=U32
    ),  # u32; NULL: handover without metadata (pre-7.1, unreadable)
    Column("metadata_source", String(8)),  # kho | kmsg | attempt
    Column("subtrees", JSON, nullable=False),  # [{"name", "size"}], incoming
    Column("out_subtrees", JSON, nullable=False),
    Column("out_release", KText),
    Column("out_kexec_count", Int64, info=U32),  # u32
    Column("scratch", JSON, nullable=False),  # [[phys, len], ...]
    # the kernel's own warning lines in its log (NULL: not read, or stored before 0008)
    Column("warnings", Integer),
    Column("bootloader_type", Integer),  # x86 type_of_loader; NULL: not there
    Column("luo_compatible", KText),  # incoming LUO compatible, verbatim
    Column("liveupdate_num", BigInteger),  # u64 in the kernel
    Column("luo_sessions", Boolean),  # sessions handed over (sessions_pa != 0)
    Column("ingested_at", Float, nullable=False),
    Column("khod_version", String(32), nullable=False),
    UniqueConstraint("machine_id", "boot_id"),
)

# Every raw KHO file read, so a later version can re-parse what this one could not.
blobs = Table(
    "blobs",
    metadata,
    Column("id", Int64, primary_key=True),
    Column("boot_pk", ForeignKey("boots.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("direction", String(8), nullable=False),  # in | out
    Column("name", KText, nullable=False),  # fdt, sub_fdts/<name>, scratch_len, ...
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("data", LargeBinary, nullable=False),
    UniqueConstraint("boot_pk", "direction", "name"),
)

# Parse errors, anomalies, verdicts; deduplicated per boot by fingerprint.
events = Table(
    "events",
    metadata,
    Column("id", Int64, primary_key=True),
    Column("boot_pk", ForeignKey("boots.id", ondelete="CASCADE"), index=True),
    Column("created_at", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("source", KText, nullable=False),
    Column("severity", String(8), nullable=False),
    Column("message", KText, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    # khod.records.EventSource; NULL for events stored before 0005 (legacy_source)
    Column("origin", String(16)),
    UniqueConstraint("boot_pk", "fingerprint"),
)

# One row per pstore record file (a dump may have several parts), once per machine and
# content: the same bytes seen in /sys/fs/pstore, in systemd-pstore's archive and in the
# pstore-kho subtree, or seen again at a later boot, are one row.
pstore_records = Table(
    "pstore_records",
    metadata,
    Column("id", Int64, primary_key=True),
    Column("machine_id", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),  # of the raw bytes
    # the boot whose ingest found it, and the boot it describes (the one before)
    Column("collected_by", ForeignKey("boots.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("describes", ForeignKey("boots.id", ondelete="SET NULL"), index=True),
    Column("location", String(8), nullable=False),  # pstore | archive | kho
    Column("path", KText, nullable=False),
    Column("name", KText, nullable=False),
    Column("type", KText, nullable=False),
    Column("backend", KText, nullable=False),
    Column("record_id", BigInteger),  # EFI/ERST ids are 64-bit CPER record ids
    # the dmesg header's Part<n> and <Reason>#<count>: up to 10 digits each
    Column("part", Int64, info=DIGITS10),
    Column("reason", KText),
    Column("count", Int64, info=DIGITS10),
    Column("record_time", Float),
    Column("compressed", Boolean, nullable=False),
    Column("inflate_status", String(16), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("text", KText),
    Column("release", KText),  # the kernel that wrote it (its "Linux version" banner)
    Column("dump_key", KText, nullable=False),
    Column("collected_at", Float, nullable=False),
    UniqueConstraint("machine_id", "sha256"),
)

# Every pstore record hash a machine's store has seen, kept when retention deletes the
# record itself: systemd-pstore's archive keeps its copies for days, and a record seen
# again after its boot was deleted is not new.
pstore_seen = Table(
    "pstore_seen",
    metadata,
    Column("machine_id", String(64), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("first_seen", Float, nullable=False),
)

# What `khoctl kexec` (or the kexec.target hook) saw and did, and what the next boot
# must show; the next boot's ingest gives it a verdict.
kexec_attempts = Table(
    "kexec_attempts",
    metadata,
    Column("id", Int64, primary_key=True),
    # the attempt's identity across stores (sync, export, import)
    Column("uid", String(36), nullable=False, unique=True),
    Column("machine_id", String(64), nullable=False, index=True),
    Column("from_boot", ForeignKey("boots.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("source", String(16), nullable=False),  # khoctl | hook
    Column("target_image", KText),
    Column("target_release", KText),
    Column("target_abi", KText),
    Column("initrd", KText),
    Column("cmdline", KText),
    Column("checks", JSON, nullable=False),
    Column("forced", Boolean, nullable=False),
    Column("argv", JSON, nullable=False),  # every command run, as argv lists
    Column("expected_previous_release", KText, nullable=False),
    Column("expected_kexec_count", Int64, nullable=False),
    # khod.records.Verdict; NULL while open
    Column("verdict", String(32)),
    Column("verdict_boot", ForeignKey("boots.id", ondelete="SET NULL"), index=True),
    Column("verdict_detail", KText),
)

# How far `khoctl sync` got, per target database and row type: the last local row id
# the target has committed (for attempts: the first one that may still change).
sync_state = Table(
    "sync_state",
    metadata,
    Column("target", Text, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("last_id", Int64, nullable=False),
    Column("synced_at", Float, nullable=False),
)

# The fleet database's bounds on what one host may push (PostgreSQL; one row, id 1,
# set by `khoctl fleet init`; migration 0010's triggers enforce them on host roles).
fleet_limits = Table(
    "fleet_limits",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("max_row_bytes", BigInteger, nullable=False),  # one row's values, in bytes
    Column("max_push_rows", BigInteger, nullable=False),  # rows one transaction inserts
    Column("max_host_rows", BigInteger, nullable=False),  # rows a host has inserted in all
    Column("max_host_bytes", BigInteger, nullable=False),  # ... and their bytes
)

# Running totals that only ever go up: retention deletes the rows, never these. One row
# per machine, counter (``kexec_attempts``: khod_kexec_attempts_total) and label (the
# verdict). Bumped by triggers of migration 0011 in the transaction that writes the row.
counters = Table(
    "counters",
    metadata,
    Column("machine_id", String(64), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("label", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# What each host has pushed (PostgreSQL; written by the triggers only, never by a host).
host_usage = Table(
    "host_usage",
    metadata,
    Column("machine_id", String(64), primary_key=True),
    Column("rows", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("xact", BigInteger),  # the transaction counted last, and its rows so far
    Column("xact_rows", BigInteger, nullable=False),
)

# The compatible window of a fleet database (docs/fleet-versions.md): one row, id 1,
# the oldest revision whose khod may still push into this schema.
schema_compat = Table(
    "schema_compat",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("min_writer", String(32), nullable=False),
)

# Every host role the fleet database ever had (PostgreSQL; the owner's only, written by
# `khoctl fleet enroll|revoke`): a revoked role's name is never made again.
fleet_roles = Table(
    "fleet_roles",
    metadata,
    Column("role", String(63), primary_key=True),
    Column("machine_id", String(64), nullable=False),
    Column("generation", Integer, nullable=False),  # 0: host_<id>; n: host_<id>_<n>
    Column("enrolled_at", Float, nullable=False),
    Column("revoked_at", Float),
)
