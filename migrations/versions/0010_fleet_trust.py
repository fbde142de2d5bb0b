"""Fleet trust: a host writes only its own history. Roles ``khod_host`` (the group of
every host's login role, ``host_<machine_id>``) and ``khod_report`` (reads all, writes
nothing); row-level security tying each row to the host that inserts it; per-host
bounds (``fleet_limits``, ``host_usage``) checked by triggers. PostgreSQL only: the
embedded SQLite store gets the two tables and nothing else.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# the host's machine id, from its login role's name (``host_<machine_id>``); NULL for any
# other session. session_user: SET ROLE cannot change it, only a superuser can.
MACHINE = "khod_host_machine()"


def _own(col: str) -> str:
    return f"EXISTS (SELECT 1 FROM boots b WHERE b.id = {col} AND b.machine_id = {MACHINE})"


# table -> (INSERT check, SELECT filter)
POLICIES = {
    "boots": (f"machine_id = {MACHINE}", f"machine_id = {MACHINE}"),
    "blobs": (_own("boot_pk"), _own("boot_pk")),
    "events": (_own("boot_pk"), _own("boot_pk")),
    "pstore_records": (
        f"machine_id = {MACHINE} AND {_own('collected_by')} "
        f"AND (describes IS NULL OR {_own('describes')})",
        f"machine_id = {MACHINE}",
    ),
    "kexec_attempts": (
        f"machine_id = {MACHINE} AND {_own('from_boot')} "
        f"AND (verdict_boot IS NULL OR {_own('verdict_boot')})",
        f"machine_id = {MACHINE}",
    ),
}
# what a host may read back of its own rows: the identifiers its push resolves (boot
# ids, attempt uids and verdicts), RETURNs, and checks for conflicts (each table's
# natural key); reading anything else is refused
HOST_READS = {
    "boots": "id, machine_id, boot_id",
    "blobs": "id, boot_pk, direction, name",
    "events": "id, boot_pk, fingerprint",
    "pstore_records": "id, machine_id, sha256",
    "kexec_attempts": "id, uid, machine_id, verdict",
}
# the variable-length columns of each table: what a row weighs against the bounds
SIZED = {
    "boots": "release cmdline kind_reason kho_abi previous_release previous_release_raw "
    "out_release subtrees out_subtrees scratch",
    "blobs": "name data",
    "events": "source message",
    "pstore_records": "path name type backend reason raw text release dump_key",
    "kexec_attempts": "target_image target_release target_abi initrd cmdline checks argv "
    "expected_previous_release verdict_detail",
}
JSON_COLUMNS = {"subtrees", "out_subtrees", "scratch", "checks", "argv"}
FIXED_ROW_BYTES = 128  # the fixed-size columns, roughly


def _weight(table: str) -> str:
    parts = [
        f"coalesce(octet_length({c}{'::text' if c in JSON_COLUMNS else ''}), 0)"
        for c in SIZED[table].split()
    ]
    return " + ".join([str(FIXED_ROW_BYTES), *parts])


def upgrade() -> None:
    op.create_table(
        "fleet_limits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("max_row_bytes", sa.BigInteger(), nullable=False),
        sa.Column("max_push_rows", sa.BigInteger(), nullable=False),
        sa.Column("max_host_rows", sa.BigInteger(), nullable=False),
        sa.Column("max_host_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_limits")),
    )
    op.create_table(
        "host_usage",
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("xact", sa.BigInteger(), nullable=True),
        sa.Column("xact_rows", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("machine_id", name=op.f("pk_host_usage")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    for role in ("khod_host", "khod_report"):
        # roles belong to the cluster: another fleet database may have made them
        op.execute(
            f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    op.execute(
        "INSERT INTO fleet_limits (id, max_row_bytes, max_push_rows, max_host_rows, "
        f"max_host_bytes) VALUES (1, {32 << 20}, 100000, 5000000, {4 << 30})"
    )
    op.execute(
        f"CREATE FUNCTION {MACHINE} RETURNS text LANGUAGE sql STABLE "
        f"SET search_path = {schema}, pg_temp AS $$ "
        "SELECT CASE WHEN session_user::text LIKE 'host\\_%' "
        "THEN substr(session_user::text, 6) END $$"
    )
    op.execute(_QUOTA.replace("@SCHEMA@", schema))
    tables = list(POLICIES)
    op.execute(f"GRANT INSERT ON {', '.join(tables)} TO khod_host")
    for table, cols in HOST_READS.items():
        op.execute(f"GRANT SELECT ({cols}) ON {table} TO khod_host")
    # an attempt sent while open gets its verdict once (a policy keeps it to open ones)
    op.execute(
        "GRANT UPDATE (verdict, verdict_boot, verdict_detail) ON kexec_attempts TO khod_host"
    )
    op.execute(f"GRANT SELECT ON {', '.join(tables)}, fleet_limits TO khod_report")
    op.execute("GRANT SELECT ON alembic_version TO khod_host, khod_report")
    for table, (check, own) in POLICIES.items():
        op.execute(
            f"DO $$ BEGIN EXECUTE format('GRANT USAGE ON SEQUENCE %s TO khod_host', "
            f"pg_get_serial_sequence('{table}', 'id')); END $$"
        )
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY host_insert ON {table} FOR INSERT TO khod_host WITH CHECK ({check})"
        )
        op.execute(f"CREATE POLICY host_select ON {table} FOR SELECT TO khod_host USING ({own})")
        op.execute(f"CREATE POLICY report_select ON {table} FOR SELECT TO khod_report USING (true)")
        op.execute(
            f"CREATE TRIGGER khod_host_quota AFTER INSERT ON {table} "
            "REFERENCING NEW TABLE AS khod_new_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION khod_host_quota('{_weight(table)}')"
        )
    op.execute(
        "CREATE POLICY host_verdict ON kexec_attempts FOR UPDATE TO khod_host "
        f"USING (machine_id = {MACHINE} AND verdict IS NULL) "
        f"WITH CHECK (machine_id = {MACHINE} AND "
        f"(verdict_boot IS NULL OR {_own('verdict_boot')}))"
    )


# After each insert statement of a host: the heaviest row, the rows of this transaction
# and the host's totals against fleet_limits. SECURITY DEFINER (hosts cannot write
# host_usage), with a search path a host's temporary tables cannot shadow.
_QUOTA = r"""
CREATE FUNCTION khod_host_quota() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = @SCHEMA@, pg_temp AS $$
DECLARE
    me text := khod_host_machine();
    n bigint;
    total bigint;
    heaviest bigint;
    lim fleet_limits%ROWTYPE;
    u host_usage%ROWTYPE;
