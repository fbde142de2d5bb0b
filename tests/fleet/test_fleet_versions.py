"""Mixed khod versions on one fleet database (docs/fleet-versions.md): the previous
release, built here from the repository's own history, and this one push into one
TLS fleet database through their host roles, in both orders of upgrade, with nothing
lost and no failed push; a push never migrates a fleet database, and one of the next
revision takes this khod's pushes when it says it does (``schema_compat``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from khod.fleet.worker import failure_reason
from khod.store import migrate
from khod.store.db import current_revision, open_store
from khod.store.schema import HEAD_REVISION
from tests import pgserver
from tests.conftest import REPO
from tests.fleet.test_fleet_trust import CHAIN, A, B, Fleet, Host, ctl, ingest, root_of

# The previous release: main before the compatible window (move it at each release)
PREVIOUS_RELEASE = "a20836d38764b209fd0a7a62b3f70d3a744f72d7"
# the last revision with the rollups but not 0014's lock (head 0013): inside the window
ROLLUPS_RELEASE = "e5de7aba995082ee275852161f1097b7ba31bac8"
KEXEC = ["kexec1/step0", "kexec1/step1"]


@dataclass
class Release:
    """One release of khod, run as processes of its own: ``path`` first on the module
    path (None: this checkout's)."""

    name: str
    path: Path | None
    cwd: Path

    def ctl(self, *argv: str) -> tuple[int, str, str]:
        done = self.run("khoctl", *argv)
        return done.returncode, done.stdout, done.stderr

    def run(self, tool: str, *argv: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if self.path is not None:
            env["PYTHONPATH"] = str(self.path)
        module = {"khod": "khod_main", "khoctl": "khoctl"}[tool]
        code = f"import sys; sys.argv[0] = {tool!r}; from khod.cli.{module} import run; run()"
        return subprocess.run(
            [sys.executable, "-c", code, *argv],
            check=False,
            capture_output=True,
            text=True,
            cwd=self.cwd,  # not the checkout: it would come first on the module path
            env=env,
            timeout=300,
        )


def build_previous(tmp: Path, commit: str = PREVIOUS_RELEASE) -> Path:
    """An earlier khod (PREVIOUS_RELEASE's) from this repository's history, laid out as
    its package installs it (pyproject: ``migrations`` ships as ``khod.migrations``)."""
    # a git checkout is required (CI runs a clone): the previous release is built from
    # its history, and a missing one fails here rather than skipping the mixed fleet
    assert (REPO / ".git").exists(), "not a git checkout: the previous release comes from it"
    src, site = tmp / "src", tmp / "site"
    src.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "khod", "migrations"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    shutil.copytree(src / "khod", site / "khod")
    shutil.copytree(src / "migrations", site / "khod" / "migrations")
    return site


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Release, Release]:
    tmp = tmp_path_factory.mktemp("releases")
    return (
        Release("previous", build_previous(tmp), tmp),
        Release("current", None, tmp),
    )


@pytest.fixture(scope="module")
def tls_server() -> Iterator[pgserver.PostgresServer]:
    with pgserver.running_server(tls=True) as server:
        yield server


def new_fleet(server: pgserver.PostgresServer, tmp: Path, owner: Release) -> Fleet:
    db = server.create_database()
    fleet = Fleet(server, db, server.url(db), tmp, {}, {})
    done = owner.run("khoctl", "fleet", "init", "--db", fleet.owner)
    assert done.returncode == 0, done.stderr
    return fleet


class Pushes:
    """Each host's boots ingested and pushed by the release it runs at the time."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.failed: list[str] = []
        self.steps = {A: list(CHAIN), B: list(KEXEC)}

    def boot(self, host: Host, release: Release) -> None:
        """The host's next boot recorded (B's first with its kexec attempt), then a push."""
        step = self.steps[host.machine].pop(0)
        root = str(root_of(self.fleet.tmp, step))
        done = release.run("khod", "--once", "--sysroot", root, "--db", host.local)
        assert done.returncode == 0, (release.name, done.stderr)
        if step == KEXEC[0]:
            done = release.run("khoctl", "record-kexec", "--sysroot", root, "--db", host.local)
            assert done.returncode == 0, (release.name, done.stderr)
        self.push(host, release)

    def push(self, host: Host, release: Release) -> None:
        done = release.run("khoctl", "sync", "--db", host.local, "--config", str(host.config))
        if done.returncode != 0:
            self.failed.append(f"{release.name} {host.machine}: {done.stderr.strip()}")

    def upgrade_database(self, release: Release) -> None:
        done = release.run("khoctl", "db", "upgrade", "--db", self.fleet.owner)
        assert done.returncode == 0, done.stderr


def local_rows(host: Host) -> dict[str, int]:
    store = open_store(host.local, create=False)
    try:
        with store.engine.connect() as conn:
            return {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("boots", "blobs", "pstore_records", "kexec_attempts")
            }
    finally:
        store.dispose()


def assert_nothing_lost(fleet: Fleet) -> None:
    for machine, host in fleet.hosts.items():
        held = fleet.owner_rows(machine)
        want = local_rows(host)
        assert {t: len(held[t]) for t in want} == want, machine
    (attempt,) = fleet.owner_rows(B)["kexec_attempts"]
    assert json.loads(attempt)["verdict"] == "landed"


@pytest.mark.parametrize("order", ["hosts-first", "database-first"])
def test_the_previous_release_and_this_one_share_a_fleet_database(
    order: str,
    releases: tuple[Release, Release],
    tls_server: pgserver.PostgresServer,
    tmp_path: Path,
) -> None:
    """A fleet made by the previous release, its hosts upgraded one by one, and its
    database by its owner after them (hosts-first: every push goes through) or before
    them (database-first: the previous release predates the compatible window and
    refuses a database past its head, in one line, until its host is upgraded). Either
    way the fleet ends with every host's rows: a refused push loses nothing."""
    previous, current = releases
    fleet = new_fleet(tls_server, tmp_path, previous)
    p = Pushes(fleet)
    a, b = fleet.enroll(A, khoctl=previous.ctl), fleet.enroll(B, khoctl=previous.ctl)
    p.boot(a, previous)
    p.boot(b, previous)  # its attempt, open
    if order == "database-first":
        p.upgrade_database(current)
    p.boot(a, current)  # A upgraded
    p.push(b, previous)  # B not yet
    p.boot(b, current)  # B upgraded: the attempt's verdict
    if order == "hosts-first":
        p.upgrade_database(current)
    p.boot(a, current)
    p.push(a, current)
    p.push(b, current)
    if order == "hosts-first":
        assert p.failed == []
    else:  # B's push by the previous release, into the upgraded database
        (line,) = p.failed
        assert line.startswith(f"previous {B}: khoctl: error: database ")
        assert line.endswith(
            f": schema {HEAD_REVISION} is newer than this khod (head 0011): upgrade khod"
        )
    assert_nothing_lost(fleet)
    assert fleet.server.psql("SELECT version_num FROM alembic_version", fleet.db).strip() == (
        HEAD_REVISION
    )


