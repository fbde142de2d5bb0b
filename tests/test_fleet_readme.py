"""khoctl fleet as the operator meets it: each action's own usage, the CA and the
server's certificate from khoctl, and a remote --db that cannot be verified said in
one line that names the missing CA."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests import pgserver

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"


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