BEGIN
    IF me IS NULL OR NOT pg_has_role(session_user, 'khod_host', 'MEMBER') THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*), coalesce(sum(%1$s), 0), coalesce(max(%1$s), 0) '
                   'FROM khod_new_rows', TG_ARGV[0]) INTO n, total, heaviest;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    SELECT * INTO lim FROM fleet_limits WHERE id = 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'khod fleet: no limits set (run khoctl fleet init)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF heaviest > lim.max_row_bytes THEN
        RAISE EXCEPTION 'khod fleet: host % sent a % row of % bytes, over the limit of % bytes',
            me, TG_TABLE_NAME, heaviest, lim.max_row_bytes
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    INSERT INTO host_usage AS h (machine_id, rows, bytes, xact, xact_rows)
    VALUES (me, n, total, txid_current(), n)
    ON CONFLICT (machine_id) DO UPDATE SET
        rows = h.rows + n,
        bytes = h.bytes + total,
        xact_rows = CASE WHEN h.xact = txid_current() THEN h.xact_rows + n ELSE n END,
        xact = txid_current()
    RETURNING * INTO u;
    IF u.xact_rows > lim.max_push_rows THEN
        RAISE EXCEPTION 'khod fleet: host % sent % rows in one transaction, over the limit of %',
            me, u.xact_rows, lim.max_push_rows
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF u.rows > lim.max_host_rows OR u.bytes > lim.max_host_bytes THEN
        RAISE EXCEPTION 'khod fleet: host % is over its quota: % rows, % bytes '
            '(limits % rows, % bytes)',
            me, u.rows, u.bytes, lim.max_host_rows, lim.max_host_bytes
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN NULL;
END $$
"""


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in POLICIES:
            op.execute(f"DROP TRIGGER IF EXISTS khod_host_quota ON {table}")
            for policy in ("host_insert", "host_select", "report_select"):
                op.execute(f"DROP POLICY IF EXISTS {policy} ON {table}")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
            op.execute(f"REVOKE ALL ON {table} FROM khod_host, khod_report")
            op.execute(
                f"DO $$ BEGIN EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM khod_host', "
                f"pg_get_serial_sequence('{table}', 'id')); END $$"
            )
        op.execute("DROP POLICY IF EXISTS host_verdict ON kexec_attempts")
        op.execute("REVOKE ALL ON alembic_version FROM khod_host, khod_report")
        op.execute("DROP FUNCTION IF EXISTS khod_host_quota()")
        op.execute(f"DROP FUNCTION IF EXISTS {MACHINE}")
        op.execute("REVOKE ALL ON fleet_limits FROM khod_report")
        # the roles stay: they belong to the cluster, other databases may use them
    op.drop_table("host_usage")
    op.drop_table("fleet_limits")
