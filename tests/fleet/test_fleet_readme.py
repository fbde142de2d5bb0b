"""docs/fleet.md's setup steps, run as they stand, from an empty PostgreSQL cluster to
two hosts syncing real captured stores and a transition report.

The commands are taken from the page itself: every ```sh block after a
``<!-- fleet-step: MACHINE -->`` marker, run with bash in order. What the page names
as its variables (``FLEET_HOST``, ``FLEET_PORT``, ``PGCONF``, ``OWNER_PASSWORD``,
``MACHINE_ID``) is set in the environment; psql finds the cluster through ``PGHOST``
and ``PGPORT``. Beyond that, the one thing changed is where a host keeps its files:
``/etc/khod`` is a directory of its own per host (two hosts on one machine).
``FLEET_HOST`` is a name only the server's certificate knows: libpq's ``PGHOSTADDR``
sends the connections to the cluster on 127.0.0.1 while TLS verifies that name, as
DNS would for a real server, and khod sees a remote database."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests import pgserver
from tests.conftest import FIXTURES, REPO, restore_pstore_mtimes

PAGE = REPO / "docs" / "fleet.md"
BIN = REPO / ".venv" / "bin"
FLEET_HOST = "fleet-db.test"
# two hosts with their real captured boots: A a chain of three kexecs, B one kexec
HOSTS = {"a": ("pstore-kho", 4), "b": ("kexec1", 2)}


@dataclass(frozen=True)
class Step:
    machine: str  # operator, "operator, each host", server, postgres, host, reader
    line: int
    script: str


def steps(text: str) -> list[Step]:
    found = []
    lines = text.splitlines()
    for n, line in enumerate(lines):
        m = re.fullmatch(r"<!-- fleet-step: (.+) -->", line.strip())
        if not m:
            continue
        assert lines[n + 1] == "```sh", f"fleet.md:{n + 2}: a fleet step is a ```sh block"
        end = lines.index("```", n + 2)
        found.append(Step(m.group(1), n + 2, "\n".join(lines[n + 2 : end]) + "\n"))
    return found


def machine_id(scenario: str) -> str:
    return (FIXTURES / scenario / "step0" / "etc" / "machine-id").read_text().strip()


@pytest.fixture
def cluster() -> Iterator[pgserver.PostgresServer]:
    """A fresh cluster, as initdb leaves it: no TLS, no khod roles, no fleet database."""
    with pgserver.running_server() as server:
        yield server


def run(step: Step, env: dict[str, str], cwd: Path, user: str | None = None) -> str:
    argv = ["bash", "-euo", "pipefail", "-c", step.script]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
    r = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, f"fleet.md:{step.line} ({step.machine}) failed:\n{r.stderr}"
    assert "Traceback" not in r.stderr
    return r.stdout


def test_the_fleet_setup_works_as_written(cluster: pgserver.PostgresServer, tmp_path: Path) -> None:
    work = tmp_path / "work"  # where the files travel between machines
    work.mkdir()
    work.chmod(0o755)
    base = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "FLEET_HOST": FLEET_HOST,
        "FLEET_PORT": str(cluster.port),
        "PGCONF": str(cluster.data),
        "OWNER_PASSWORD": "correct horse battery staple",
        "PGHOSTADDR": "127.0.0.1",
    }
    Path(base["HOME"]).mkdir()
    hosts = {}
    for name, (scenario, count) in HOSTS.items():
        etc = tmp_path / f"host-{name}" / "etc-khod"
        etc.mkdir(parents=True)
        store = tmp_path / f"host-{name}" / "khod.db"
        # the host as the package leaves it: its khod.toml, its boots recorded
        (etc / "khod.toml").write_text(f'[store]\ndb = "sqlite:///{store}"\n')
        for n in range(count):
            root = tmp_path / "roots" / f"{scenario}-{n}"
            shutil.copytree(FIXTURES / scenario / f"step{n}", root)
            restore_pstore_mtimes(root)
            r = subprocess.run(
                [BIN / "khod", "--once", "--sysroot", root, "--db", f"sqlite:///{store}"],
                capture_output=True,
                text=True,
                check=False,
            )
            assert r.returncode == 0, r.stderr
        hosts[name] = (machine_id(scenario), etc)
    assert hosts["a"][0] != hosts["b"][0]

    found = steps(PAGE.read_text())
    assert [s.machine for s in found] == [
        "operator", "server", "postgres", "operator", "operator, each host", "host",
        "operator", "reader",
    ]  # fmt: skip
    outputs: dict[str, str] = {}
    for step in found:
        if step.machine == "postgres":
            pg = {**base, "PGHOST": str(cluster.dir), "PGPORT": str(cluster.port)}
            assert cluster.user is not None, "the suite runs as root"
            run(step, pg, work, user=cluster.user.pw_name)
        elif step.machine in ("host", "operator, each host"):
            for name, (mid, etc) in hosts.items():
                script = step.script.replace("/etc/khod", str(etc))
                local = Step(step.machine, step.line, script)
                outputs[f"{step.machine}:{name}"] = run(local, {**base, "MACHINE_ID": mid}, work)
        else:
            outputs[step.machine] = run(step, base, work)

    # each host pushed its whole store through its own role over verified TLS
    for name, (mid, _) in hosts.items():
        assert outputs[f"host:{name}"].startswith(
            f"synced {HOSTS[name][1]} boots ({HOSTS[name][1]} new)"
        ), outputs[f"host:{name}"]
        assert owner_query(cluster, "SELECT count(*) FROM boots WHERE machine_id = %s", mid) == [
            (HOSTS[name][1],)
        ]
    report = outputs["reader"].splitlines()
    head = ["PREVIOUS_RELEASE", "RELEASE", "BOOTS", "OBSERVED", "HOSTS"]
    assert report[0].split()[:5] == head
    rows = {
        (*line.split()[:3], line.split()[4])  # the boots, then the hosts
        for line in report[1:]
        if line and line[0].isdigit()
    }
    assert ("7.3.4-khlab-pk", "7.3.4-khlab-pk", "3", "1") in rows
    assert ("7.3.4-khlab-a", "7.3.4-khlab-a", "1", "1") in rows
    # what the database says each connection was
    roles = owner_query(cluster, "SELECT rolname FROM pg_roles WHERE rolname LIKE 'host%%'")
    assert sorted(roles) == sorted((f"host_{mid}",) for mid, _ in hosts.values())
    # plaintext TCP into the fleet database is refused, the superuser's too
    psql = ["psql", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-d", "fleet"]
    r = subprocess.run(
        [*psql, "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PGSSLMODE": "disable"},
        check=False,
    )
    assert r.returncode == 2 and "rejects connection" in r.stderr, r.stderr


def owner_query(
    cluster: pgserver.PostgresServer, sql: str, *params: str
) -> list[tuple[object, ...]]:
    """The fleet database as the cluster's superuser sees it, over the Unix socket."""
    with psycopg.connect(
        host=str(cluster.dir), port=cluster.port, user="postgres", dbname="fleet"
    ) as conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]


