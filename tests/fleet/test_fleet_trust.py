"""Fleet trust on a real PostgreSQL with real TLS: each host writes only its own history
through its own role (client certificate, ``cert`` auth, row-level security), a reader
reads everything and writes nothing, and an absurd push is refused by the server.

One TLS cluster per kind of owner (tests.pgserver, ``tls=True``): the ``postgres``
superuser, or ``fleet_owner`` with CREATEROLE only (given by a superuser what ``fleet
init`` says it lacks); one fleet database set up with ``khoctl fleet init`` and two
hosts enrolled: A (the pstore-kho chain) and B (kexec1, with a kexec attempt whose
verdict follows it). Every test runs with both owners.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from khod.cli import khoctl, khod_main
from khod.cli.common import run_main
from khod.fleet import certs
from khod.store.schema import HEAD_REVISION
from tests import daemon_helpers, pgserver
from tests.conftest import FIXTURES, restore_pstore_mtimes

CHAIN = ["pstore-kho/step0", "pstore-kho/step1", "pstore-kho/step2", "pstore-kho/step3"]
TABLES = ("boots", "blobs", "events", "pstore_records", "kexec_attempts")


def machine_of(step: str) -> str:
    return (FIXTURES / step / "etc" / "machine-id").read_text().strip()


A = machine_of("pstore-kho/step0")
B = machine_of("kexec1/step0")


def ctl(*argv: str) -> tuple[int, str, str]:
    """khoctl in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_main("khoctl", khoctl.main, list(argv))
    return rc, out.getvalue(), err.getvalue()


def root_of(tmp: Path, step: str) -> Path:
    dst = tmp / "roots" / step.replace("/", "-")
    if not dst.exists():
        shutil.copytree(FIXTURES / step, dst)
        restore_pstore_mtimes(dst)
    return dst


def ingest(tmp: Path, db: str, step: str) -> None:
    argv = ["--once", "--sysroot", str(root_of(tmp, step)), "--db", db]
    assert run_main("khod", khod_main.main, argv) == 0


@dataclass
class Host:
    machine: str
    dir: Path  # what `khoctl fleet enroll` wrote: ca.crt, host.crt, host.key
    local: str  # its own SQLite store
    config: Path  # its khod.toml: [sync] over verified TLS, no user: the certificate's CN
    role: str = ""  # host_<machine_id>, or host_<machine_id>_<n> enrolled again

    def __post_init__(self) -> None:
        self.role = self.role or f"host_{self.machine}"

    def conninfo(self, fleet: Fleet, **override: str) -> str:
        params = {
            "host": "localhost",
            "port": str(fleet.server.port),
            "dbname": fleet.db,
            "user": self.role,
            "sslmode": "verify-full",
            "sslrootcert": str(self.dir / "ca.crt"),
            "sslcert": str(self.dir / "host.crt"),
            "sslkey": str(self.dir / "host.key"),
            "connect_timeout": "10",
        }
        params.update(override)
        return make_conninfo(**params)


@dataclass
class Fleet:
    server: pgserver.PostgresServer
    db: str
    owner: str  # the operator's URL (the superuser, over loopback)
    tmp: Path
    hosts: dict[str, Host]
    synced: dict[str, Any]

    def url(self, role: str, host: str = "localhost", query: str = "") -> str:
        user = f"{role}@" if role else ""
        return f"postgresql+psycopg://{user}{host}:{self.server.port}/{self.db}{query}"

    def enroll(
        self,
        machine: str,
        out: Path | None = None,
        user: bool = True,
        khoctl: Callable[..., tuple[int, str, str]] | None = None,
    ) -> Host:
        """``user``: the role in khod.toml's URL; else none, the certificate's CN.
        ``khoctl``: the khoctl that enrolls (this checkout's by default)."""
        out = out or self.tmp / f"enrolled-{machine}"
        rc, said, err = (khoctl or ctl)(
            "fleet", "enroll", machine, "--db", self.owner, "--out", str(out), "--json",
            "--ca-cert", str(self.server.ca_cert), "--ca-key", str(self.server.ca_key),
        )  # fmt: skip
        assert rc == 0, err
        role = json.loads(said)["role"]
        config = out / "khod.toml"
        config.write_text(
            f'[sync]\nto = "{self.url(role if user else "")}"\nsslmode = "verify-full"\n'
            f'ca = "{out / "ca.crt"}"\ncert = "{out / "host.crt"}"\nkey = "{out / "host.key"}"\n'
        )
        local = f"sqlite:///{self.tmp / machine / 'khod.db'}"
        host = Host(machine, out, local, config, role)
        self.hosts[machine] = host
        return host

    def owner_rows(self, machine: str) -> dict[str, list[str]]:
        """Every row of the machine's, in every fleet table, as the server renders it."""
        out = {}
        for table in TABLES:
            if table in ("blobs", "events"):
                where = f"boot_pk IN (SELECT id FROM boots WHERE machine_id = '{machine}')"
            else:
                where = f"machine_id = '{machine}'"
            q = f"SELECT row_to_json(t)::text FROM {table} t WHERE {where} ORDER BY id"
            out[table] = self.server.psql(q, self.db).splitlines()
        return out


def sync(host: Host, *extra: str) -> tuple[int, str, str]:
    return ctl("sync", "--db", host.local, "--config", str(host.config), *extra)


OWNERS = ("superuser", "createrole")


@pytest.fixture(scope="module", params=OWNERS)
def tls_server(request: pytest.FixtureRequest) -> Iterator[pgserver.PostgresServer]:
    with pgserver.running_server(tls=True) as server:
        server.owner_kind = request.param
        yield server


def owner_url(server: pgserver.PostgresServer, db: str) -> str:
    if server.owner_kind == "superuser":
        return server.url(db)
    return f"postgresql+psycopg://fleet_owner@127.0.0.1:{server.port}/{db}"