@pytest.mark.parametrize("order", ["hosts-first", "database-first"])
def test_a_release_inside_the_window_and_this_one_share_a_fleet_database(
    order: str,
    releases: tuple[Release, Release],
    tls_server: pgserver.PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """The release before migration 0014 (head 0013, which knows the compatible window)
    and this one, in both orders of upgrade: no push refused either way (0014 keeps
    ``min_writer`` at 0011), nothing lost, and the rollups the triggers of both
    revisions kept agree with the rows counted again (``khoctl fleet rollups``)."""
    tmp = tmp_path_factory.mktemp("rollups-release")
    previous = Release("0013", build_previous(tmp, ROLLUPS_RELEASE), tmp)
    current = releases[1]
    fleet = new_fleet(tls_server, tmp_path, previous)
    assert current_revision_of(fleet) == "0013"
    p = Pushes(fleet)
    a, b = fleet.enroll(A, khoctl=previous.ctl), fleet.enroll(B, khoctl=previous.ctl)
    p.boot(a, previous)
    p.boot(b, previous)
    if order == "database-first":
        p.upgrade_database(current)
    p.boot(a, current)
    p.push(b, previous)  # into 0014 (database-first) or 0013
    p.boot(b, current)
    if order == "hosts-first":
        p.upgrade_database(current)
    p.boot(a, current)
    p.push(b, current)
    assert p.failed == []
    assert_nothing_lost(fleet)
    assert current_revision_of(fleet) == HEAD_REVISION
    rc, out, err = current.ctl("fleet", "rollups", "--db", fleet.owner)
    assert rc == 0 and out.startswith("rollups agree with "), (out, err)


def current_revision_of(fleet: Fleet) -> str:
    return fleet.server.psql("SELECT version_num FROM alembic_version", fleet.db).strip()


NEXT = "9012"  # a revision this khod does not know: the next release's


def test_a_fleet_database_of_the_next_revision_takes_this_khods_pushes_when_it_says_so(
    releases: tuple[Release, Release], tls_server: pgserver.PostgresServer, tmp_path: Path
) -> None:
    """The owner upgraded the fleet database past this khod (a column added, its window
    recorded): this khod pushes into it, never touching its schema; when the window
    closes, a push is refused in one line (reason ``schema``) and nothing is lost: it
    all goes through once the window lets this khod in again."""
    _, current = releases
    fleet = new_fleet(tls_server, tmp_path, current)
    a = fleet.enroll(A)
    p = Pushes(fleet)
    p.boot(a, current)
    fleet.server.psql(
        "ALTER TABLE boots ADD COLUMN next_release_note text; "
        "CREATE TABLE IF NOT EXISTS schema_compat "  # made by 0012 onwards
        "(id integer PRIMARY KEY, min_writer varchar(32) NOT NULL); "
        f"INSERT INTO schema_compat VALUES (1, '{HEAD_REVISION}') "
        "ON CONFLICT (id) DO UPDATE SET min_writer = excluded.min_writer; "
        "GRANT SELECT ON schema_compat TO khod_host; "
        f"UPDATE alembic_version SET version_num = '{NEXT}'",
        fleet.db,
    )
    p.boot(a, current)
    assert p.failed == []
    fleet.server.psql(f"UPDATE schema_compat SET min_writer = '{NEXT}'", fleet.db)
    p.boot(a, current)
    (line,) = p.failed
    assert f"schema {NEXT} is newer than this khod" in line and "\n" not in line, line
    assert failure_reason(line) == "schema"
    fleet.server.psql(f"UPDATE schema_compat SET min_writer = '{HEAD_REVISION}'", fleet.db)
    p.failed.clear()
    p.push(a, current)
    assert p.failed == []
    assert_nothing_lost_of(fleet, a)
    assert fleet.server.psql("SELECT version_num FROM alembic_version", fleet.db).strip() == NEXT


def assert_nothing_lost_of(fleet: Fleet, host: Host) -> None:
    held = fleet.owner_rows(host.machine)
    want = local_rows(host)
    assert {t: len(held[t]) for t in want} == want


def test_a_push_never_migrates_an_older_fleet_database(
    pg_server: pgserver.PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fleet database two revisions behind (older than the previous release's): the
    push is refused in one line naming what its owner runs, and the database stays at
    its revision, even through a role that could migrate it."""
    url = pg_server.url(pg_server.create_database())
    store = open_store(url, migrate=False)
    migrate.upgrade(store, None, "0010")
    host = Host(A, tmp_path, f"sqlite:///{tmp_path / 'host.db'}", tmp_path / "none.toml")
    ingest(tmp_path, host.local, CHAIN[0])
    rc, out, err = ctl("sync", "--db", host.local, "--to", url)
    assert rc == 1 and out == "" and err.count("\n") == 1, err
    assert "schema revision 0010 is older than this khod" in err
    assert "khoctl db upgrade" in err
    assert current_revision(store) == "0010"
    store.dispose()


def test_enrolling_never_migrates_the_fleet_database(
    releases: tuple[Release, Release], tls_server: pgserver.PostgresServer, tmp_path: Path
) -> None:
    """A fleet database at the previous release's revision: this khoctl's enroll
    refuses in one line and leaves the schema as it was (its hosts may still run the
    previous release, which refuses a newer one)."""
    previous, _ = releases
    fleet = new_fleet(tls_server, tmp_path, previous)
    rc, _, err = ctl(
        "fleet", "enroll", A, "--db", fleet.owner, "--out", str(tmp_path / "a"),
        "--ca-cert", str(tls_server.ca_cert), "--ca-key", str(tls_server.ca_key),
    )  # fmt: skip
    assert rc == 1
    assert err.count("\n") == 1 and "is at schema revision 0011" in err, err
    assert "khoctl db upgrade" in err
    rev = fleet.server.psql("SELECT version_num FROM alembic_version", fleet.db).strip()
    assert rev == "0011"