def test_a_remote_db_without_a_ca_file_says_how_to_give_one(tmp_path: Path) -> None:
    """The verified TLS a remote --db gets needs the server's CA: without one, the line
    says it could not connect and how to give the CA, not that it could not migrate."""
    with pgserver.running_server(tls=True) as server:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),  # no ~/.postgresql/root.crt
            "PGHOSTADDR": "127.0.0.1",
        }
        url = f"postgresql+psycopg://postgres@fleet.test:{server.port}/postgres"
        for argv in (["fleet", "init"], ["db", "upgrade"]):
            r = subprocess.run(
                [BIN / "khoctl", *argv, "--db", url],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            assert r.returncode == 1 and r.stdout == ""
            assert r.stderr.startswith(
                f"khoctl: error: cannot connect to database postgresql+psycopg://postgres@"
                f"fleet.test:{server.port}/postgres?sslmode=verify-full: "
            ), r.stderr
            assert "root certificate file" in r.stderr
            assert r.stderr.endswith("(give the server's CA as sslrootcert=PATH in the URL)\n")
            assert r.stderr.count("\n") == 1
        # named, it gets in (the postgres superuser may use TLS or not on this server)
        r = subprocess.run(
            [BIN / "khoctl", "db", "current", "--db", f"{url}?sslrootcert={server.ca_cert}"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert r.returncode == 0, r.stderr


def test_fleet_help_shows_each_actions_own_usage() -> None:
    r = subprocess.run([BIN / "khoctl", "fleet", "-h"], capture_output=True, text=True, check=False)
    assert r.returncode == 0
    for action in ("ca", "server-cert", "init", "enroll", "revoke"):
        assert re.search(rf"^    {action} ", r.stdout, re.M), action
    usages = {}
    for action in ("ca", "server-cert", "init", "enroll", "revoke"):
        r = subprocess.run(
            [BIN / "khoctl", "fleet", action, "-h"], capture_output=True, text=True, check=False
        )
        assert r.returncode == 0
        usages[action] = r.stdout.split("\n\n")[0]
        assert usages[action].startswith(f"usage: khoctl fleet {action} ")
    assert "--max-row-bytes" in usages["init"] and "--max-row-bytes" not in usages["enroll"]
    assert "--drop" in usages["revoke"] and "--drop" not in usages["enroll"]
    assert "NAME [NAME ...]" in usages["server-cert"]


def test_the_ca_and_the_server_certificate_from_khoctl(tmp_path: Path) -> None:
    def ctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BIN / "khoctl", *argv], capture_output=True, text=True, cwd=tmp_path, check=False
        )

    r = ctl("fleet", "ca", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"cert": "ca.crt", "key": "ca.key"}
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    r = ctl("fleet", "ca")  # never over an existing CA
    assert (r.returncode, r.stderr) == (
        1, "khoctl: error: fleet ca: ca.key exists: not replacing a CA\n"
    )  # fmt: skip
    r = ctl("fleet", "server-cert", "db.example", "10.1.2.3", "--ca-cert", "ca.crt",
            "--ca-key", "ca.key", "--out", "srv")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("server certificate srv/server.crt for db.example, 10.1.2.3")
    text = subprocess.run(
        ["openssl", "x509", "-in", tmp_path / "srv" / "server.crt", "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Subject: CN=db.example" in text or "Subject: CN = db.example" in text
    assert "DNS:db.example, IP Address:10.1.2.3" in text
    assert "TLS Web Server Authentication" in text
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.crt", "srv/server.crt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert verify.stdout == "srv/server.crt: OK\n"
    assert (tmp_path / "srv" / "server.key").stat().st_mode & 0o777 == 0o600
    r = ctl("fleet", "server-cert", "db.example")
    assert (r.returncode, r.stderr) == (
        1, "khoctl: error: fleet server-cert: --ca-cert and --ca-key are needed to sign\n"
    )  # fmt: skip