def new_database(server: pgserver.PostgresServer) -> str:
    """An empty database of the owner's (the superuser makes it, as an operator would)."""
    db = server.create_database()
    if server.owner_kind != "superuser":
        server.psql("DO $$ BEGIN CREATE ROLE fleet_owner LOGIN CREATEROLE; "
                    "EXCEPTION WHEN duplicate_object THEN NULL; END $$")  # fmt: skip
        server.psql(f"ALTER DATABASE {db} OWNER TO fleet_owner")
    return db


@pytest.fixture(scope="module")
def fleet(
    tls_server: pgserver.PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """The fleet database after `fleet init`, A and B enrolled, each synced through its
    own role: A's chain in two pushes, B's boot, its open kexec attempt, then the boot
    that gives the attempt its verdict. An owner that is not a superuser is first told,
    in one line, what a superuser must give it; the superuser runs that, as documented."""
    tmp = tmp_path_factory.mktemp("fleet")
    db = new_database(tls_server)
    fleet = Fleet(tls_server, db, owner_url(tls_server, db), tmp, {}, {})
    rc, out, err = ctl("fleet", "init", "--db", fleet.owner, "--json")
    if tls_server.owner_kind != "superuser":
        said = f"runs, in database {db}: "
        assert rc == 1 and out == "" and err.count("\n") == 1 and said in err, err
        assert err.startswith("khoctl: error: fleet init: the owner fleet_owner is not a superuser")
        fleet.synced["init-refused"] = err
        tls_server.psql(err.split(said, 1)[1].strip(), db)
        rc, out, err = ctl("fleet", "init", "--db", fleet.owner, "--json")
    assert rc == 0, err
    fleet.synced["init"] = json.loads(out)
    a, b = fleet.enroll(A), fleet.enroll(B)
    for step in CHAIN[:2]:
        ingest(tmp, a.local, step)
    fleet.synced["a1"] = sync(a, "--json")
    for step in CHAIN[2:]:
        ingest(tmp, a.local, step)
    fleet.synced["a2"] = sync(a, "--json")
    fleet.synced["a3"] = sync(a, "--json")
    ingest(tmp, b.local, "kexec1/step0")
    argv = ["record-kexec", "--sysroot", str(root_of(tmp, "kexec1/step0")), "--db", b.local]
    assert ctl(*argv)[0] == 0
    fleet.synced["b1"] = sync(b, "--json")
    ingest(tmp, b.local, "kexec1/step1")
    fleet.synced["b2"] = sync(b, "--json")
    fleet.synced["b_full"] = sync(b, "--full", "--json")
    yield fleet


# --- each host writes its own history, through its own role ----------------------


def test_hosts_sync_their_own_history_through_their_roles(fleet: Fleet) -> None:
    s = fleet.synced
    assert s["init"]["limits"]["max_push_rows"] == 100000
    for key in ("a1", "a2", "a3", "b1", "b2", "b_full"):
        assert s[key][0] == 0, (key, s[key])
    a1, a2, a3 = (json.loads(s[k][1]) for k in ("a1", "a2", "a3"))
    assert a1["new"]["boot"] == 2 and a2["new"]["boot"] == 2 and a2["sent"]["boot"] == 2
    assert a3["sent"] == {}  # nothing past the watermarks
    full = json.loads(s["b_full"][1])
    assert full["sent"]["boot"] == 2 and set(full["new"].values()) == {0}
    # what the fleet holds of each host is what the host holds, row for row
    for machine, host in fleet.hosts.items():
        local = sqlite3.connect(host.local.removeprefix("sqlite:///"))
        n_local = local.execute("SELECT count(*) FROM boots").fetchone()[0]
        n_blobs = local.execute("SELECT count(*) FROM blobs").fetchone()[0]
        local.close()
        rows = fleet.owner_rows(machine)
        assert (len(rows["boots"]), len(rows["blobs"])) == (n_local, n_blobs)
    # the attempt sent while open got its verdict through the host's column grant
    (attempt,) = fleet.owner_rows(B)["kexec_attempts"]
    assert json.loads(attempt)["verdict"] == "landed"


def refused(conn: psycopg.Connection[Any], sql: str) -> str:
    """The server's answer to a statement that must fail: its first line."""
    with pytest.raises(psycopg.Error) as e, conn.transaction():
        conn.execute(sql)
    return str(e.value).splitlines()[0]


def test_a_hosts_credentials_cannot_touch_another_hosts_history(fleet: Fleet) -> None:
    """Host A, with its own certificate: forging B's rows, pointing a crash at B's boot,
    changing or deleting any row, truncating, lifting its bounds: each refused by the
    server. B's rows are not even visible. Everything of B's is byte-identical after."""
    before = {m: fleet.owner_rows(m) for m in (A, B)}
    b_boot = json.loads(before[B]["boots"][0])
    a_boot = json.loads(before[A]["boots"][-1])
    rls = "new row violates row-level security policy for table"
    with psycopg.connect(fleet.hosts[A].conninfo(fleet), autocommit=True) as conn:
        # reading: the identifiers of B's rows are filtered out by the server (RLS)...
        for q in (
            f"SELECT count(*) FROM boots WHERE machine_id = '{B}'",
            f"SELECT count(*) FROM boots WHERE id = {b_boot['id']}",
            f"SELECT count(*) FROM kexec_attempts WHERE machine_id = '{B}'",
        ):
            row = conn.execute(q).fetchone()
            assert row == (0,), q
        row = conn.execute("SELECT count(DISTINCT machine_id) FROM boots").fetchone()
        assert row == (1,)
        row = conn.execute("SELECT count(*) FROM blobs").fetchone()
        assert row == (len(before[A]["blobs"]),)
        # ... and any content, B's or its own, is refused
        reads = {
            f"SELECT * FROM boots WHERE machine_id = '{B}'": "boots",
            f"SELECT release, cmdline FROM boots WHERE id = {b_boot['id']}": "boots",
            f"SELECT data FROM blobs WHERE boot_pk = {b_boot['id']}": "blobs",
            "SELECT message FROM events": "events",
            "SELECT text, raw FROM pstore_records": "pstore_records",
            "SELECT target_release FROM kexec_attempts": "kexec_attempts",
            "SELECT * FROM host_usage": "host_usage",
        }
        for q, table in reads.items():
            assert refused(conn, q) == f"permission denied for table {table}", q
        cols = "machine_id, boot_id, release, cmdline, kind, kho_enabled, subtrees, "
        cols += "out_subtrees, scratch, ingested_at, khod_version"
        vals = "'x', 'r', 'c', 'cold', false, '[]', '[]', '[]', 0, 'forged'"
        attacks = {
            "boot as B": (f"INSERT INTO boots ({cols}) VALUES ('{B}', {vals})", f'{rls} "boots"'),
            "blob on B's boot": (
                "INSERT INTO blobs (boot_pk, direction, name, size, sha256, data) "
                f"VALUES ({b_boot['id']}, 'in', 'fdt', 1, 'x', '\\x00')",
                f'{rls} "blobs"',
            ),
            "crash pointed at B's boot": (
                "INSERT INTO pstore_records (machine_id, sha256, collected_by, describes, "
                "location, path, name, type, backend, compressed, inflate_status, size, raw, "
                f"dump_key, collected_at, reason) VALUES ('{A}', 'f', {a_boot['id']}, "
                f"{b_boot['id']}, 'pstore', 'p', 'n', 'dmesg', 'ramoops', false, 'none', 1, "
                "'\\x00', 'k', 0, 'Panic')",
                f'{rls} "pstore_records"',
            ),
            "update B": (
                f"UPDATE boots SET release = 'x' WHERE machine_id = '{B}'",
                "permission denied for table boots",
            ),
            "update own": ("UPDATE boots SET release = 'x'", "permission denied for table boots"),
            "rewrite an attempt": (
                "UPDATE kexec_attempts SET target_release = 'x'",
                "permission denied for table kexec_attempts",
            ),
            "delete": ("DELETE FROM boots", "permission denied for table boots"),
            "delete blobs": ("DELETE FROM blobs", "permission denied for table blobs"),
            "truncate": ("TRUNCATE boots CASCADE", "permission denied for table boots"),
            "lift own quota": (
                "UPDATE fleet_limits SET max_host_rows = 1e12",
                "permission denied for table fleet_limits",
            ),
            "reset own usage": ("DELETE FROM host_usage", "permission denied for table host_usage"),
            "policies off": (
                "ALTER TABLE boots DISABLE ROW LEVEL SECURITY",
                "must be owner of table boots",
            ),
            "become the reader": (
                "SET ROLE khod_report",
                'permission denied to set role "khod_report"',
            ),
            "a table of its own": (
                "CREATE TABLE mine (x int)",
                "permission denied for schema public",
            ),
            "temporary tables": (
                "CREATE TEMP TABLE mine (x int)",
                f'permission denied to create temporary tables in database "{fleet.db}"',
            ),
        }
        answers = {name: refused(conn, sql) for name, (sql, _) in attacks.items()}
        for name, (_, expected) in attacks.items():
            assert answers[name] == expected, (name, answers[name])
        # a verdict can be given to an open attempt of its own only: B's is not there
        cur = conn.execute(
            f"UPDATE kexec_attempts SET verdict = 'mismatch' WHERE machine_id = '{B}'"
        )
        assert cur.rowcount == 0
    after = {m: fleet.owner_rows(m) for m in (A, B)}
    assert after == before


# --- bounds -------------------------------------------------------------------------


def test_an_absurd_push_is_refused_and_disturbs_no_other_host(fleet: Fleet) -> None:
    a, b = fleet.hosts[A], fleet.hosts[B]
    a_boot = json.loads(fleet.owner_rows(A)["boots"][-1])["id"]
    with psycopg.connect(a.conninfo(fleet), autocommit=True) as conn:
        # the role's own bounds, as the server applies them
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1min",)
        assert conn.execute("SHOW temp_file_limit").fetchone() == ("256MB",)
        with psycopg.connect(a.conninfo(fleet)), pytest.raises(psycopg.OperationalError) as e:
            psycopg.connect(a.conninfo(fleet))  # a third connection of the same host
        assert f'too many connections for role "{a.role}"' in str(e.value)
        # a statement timeout is only the role's default: a hostile host lifts it (and
        # cannot lift temp_file_limit: "permission denied to set parameter")...
        conn.execute("SET statement_timeout = 0")
        assert refused(conn, "SET temp_file_limit = -1") == (
            'permission denied to set parameter "temp_file_limit"'
        )
        # ... then sends a million rows in one statement: the server counts them
        answer = refused(
            conn,
            "INSERT INTO events (boot_pk, created_at, kind, source, severity, message, "
            f"fingerprint) SELECT {a_boot}, 0, 'flood', 's', 'info', 'm', g::text "
            "FROM generate_series(1, 1000000) g",
        )
        assert answer == (
            f"khod fleet: host {A} sent 1000000 rows in one transaction, over the limit of 100000"
        )
    # a 100 MiB blob, through khoctl sync: one line on the host, an event in its store
    local = a.local.removeprefix("sqlite:///")
    with sqlite3.connect(local) as db:
        (pk,) = db.execute("SELECT max(id) FROM boots").fetchone()
        db.execute(
            "INSERT INTO blobs (boot_pk, direction, name, size, sha256, data) "
            "VALUES (?, 'in', 'huge', ?, 'x', zeroblob(?))",
            (pk, 100 << 20, 100 << 20),
        )
    rc, out, err = sync(a)
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("khoctl: error: cannot write to database postgresql+psycopg://")
    said = re.search(
        rf"khod fleet: host {A} sent a blobs row of (\d+) bytes, over the limit of 33554432 "
        r"bytes$",
        err.rstrip(),
    )
    assert said and 0 < int(said[1]) - (100 << 20) < 1024, err  # the blob and its name
    with sqlite3.connect(local) as db:
        ((msg,),) = db.execute("SELECT message FROM events WHERE kind = 'sync-failed'").fetchall()
        assert msg in err
        db.execute("DELETE FROM blobs WHERE name = 'huge'")
    # another host pushes meanwhile as ever, and A's next push (a sane one) goes through
    ingest(fleet.tmp, b.local, "kexec1/step1")  # same boot again: nothing new
    rc, out, err = sync(b, "--full", "--json")
    assert rc == 0, err
    rc, out, err = sync(a, "--json")
    assert rc == 0 and json.loads(out)["new"] == {"event": 1}, (out, err)  # the event itself


def test_rows_of_another_machine_in_a_hosts_push_are_refused(fleet: Fleet) -> None:
    """A host store holding another machine's boots (an import, a forged store): the
    push is refused whole by the server, in one line."""
    a, b = fleet.hosts[A], fleet.hosts[B]
    forged = fleet.tmp / "forged.db"
    shutil.copyfile(a.local.removeprefix("sqlite:///"), forged)
    export = fleet.tmp / "b.jsonl"
    assert ctl("export", "--db", b.local, "-o", str(export))[0] == 0
    assert ctl("import", "--db", f"sqlite:///{forged}", "--quiet", str(export))[0] == 0
    before = fleet.owner_rows(B)
    rc, out, err = ctl("sync", "--db", f"sqlite:///{forged}", "--config", str(a.config))
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert err.rstrip().endswith('new row violates row-level security policy for table "boots"')
    assert fleet.owner_rows(B) == before


# --- transport and identity --------------------------------------------------------


def connect_error(conninfo: str) -> str:
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(conninfo)
    return str(e.value)


def test_only_verified_tls_with_a_live_certificate_gets_in(fleet: Fleet) -> None:
    a = fleet.hosts[A]
    other_ca, _ = certs.make_ca(fleet.tmp / "other-ca", "not the fleet CA")
    answers = {
        "wrong CA": connect_error(a.conninfo(fleet, sslrootcert=str(other_ca))),
        "no client certificate": connect_error(
            a.conninfo(fleet, sslcert=str(fleet.tmp / "none.crt"), sslkey="")
        ),
        "plaintext": connect_error(a.conninfo(fleet, sslmode="disable")),
        "A's certificate as B": connect_error(a.conninfo(fleet, user=f"host_{B}")),
    }
    assert "certificate verify failed" in answers["wrong CA"]
    assert "connection requires a valid client certificate" in answers["no client certificate"]
    assert (
        f'no pg_hba.conf entry for host "127.0.0.1", user "{a.role}", database "{fleet.db}", '
        "no encryption" in answers["plaintext"]
    )
    assert (
        f'certificate authentication failed for user "host_{B}"' in answers["A's certificate as B"]
    )
    # the client side: a remote URL is verify-full with the configured CA by default...
    remote = fleet.url(a.role, "fleet.test", "?hostaddr=127.0.0.1")
    conf = fleet.tmp / "default-tls.toml"
    conf.write_text(
        f'[sync]\nca = "{a.dir / "ca.crt"}"\ncert = "{a.dir / "host.crt"}"\n'
        f'key = "{a.dir / "host.key"}"\n'
    )
    rc, out, err = ctl("sync", "--db", a.local, "--config", str(conf), "--to", remote)
    assert rc == 0 and out.startswith("synced"), err
    # ... a weaker mode is refused before any connection, unless the config says so
    for mode in ("disable", "require", "verify-ca"):
        rc, out, err = ctl(
            "sync", "--db", a.local, "--config", str(conf), "--to", f"{remote}&sslmode={mode}"
        )
        assert (
            rc == 1
            and out == ""
            and err
            == (
                f"khoctl: error: fleet database fleet.test:{fleet.server.port}: "
                f"sslmode={mode} does not verify the server; "
                f'set sync.sslmode = "{mode}" in khod.toml to allow it\n'
            )
        )
    conf.write_text(conf.read_text() + 'sslmode = "require"\n')
    rc, out, err = ctl("sync", "--db", a.local, "--config", str(conf), "--to", remote)
    assert rc == 0, err  # the operator's explicit choice: TLS, the server unchecked
    # ... and a wrong CA in the config is one line too
    conf.write_text(
        conf.read_text()
        .replace(str(a.dir / "ca.crt"), str(other_ca))
        .replace('sslmode = "require"\n', "")
    )
    # (--full: with nothing new a push connects nowhere, and so would not see it)
    rc, out, err = ctl("sync", "--db", a.local, "--config", str(conf), "--to", remote, "--full")
    assert rc == 1 and err.count("\n") == 1 and "certificate verify failed" in err


def test_a_revoked_host_is_out_at_once(fleet: Fleet) -> None:
    host = fleet.enroll(uuid.uuid4().hex)
    with psycopg.connect(host.conninfo(fleet), autocommit=True) as held:
        assert held.execute("SELECT 1").fetchone() == (1,)
        rc, out, err = ctl("fleet", "revoke", host.machine, "--db", fleet.owner)
        assert rc == 0 and out == f"revoked {host.role}: 1 sessions ended\n", err
        with pytest.raises(psycopg.OperationalError) as e:
            held.execute("SELECT 1")
        assert "terminating connection due to administrator command" in str(e.value)
    answer = connect_error(host.conninfo(fleet))
    assert f'role "{host.role}" is not permitted to log in' in answer
    rc, out, err = ctl("fleet", "revoke", host.machine, "--db", fleet.owner, "--drop")
    assert rc == 0 and out.endswith(", role dropped\n")
    assert f'no pg_hba.conf entry for host "127.0.0.1", user "{host.role}"' in connect_error(
        host.conninfo(fleet)
    )
    rc, out, err = ctl("fleet", "revoke", host.machine, "--db", fleet.owner)
    assert (rc, out) == (1, "") and err == (
        f"khoctl: error: no role {host.role} in the fleet database (never enrolled, or dropped)\n"
    )
    rc, out, err = ctl("fleet", "enroll", "not-a-machine", "--db", fleet.owner)
    assert (rc, err) == (
        1,
        "khoctl: error: not a machine id (32 lowercase hex digits): 'not-a-machine'\n",
    )


def test_the_reporting_role_reads_everything_and_writes_nothing(fleet: Fleet) -> None:
    out_dir = fleet.tmp / "reader"
    rc, _, err = ctl(
        "fleet", "enroll", "--reporter", "grafana", "--db", fleet.owner, "--out", str(out_dir),
        "--ca-cert", str(fleet.server.ca_cert), "--ca-key", str(fleet.server.ca_key), "--json",
    )  # fmt: skip
    assert rc == 0, err
    tls = (
        f"?sslmode=verify-full&sslrootcert={out_dir / 'ca.crt'}"
        f"&sslcert={out_dir / 'grafana.crt'}&sslkey={out_dir / 'grafana.key'}"
    )
    reader = fleet.url("grafana", query=tls)
    args = ("report", "transitions", "--json", "--include-cold")
    rc, as_reader, err = ctl(*args, "--db", reader)
    assert rc == 0, err
    rc, as_owner, _ = ctl(*args, "--db", fleet.owner)
    assert json.loads(as_reader) == json.loads(as_owner) and json.loads(as_reader)
    before = {m: fleet.owner_rows(m) for m in (A, B)}
    params = dict(
        host="localhost", port=str(fleet.server.port), dbname=fleet.db, user="grafana",
        sslmode="verify-full", sslrootcert=str(out_dir / "ca.crt"),
        sslcert=str(out_dir / "grafana.crt"), sslkey=str(out_dir / "grafana.key"),
    )  # fmt: skip
    with psycopg.connect(make_conninfo(**params), autocommit=True) as conn:
        row = conn.execute("SELECT count(DISTINCT machine_id) FROM boots").fetchone()
        assert row is not None and row[0] >= 2
        for sql, table in (
            ("DELETE FROM pstore_records", "pstore_records"),
            ("UPDATE boots SET release = 'x'", "boots"),
            ("INSERT INTO events (boot_pk) VALUES (1)", "events"),
            ("TRUNCATE kexec_attempts", "kexec_attempts"),
        ):
            assert refused(conn, sql) == f"permission denied for table {table}"
    assert {m: fleet.owner_rows(m) for m in (A, B)} == before


def test_hosts_neither_read_nor_forge_the_report_rollups(fleet: Fleet) -> None:
    """The rollups (migration 0013) are kept by the owner's triggers from what each host
    may insert: a host reads none of them, writes none, calls none of their functions;
    the report from them, after the hosts' pushes, is the report counted again."""
    with psycopg.connect(fleet.hosts[A].conninfo(fleet), autocommit=True) as conn:
        for table in (
            "fleet_rollup_boots", "fleet_rollup_attempts", "fleet_rollup_host_boots",
            "fleet_rollup_host_attempts", "fleet_rollup_transition_boots",
            "fleet_rollup_transition_attempts", "fleet_rollup_pending_boots",
            "fleet_rollup_pending_attempts", "fleet_rollup_pending_tx", "fleet_rollup_stripes",
        ):  # fmt: skip
            assert refused(conn, f"SELECT * FROM {table}") == (
                f"permission denied for table {table}"
            )
            assert refused(conn, f"DELETE FROM {table}").startswith("permission denied")
        assert (
            refused(
                conn,
                "INSERT INTO fleet_rollup_boots VALUES (0, false, '7.0', '7.1', "
                f"'{B}', 1000, 1000, 0, 0, 0, 0, 0)",
            )
            == "permission denied for table fleet_rollup_boots"
        )
        for fn in ("khod_rollup_crash(1)", "khod_rollup_stripe()"):
            assert refused(conn, f"SELECT {fn}") == (
                f"permission denied for function {fn.split('(')[0]}"
            )
    args = ("report", "transitions", "--json", "--include-cold", "--window", "0s")
    rc, rolled, err = ctl(*args, "--db", fleet.owner)
    assert rc == 0, err
    rc, full, err = ctl(*args, "--db", fleet.owner, "--recompute")
    assert rc == 0, err
    assert json.loads(rolled) == json.loads(full) and json.loads(full)


# --- the daemon -------------------------------------------------------------------


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every series of ``name`` in an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            out[labels] = float(value)
    return out


def test_the_daemon_serves_on_while_the_fleet_refuses_it(fleet: Fleet, tmp_path: Path) -> None:
    """A revoked host's daemon: every push refused by the server, counted by reason,
    /metrics served all along; enrolled again, its next push goes through."""
    step = "pstore/step0"
    host = fleet.enroll(machine_of(step), user=False)  # the URL names no role
    assert ctl("fleet", "revoke", host.machine, "--db", fleet.owner)[0] == 0
    conf = tmp_path / "khod.toml"
    conf.write_text(host.config.read_text() + 'interval = "2s"\n')
    with daemon_helpers.running_daemon(
        root_of(tmp_path, step), tmp_path, "--config", str(conf)
    ) as d:
        d.wait_for("READY=1")
        deadline = time.monotonic() + 60
        failures = "khod_sync_failures_total"
        while _samples(d.scrape(), failures).get('{reason="refused"}', 0) < 2:
            assert time.monotonic() < deadline and d.proc.poll() is None, d.scrape()
            time.sleep(0.2)
        counted = _samples(d.scrape(), failures)
        assert {k for k, v in counted.items() if v} == {'{reason="refused"}'}
        rc, _, err = ctl(
            "fleet", "enroll", host.machine, "--db", fleet.owner, "--out", str(host.dir),
            "--ca-cert", str(fleet.server.ca_cert), "--ca-key", str(fleet.server.ca_key),
        )  # fmt: skip
        assert rc == 0, err
        last = "khod_sync_last_success_timestamp_seconds "
        while "nan" in next(ln for ln in d.scrape().splitlines() if ln.startswith(last)).lower():
            assert time.monotonic() < deadline and d.proc.poll() is None, d.scrape()
            time.sleep(0.2)
        local = d.db.removeprefix("sqlite:///")
        d.proc.terminate()
        d.proc.wait(10)
        log = d.proc.stdout.read() if d.proc.stdout else ""
    assert f'role "{host.role}" is not permitted to log in' in log
    assert "sync failed (1 in a row)" in log
    with sqlite3.connect(local) as db:
        (msg,) = db.execute("SELECT message FROM events WHERE kind = 'sync-failed'").fetchone()
    assert "is not permitted to log in" in msg
    assert len(fleet.owner_rows(host.machine)["boots"]) == 1


# --- bounds a host could get around (issue 24) ------------------------------------

MiB = 1 << 20
ROW_LIMIT = 32 * MiB  # fleet_limits.max_row_bytes, the default `fleet init` keeps


def owner_sql(fleet: Fleet, sql: str) -> list[str]:
    """The operator's psql (the cluster's superuser): setting a scene, reading the catalog."""
    return fleet.server.psql(sql, fleet.db).splitlines()


def open_attempt(fleet: Fleet) -> int:
    """An open kexec attempt of A's (B's attempt, copied by the operator): a host may
    UPDATE the verdict columns of such a row."""
    cols = owner_sql(
        fleet,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = 'kexec_attempts' AND column_name <> 'id' "
        "ORDER BY ordinal_position",
    )
    a_boot = json.loads(fleet.owner_rows(A)["boots"][-1])["id"]
    over = {
        "machine_id": f"'{A}'",
        "from_boot": str(a_boot),
        "uid": f"'{uuid.uuid4()}'",
        "verdict": "NULL",
        "verdict_boot": "NULL",
        "verdict_detail": "NULL",
    }
    sel = ", ".join(over.get(c, c) for c in cols)
    out = owner_sql(
        fleet,
        f"INSERT INTO kexec_attempts ({', '.join(cols)}) SELECT {sel} FROM kexec_attempts "
        f"WHERE machine_id = '{B}' RETURNING id",
    )
    return int(out[0])


def row_refused(table: str) -> re.Pattern[str]:
    return re.compile(
        rf"khod fleet: host {A} sent a {table} row of (\d+) bytes, "
        rf"over the limit of {ROW_LIMIT} bytes"
    )


def test_an_update_cannot_bloat_an_open_attempt(fleet: Fleet) -> None:
    """UPDATE is weighed as INSERT is: a 33 MiB verdict_detail is refused, and 16 MiB
    ones, again and again while the verdict stays open, use up the host's quota."""
    before = fleet.owner_rows(B)
    aid = open_attempt(fleet)
    init = fleet.synced["init"]["limits"]
    with psycopg.connect(fleet.hosts[A].conninfo(fleet), autocommit=True) as conn:
        set_big = f"UPDATE kexec_attempts SET verdict_detail = repeat('x', %d) WHERE id = {aid}"
        answer = refused(conn, set_big % (33 * MiB))
        assert row_refused("kexec_attempts").fullmatch(answer), answer
        (usage,) = owner_sql(fleet, f"SELECT bytes FROM host_usage WHERE machine_id = '{A}'")
        room = int(usage) + 40 * MiB
        assert ctl("fleet", "init", "--db", fleet.owner, "--max-host-bytes", str(room))[0] == 0
        try:
            answers = []
            for _ in range(3):
                try:
                    conn.execute(set_big % (16 * MiB))
                    answers.append("updated")
                except psycopg.Error as e:
                    answers.append(str(e).splitlines()[0])
        finally:
            limit = str(init["max_host_bytes"])
            assert ctl("fleet", "init", "--db", fleet.owner, "--max-host-bytes", limit)[0] == 0
    assert answers[:2] == ["updated", "updated"], answers
    assert answers[2].startswith(f"khod fleet: host {A} is over its quota: "), answers
    assert answers[2].endswith(f"bytes (limits {init['max_host_rows']} rows, {room} bytes)")
    assert fleet.owner_rows(B) == before


# an oversize value of each type a column may have (made on the server)
OVERSIZE = {
    "text": "repeat('x', {n})",
    "varchar": "repeat('x', {n})",
    "bytea": "convert_to(repeat('x', {n}), 'UTF8')",
    "json": "to_json(repeat('x', {n}))",
    "jsonb": "to_jsonb(repeat('x', {n}))",
}
HOST_COLUMNS = r"""
SELECT c.relname, a.attname, t.typname, a.attlen, a.atttypmod,
       has_column_privilege('khod_host', c.oid, a.attnum, 'INSERT'),
       has_column_privilege('khod_host', c.oid, a.attnum, 'UPDATE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
  AND (has_column_privilege('khod_host', c.oid, a.attnum, 'INSERT')
       OR has_column_privilege('khod_host', c.oid, a.attnum, 'UPDATE'))
ORDER BY 1, a.attnum
"""


def test_every_column_a_host_writes_is_bounded(fleet: Fleet) -> None:
    """The live schema walked: every column a host may INSERT or UPDATE either has a
    fixed size or a type length, or an oversize value in it alone is refused by the
    server before the row is written."""
    before = fleet.owner_rows(B)
    aid = open_attempt(fleet)
    tried: dict[str, str] = {}
    fixed = []
    with psycopg.connect(fleet.hosts[A].conninfo(fleet), autocommit=True) as conn:
        for line in owner_sql(fleet, HOST_COLUMNS):
            table, col, typ, attlen, typmod, ins, _upd = line.split("|")
            if int(attlen) > 0 or (typ in ("varchar", "bpchar") and int(typmod) > 0):
                fixed.append(f"{table}.{col}")
                continue
            assert typ in OVERSIZE, f"{table}.{col}: no oversize value for type {typ}"
            big = OVERSIZE[typ].format(n=ROW_LIMIT + MiB)
            if ins == "t":
                sql = f'INSERT INTO {table} ("{col}") VALUES ({big})'
            else:
                sql = f'UPDATE {table} SET "{col}" = {big} WHERE id = {aid}'
            tried[f"{table}.{col}"] = refused(conn, sql)
    wrong = {k: v for k, v in tried.items() if not row_refused(k.split(".")[0]).fullmatch(v)}
    assert not wrong
    tables = {k.split(".")[0] for k in [*tried, *fixed]}
    assert tables == set(TABLES)
    assert {"boots.luo_compatible", "kexec_attempts.verdict_detail", "blobs.data"} <= set(tried)
    assert fleet.owner_rows(B) == before


def test_hosts_cannot_make_large_objects_and_drop_takes_what_a_role_owns(fleet: Fleet) -> None:
    before = fleet.owner_rows(B)
    with psycopg.connect(fleet.hosts[A].conninfo(fleet), autocommit=True) as conn:
        answers = [
            refused(conn, sql)
            for sql in (
                "SELECT lo_from_bytea(0, repeat('x', 1000)::bytea)",
                "SELECT lo_creat(-1)",
                "SELECT lo_create(0)",
            )
        ]
    assert answers == [
        "permission denied for function lo_from_bytea",
        "permission denied for function lo_creat",
        "permission denied for function lo_create",
    ]
    # a role that owns something anyway (made before the fix): --drop takes it along
    host = fleet.enroll(uuid.uuid4().hex)
    (oid,) = owner_sql(fleet, "SELECT lo_from_bytea(0, 'x')")
    owner_sql(fleet, f"ALTER LARGE OBJECT {oid} OWNER TO {host.role}")
    rc, out, err = ctl("fleet", "revoke", host.machine, "--db", fleet.owner, "--drop")
    assert rc == 0 and out == f"revoked {host.role}: 0 sessions ended, role dropped\n", err
    assert owner_sql(fleet, f"SELECT count(*) FROM pg_largeobject_metadata WHERE oid = {oid}") == [
        "0"
    ]
    assert fleet.owner_rows(B) == before


IDS = ("boots", "blobs", "events", "pstore_records", "kexec_attempts")


def test_every_sequence_is_64_bit_and_no_host_calls_nextval(fleet: Fleet) -> None:
    seqs = owner_sql(
        fleet,
        "SELECT sequencename, data_type, max_value FROM pg_sequences "
        "WHERE schemaname = current_schema() ORDER BY 1",
    )
    assert len(seqs) >= len(TABLES)
    assert all(s.split("|")[1:] == ["bigint", str(2**63 - 1)] for s in seqs), seqs
    before = fleet.owner_rows(B)
    with psycopg.connect(fleet.hosts[A].conninfo(fleet), autocommit=True) as conn:
        names = [s.split("|")[0] for s in seqs]
        answers = {n: refused(conn, f"SELECT nextval('{n}')") for n in names}
    assert answers == {n: f"permission denied for sequence {n}" for n in names}
    # nor names an id of its own: one just above the counter would make every other
    # host's insert fail (a duplicate key) until the counter passed it
    with psycopg.connect(fleet.hosts[A].conninfo(fleet), autocommit=True) as conn:
        answers = {
            t: refused(conn, f"INSERT INTO {t} (id) OVERRIDING SYSTEM VALUE VALUES (9000000)")
            for t in IDS
        }
    assert answers == {t: f"permission denied for table {t}" for t in IDS}
    assert fleet.owner_rows(B) == before


def test_a_host_holding_the_migration_lock_does_not_hang_an_upgrade(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from khod.store import migrate

    monkeypatch.setattr(migrate, "MIGRATION_LOCK_TIMEOUT_S", 1)
    db = new_database(fleet.server)
    url = owner_url(fleet.server, db)
    a = fleet.hosts[A]
    with psycopg.connect(a.conninfo(fleet, dbname=db), autocommit=True) as held:
        held.execute("SELECT pg_advisory_lock(%s)", (migrate.MIGRATION_LOCK,))
        rc, out, err = ctl("db", "upgrade", "--db", url)
        pid = held.info.backend_pid
    assert (rc, out) == (1, "") and err.count("\n") == 1, err
    assert err.startswith("khoctl: error: cannot migrate database postgresql+psycopg://")
    assert err.endswith(
        f": the migration lock is held by role {a.role} (pid {pid}) for over 1s; end that "
        "session (a host's: khoctl fleet revoke) and run it again\n"
    )
    rc, out, err = ctl("db", "upgrade", "--db", url)  # the host gone: it goes through
    assert rc == 0 and out.endswith(f"schema empty -> {HEAD_REVISION} (head)\n"), err


def test_a_non_superuser_owner_is_told_what_it_lacks(fleet: Fleet) -> None:
    """A CREATEROLE-only owner: `fleet init` said in one line what a superuser must
    give it (the fixture ran that); the bounds then hold as with a superuser: the
    host's temp_file_limit, and revoke ending its sessions (tests above)."""
    if fleet.server.owner_kind == "superuser":
        assert "init-refused" not in fleet.synced
        return
    said = fleet.synced["init-refused"]
    for needed in (
        "GRANT pg_signal_backend TO fleet_owner",
        "GRANT SET ON PARAMETER temp_file_limit TO fleet_owner",
        "REVOKE EXECUTE ON FUNCTION lo_creat(integer), lo_create(oid), lo_from_bytea(oid, bytea)",
    ):
        assert needed in said, said
    with psycopg.connect(fleet.hosts[A].conninfo(fleet), autocommit=True) as conn:
        assert conn.execute("SHOW temp_file_limit").fetchone() == ("256MB",)


def test_what_a_host_may_do_to_its_own_role(fleet: Fleet) -> None:
    """PostgreSQL lets any role set its own session defaults and password: the bounds
    that matter stay (temp_file_limit, connection limit, attributes), a password opens
    nothing (cert only), and the owner's next enroll puts the defaults back. What
    PostgreSQL shows every role (the role list, who is connected) and NOTIFY are in
    the threat model (docs/fleet-security.md)."""
    before = fleet.owner_rows(B)
    a = fleet.hosts[A]
    with psycopg.connect(a.conninfo(fleet), autocommit=True) as conn:
        conn.execute("ALTER ROLE CURRENT_USER SET statement_timeout = 0")
        conn.execute("ALTER ROLE CURRENT_USER PASSWORD 'stolen'")
        answers = [
            refused(conn, sql)
            for sql in (
                "ALTER ROLE CURRENT_USER SET temp_file_limit = -1",
                "ALTER ROLE CURRENT_USER CONNECTION LIMIT -1",
                "ALTER ROLE CURRENT_USER CREATEROLE",
                f"ALTER ROLE {a.role} RENAME TO host_{B}x",
                "SELECT pg_notify('khod', repeat('x', 9000))",
            )
        ]
        listed = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'host%'")
        assert (listed.fetchone() or (0,))[0] >= 2  # PostgreSQL cannot hide the role list
    assert answers[0] == 'permission denied to set parameter "temp_file_limit"'
    assert answers[1:4] == [
        "permission denied",
        "permission denied",
        "session user cannot be renamed",
    ], answers
    assert answers[4] == "payload string too long"
    with psycopg.connect(a.conninfo(fleet), autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
    answer = connect_error(a.conninfo(fleet, sslcert=str(fleet.tmp / "none"), password="stolen"))
    assert "connection requires a valid client certificate" in answer
    fleet.enroll(A, a.dir)  # renewed by the owner: the role's defaults are its again
    with psycopg.connect(a.conninfo(fleet), autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1min",)
    assert fleet.owner_rows(B) == before


def test_a_revoked_certificate_stays_dead_after_enrolling_again(fleet: Fleet) -> None:
    before = fleet.owner_rows(B)
    machine = uuid.uuid4().hex
    old = fleet.enroll(machine, user=False)
    stolen = fleet.tmp / f"stolen-{machine}"
    shutil.copytree(old.dir, stolen)
    assert ctl("fleet", "revoke", machine, "--db", fleet.owner)[0] == 0
    new = fleet.enroll(machine, fleet.tmp / f"again-{machine}", user=False)
    assert new.role == f"host_{machine}_1"
    thief = Host(machine, stolen, old.local, old.config, old.role)
    answers = {
        "old certificate, old role": connect_error(thief.conninfo(fleet)),
        "old certificate, new role": connect_error(thief.conninfo(fleet, user=new.role)),
    }
    assert f'role "{old.role}" is not permitted to log in' in answers["old certificate, old role"]
    assert (
        f'certificate authentication failed for user "{new.role}"'
        in answers["old certificate, new role"]
    )
    with psycopg.connect(new.conninfo(fleet), autocommit=True) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (new.role,)
    # its khod.toml names no user: the sync goes as the new certificate's role
    ingest(fleet.tmp, new.local, "kexec1/step0")
    assert "host_" not in new.config.read_text()
    # the machine is kexec1's, not this uuid: a push of it is refused by RLS, as itself
    rc, _, err = sync(new)
    assert rc == 1 and 'row-level security policy for table "boots"' in err, err
    # dropped, then enrolled again: no name ever comes back
    rc, out, err = ctl("fleet", "revoke", machine, "--db", fleet.owner, "--drop")
    assert rc == 0 and out == f"revoked {old.role}, {new.role}: 0 sessions ended, role dropped\n"
    third = fleet.enroll(machine, fleet.tmp / f"third-{machine}")
    assert third.role == f"host_{machine}_2"
    assert "no pg_hba.conf entry" in connect_error(thief.conninfo(fleet))
    assert fleet.owner_rows(B) == before


def test_a_loopback_url_offers_the_client_certificate_and_hostaddr_counts(fleet: Fleet) -> None:
    a = fleet.hosts[A]
    conf = fleet.tmp / "loopback.toml"
    conf.write_text(
        f'[sync]\ncert = "{a.dir / "host.crt"}"\nkey = "{a.dir / "host.key"}"\n'
        f'ca = "{a.dir / "ca.crt"}"\n'
    )
    loopback = fleet.url("", "127.0.0.1")  # no sslmode, no user: the certificate's CN
    rc, out, err = ctl("sync", "--db", a.local, "--config", str(conf), "--to", loopback)
    assert rc == 0 and out.startswith("synced"), err
    # a local name whose address is another machine's is remote: verified TLS or nothing
    elsewhere = fleet.url(a.role, "localhost", "?hostaddr=192.0.2.1&sslmode=disable")
    rc, out, err = ctl("sync", "--db", a.local, "--config", str(conf), "--to", elsewhere)
    assert (rc, out) == (1, "") and err == (
        f"khoctl: error: fleet database 192.0.2.1:{fleet.server.port}: sslmode=disable does "
        'not verify the server; set sync.sslmode = "disable" in khod.toml to allow it\n'
    )
