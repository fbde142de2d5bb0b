"""A host raises the warning count of its own boots it pushed already (PostgreSQL only).

A boot is pushed once, at the first sync after khod saw it; its ``warnings`` keep
growing locally while it runs (the daemon's later ingests, ``khoctl kexec`` at its end),
so the fleet kept the count of the first push and the report's warned boots and
warnings per transition undercounted what the hosts saw. Now a host may raise it:

- ``khod_host`` gets ``UPDATE (warnings)`` and ``SELECT (warnings)`` on ``boots``, and
  policy ``host_warnings`` keeps it to the host's own boots (as 0010's ``host_verdict``
  keeps verdicts to its own open attempts);
- a host may only raise it (``khod_host_raises_warnings``, before the row is written;
  it reads the row and ``session_user`` only, so runs as the updater): a lower count or
  none after a count is refused in one line; the owner's import is not held to it;
- the bound and quota triggers are made again from the catalog (``khod.fleet.bounds``):
  an updated boot counts against the host's quota as an inserted one does; the row
  bound triggers of every table now fire for a host's session only (a ``WHEN``), so
  the owner's import no longer calls them once per row only for them to return;
- the rollups count the update as they counted any update of a boot since 0013 (the
  old row out, the new one in).

``schema_compat.min_writer`` stays 0011 (docs/fleet-versions.md): an older khod sends
nothing new here. A khod of this revision raises counts only in a database that lets its
role (``has_column_privilege``), and pushes into an older one as before.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from khod.fleet import bounds

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

MACHINE = "khod_host_machine()"  # 0010's, 0012's form

_RAISES = r"""
CREATE FUNCTION khod_host_raises_warnings() RETURNS trigger LANGUAGE plpgsql
SET search_path = @SCHEMA@, pg_temp AS $$
BEGIN
    IF session_user::text NOT LIKE 'host\_%' OR NEW.warnings IS NOT DISTINCT FROM OLD.warnings
    THEN
        RETURN NEW;
    END IF;
    IF NEW.warnings IS NULL OR NEW.warnings < 0 OR NEW.warnings < OLD.warnings THEN
        RAISE EXCEPTION 'khod fleet: host % may only raise the warnings of boot % (% -> %)',
            khod_host_machine(), OLD.boot_id, OLD.warnings, coalesce(NEW.warnings::text, 'none')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$
"""


def _has_host_role() -> bool:
    q = "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'khod_host')"
    return bool(op.get_bind().execute(sa.text(q)).scalar())


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(_RAISES.replace("@SCHEMA@", schema))
    op.execute("REVOKE ALL ON FUNCTION khod_host_raises_warnings() FROM PUBLIC")
    op.execute(
        "CREATE TRIGGER khod_host_raises_warnings BEFORE UPDATE OF warnings ON boots "
        "FOR EACH ROW EXECUTE FUNCTION khod_host_raises_warnings()"
    )
    if not _has_host_role():
        return
    op.execute("GRANT SELECT (warnings), UPDATE (warnings) ON boots TO khod_host")
    op.execute(
        "CREATE POLICY host_warnings ON boots FOR UPDATE TO khod_host "
        f"USING (machine_id = {MACHINE}) WITH CHECK (machine_id = {MACHINE})"
    )
    bounds.weigh(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if _has_host_role():
        op.execute("DROP POLICY IF EXISTS host_warnings ON boots")
        op.execute("REVOKE SELECT (warnings), UPDATE (warnings) ON boots FROM khod_host")
        bounds.weigh(bind)
    op.execute("DROP TRIGGER khod_host_raises_warnings ON boots")
    op.execute("DROP FUNCTION khod_host_raises_warnings()")
