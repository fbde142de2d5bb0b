"""Where a fleet URL really connects decides whether it must be verified TLS, and a
host's client certificate goes with its push wherever the database is."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from khod.errors import KhodError
from khod.fleet.tls import TlsSettings, secure_url
from tests import pgserver
from tests.conftest import FIXTURES, REPO, restore_pstore_mtimes

BIN = REPO / ".venv" / "bin"


@pytest.mark.parametrize(
    ("url", "env"),
    [
        ("postgresql+psycopg://h@localhost/fleet?hostaddr=192.0.2.7", {}),
        ("postgresql+psycopg://h@localhost/fleet?hostaddr=127.0.0.1,192.0.2.7", {}),
        ("postgresql+psycopg://h@localhost/fleet", {"PGHOSTADDR": "192.0.2.7"}),
        ("postgresql+psycopg://h@/fleet", {"PGHOST": "fleet-db.example"}),
    ],
)
def test_a_local_name_that_connects_elsewhere_is_remote(
    url: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PGHOST", "PGHOSTADDR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert secure_url(url, TlsSettings()).endswith("sslmode=verify-full")
    with pytest.raises(KhodError, match="sslmode=disable does not verify the server"):
        secure_url(url + ("&" if "?" in url else "?") + "sslmode=disable", TlsSettings())


def test_this_machine_stays_as_the_url_says(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGHOSTADDR"):
        monkeypatch.delenv(name, raising=False)
    for url in (
        "postgresql+psycopg://h@localhost/fleet?hostaddr=127.0.0.1",
        "postgresql+psycopg://h@/fleet",
        "postgresql+psycopg://h@[::1]:5433/fleet",
    ):
        assert secure_url(url, TlsSettings()) == url


def test_a_host_pushes_with_its_certificate_to_a_database_on_loopback(tmp_path: Path) -> None:
    """A fleet database on this machine that takes certificates only: the host's push
    presents [sync] cert and key without an sslmode set anywhere."""
    scenario = "kexec1"
    machine = (FIXTURES / scenario / "step0" / "etc" / "machine-id").read_text().strip()
    store = f"sqlite:///{tmp_path / 'host.db'}"
    for n in (0, 1):
        root = tmp_path / f"root{n}"
        shutil.copytree(FIXTURES / scenario / f"step{n}", root)
        restore_pstore_mtimes(root)
        r = subprocess.run(
            [BIN / "khod", "--once", "--sysroot", root, "--db", store],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr

    def ctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BIN / "khoctl", *argv], capture_output=True, text=True, check=False, cwd=tmp_path
        )

    with pgserver.running_server(tls=True) as pg:
        owner = pg.url(pg.create_database())
        assert ctl("fleet", "init", "--db", owner).returncode == 0
        r = ctl("fleet", "enroll", machine, "--db", owner, "--ca-cert", str(pg.ca_cert),
                "--ca-key", str(pg.ca_key), "--out", "host")  # fmt: skip
        assert r.returncode == 0, r.stderr
        database = owner.rsplit("/", 1)[1]
        conf = tmp_path / "khod.toml"
        conf.write_text(
            f'[sync]\nto = "postgresql+psycopg://host_{machine}@localhost:{pg.port}/{database}"\n'
            f'ca = "{tmp_path / "host/ca.crt"}"\ncert = "{tmp_path / "host/host.crt"}"\n'
            f'key = "{tmp_path / "host/host.key"}"\n'
        )
        r = ctl("sync", "--db", store, "--config", str(conf))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("synced 2 boots (2 new)"), r.stdout
