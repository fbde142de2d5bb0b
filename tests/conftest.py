from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event

from tests.builders import Host
from tests.pgserver import PostgresServer, running_server

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
GOLDEN = Path(__file__).parent / "golden"
FIXTURES = DATA / "fixtures"
SCENARIOS = ("cold", "kexec1", "nokho", "pstore", "pstore-kho")


def fixture_steps() -> list[str]:
    """Every '<scenario>/<step>' captured from the real kernel."""
    return sorted(
        f"{s}/{step.name}" for s in SCENARIOS for step in (FIXTURES / s).iterdir() if step.is_dir()
    )


def restore_pstore_mtimes(step_dir: Path) -> None:
    """git keeps no mtimes; pstore record times come from PSTORE-MTIMES.txt."""
    listing = step_dir / "PSTORE-MTIMES.txt"
    if not listing.exists():
        return
    for line in listing.read_text().splitlines():
        ns, _iso, _size, name = line.split()
        f = step_dir / "sys" / "fs" / "pstore" / name
        if f.exists():
            os.utime(f, ns=(int(ns), int(ns)))


SysrootFactory = Callable[[str], Path]


@pytest.fixture
def sysroot(tmp_path: Path) -> SysrootFactory:
    """Copy a fixture step ('kexec1/step1') into tmp_path; the copy may be altered."""

    def make(step: str) -> Path:
        dst = tmp_path / "roots" / step.replace("/", "-")
        shutil.copytree(FIXTURES / step, dst)
        restore_pstore_mtimes(dst)
        return dst

    return make


HostFactory = Callable[..., Host]


@pytest.fixture
def host(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> HostFactory:
    """host(step, db): a copy of a fixture step ingested by ``khod --once`` into the
    store at ``db`` (``ingest=False``: only copied); its Host runs khod and khoctl."""

    def make(step: str, db: str | None = None, *, ingest: bool = True) -> Host:
        h = Host(sysroot(step), db, tmp_path / "state", capsys)
        if ingest:
            h.ingest()
        return h

    return make


def mounted_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``tmp_path/small`` (root only): a disk that fills, or that
    can be remounted read-only."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "khod-test", str(mnt)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, f"mounting a tmpfs needs root: {r.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session; each test gets its own database."""
    with running_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URL: every store test runs on both backends."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("pg_server")
        return server.url(server.create_database())
    return f"sqlite:///{tmp_path / 'state' / 'khod.db'}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """For what only SQLite has (a file, its permissions, WAL), and a host's own store
    beside a db_url fleet database."""
    return f"sqlite:///{tmp_path / 'host' / 'khod.db'}"


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    """Close every pooled connection a test's stores opened (the CLI's processes exit;
    a test's stores would otherwise close at garbage collection, mid-way through a
    later test)."""
    engines: dict[int, Engine] = {}  # held until teardown: never collected mid-test

    def seen(conn: Connection) -> None:
        engines.setdefault(id(conn.engine), conn.engine)

    event.listen(Engine, "engine_connect", seen)
    try:
        yield
    finally:
        event.remove(Engine, "engine_connect", seen)
        for engine in engines.values():
            engine.dispose()


SCHEMAS = Path(__file__).resolve().parent.parent / "khod" / "schemas"


@pytest.fixture(autouse=True, scope="session")
def _json_follows_its_schema() -> Iterator[None]:
    """Every --json document a test prints in-process is validated against the schema
    it names (khod/schemas/NAME.v1.json); one that does not follow it fails the
    command (an AssertionError, a traceback, never a silent pass)."""
    import json

    import jsonschema

    from khod.cli import common

    validators: dict[str, jsonschema.protocols.Validator] = {}

    def check(name: str, doc: object) -> None:
        if name not in validators:
            schema = json.loads((SCHEMAS / f"{name}.v1.json").read_text())
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            validators[name] = cls(schema, format_checker=cls.FORMAT_CHECKER)
        errors = sorted(validators[name].iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"--json of {name} does not follow its schema: {errors[0]}"

    common.JSON_CHECK = check
    yield
    common.JSON_CHECK = None


# The end-to-end runs' per-boot tables (tests/vm/harness.py, tests/vm/guestimage.py) in
# pytest's summary, where CI output shows them; under pytest-xdist each worker hands its
# own tables to the controller, which prints them. Here, not in tests/vm/conftest.py: the
# controller collects nothing, so it loads only this conftest.
def _table_lists() -> dict[str, list[str]]:
    from tests.vm import guestimage, harness

    return {"khod_vm_tables": harness.TABLES, "khod_guest_tables": guestimage.TABLES}


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = getattr(session.config, "workeroutput", None)
    if out is not None:  # an xdist worker
        for key, tables in _table_lists().items():
            out[key] = list(tables)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    out = getattr(node, "workeroutput", {})
    for key, tables in _table_lists().items():
        tables.extend(out.get(key, []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lists = _table_lists()
    sections = (
        ("khod_vm_tables", "khod end-to-end: every boot, the kernel's word and khod's"),
        ("khod_guest_tables", "khod in a systemd-booted Debian 13 guest"),
    )
    for key, title in sections:
        if lists[key]:
            terminalreporter.section(title)
            for t in lists[key]:
                terminalreporter.write_line(t)
