"""A real PostgreSQL server for the tests: Debian's binaries, a cluster made by initdb
in a temp directory, listening on loopback only, stopped at the end of the session.

With ``tls=True`` it is a fleet database as operators run it: ``ssl = on`` with a server
certificate signed by a test CA made here (``ca_cert``, ``ca_key``; names localhost,
127.0.0.1 and fleet.test), and a pg_hba.conf where only the ``postgres`` superuser (the
operator) and ``fleet_owner`` (an owner that is not a superuser, for the tests that
make one) may come in without TLS; hosts (``+khod_host``) and readers (``+khod_report``)
need TLS and a client certificate whose CN is their role (``cert``).

PostgreSQL refuses to run as root; as root the cluster belongs to the `postgres` user
that the Debian package creates (or to `nobody` where it does not exist).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def pg_bindir() -> Path | None:
    """The newest installed server's bin directory (/usr/lib/postgresql/<major>/bin)."""
    found = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        if (d / "initdb").exists() and d.parent.name.isdigit():
            found.append((int(d.parent.name), d))
    return max(found)[1] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path, tls: bool = False) -> None:
        self.bindir = bindir
        self.tls = tls
        self.port = free_port()
        # not under pytest's tmp dir: that is 0700 and owned by root
        self.dir = Path(tempfile.mkdtemp(prefix="khod-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.user: pwd.struct_passwd | None = None
        self.owner_kind = "superuser"  # or "createrole": who owns the fleet databases
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                self.user = pwd.getpwnam("nobody")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.dir.chmod(0o700)

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.user is not None:
            cmd = [
                "setpriv",
                f"--reuid={self.user.pw_uid}",
                f"--regid={self.user.pw_gid}",
                "--clear-groups",
                "--",
                *cmd,
            ]
        return subprocess.run(
            cmd, check=check, capture_output=True, text=True, cwd=self.dir, timeout=120
        )

    def init(self, durable: bool = False) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "max_connections = 200\n"
            )
            if not durable:  # a test cluster: durability is not under test there
                f.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
            if self.tls:
                f.write(self._tls_setup())

    @property
    def ca_cert(self) -> Path:
        return self.dir / "tls" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "tls" / "ca.key"

    def _tls_setup(self) -> str:
        from khod.fleet import certs

        tls = self.dir / "tls"
        certs.make_ca(tls, "khod test fleet CA")
        server = certs.issue(
            self.ca_cert,
            self.ca_key,
            "fleet.test",
            tls / "server.crt",
            tls / "server.key",
            server_names=("fleet.test", "localhost", "127.0.0.1"),
        )
        for p in (tls, *tls.iterdir()):
            if self.user is not None:
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all fleet_owner 127.0.0.1/32 trust\n"
            "hostssl all +khod_host 127.0.0.1/32 cert\n"
            "hostssl all +khod_report 127.0.0.1/32 cert\n"
        )
        return (
            f"ssl = on\nssl_cert_file = '{server.cert}'\nssl_key_file = '{server.key}'\n"
            f"ssl_ca_file = '{self.ca_cert}'\n"
        )

    def start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = self._run(
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        )
        return out.stdout

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        self.psql(f"CREATE DATABASE {name}")
        return name

    def wait_down(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                time.sleep(0.1)
                continue
            return

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_server(durable: bool = False, tls: bool = False) -> Iterator[PostgresServer]:
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: `make test` installs it (postgresql)")
    server = PostgresServer(bindir, tls)
    try:
        server.init(durable)
        server.start()
        yield server
    finally:
        server.cleanup()
