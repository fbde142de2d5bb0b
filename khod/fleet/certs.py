"""Certificates for the fleet database's TLS, made with the ``openssl`` command (argv
lists, no shell): a CA, and keys with certificates it signs (a host's client
certificate, whose CN is its role; a server's, with its DNS names and addresses).
Keys are P-256, written 0600: libpq refuses a client key others can read."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from khod.errors import KhodError

CURVE = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _openssl(*argv: str) -> None:
    try:
        out = subprocess.run(
            ["openssl", *argv], capture_output=True, text=True, check=False, timeout=60
        )
    except FileNotFoundError:
        raise KhodError("openssl is not installed (the Debian package openssl)") from None
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        raise KhodError(f"openssl {argv[0]} failed: {lines[0] if lines else out.returncode}")


def _private(path: Path) -> None:
    path.chmod(0o600)


def make_ca(directory: Path, name: str = "khod fleet CA", days: int = 3650) -> tuple[Path, Path]:
    """A self-signed CA in ``directory``: (ca.crt, ca.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / "ca.crt", directory / "ca.key"
    _openssl(
        "req", "-x509", "-new", *CURVE, "-nodes", "-keyout", str(key), "-out", str(crt),
        "-days", str(days), "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _private(key)
    return crt, key


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def issue(
    ca_cert: Path,
    ca_key: Path,
    common_name: str,
    cert: Path,
    key: Path,
    *,
    days: int = 397,
    server_names: tuple[str, ...] = (),
) -> Issued:
    """A new key and a certificate for ``common_name`` signed by the CA: for a client
    (clientAuth) or, with ``server_names`` (DNS names or IP addresses), a server."""
    for p in (ca_cert, ca_key):
        if not p.is_file():
            raise KhodError(f"cannot read {p}: No such file")
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature"]
    if server_names:
        sans = []
        for n in server_names:
            try:
                sans.append(f"IP:{ipaddress.ip_address(n)}")
            except ValueError:
                sans.append(f"DNS:{n}")
        ext += ["extendedKeyUsage=serverAuth", f"subjectAltName={','.join(sans)}"]
    else:
        ext.append("extendedKeyUsage=clientAuth")
    with tempfile.TemporaryDirectory(prefix="khod-cert-") as tmp:
        csr = Path(tmp) / "req.csr"
        extfile = Path(tmp) / "ext.cnf"
        extfile.write_text("\n".join(ext) + "\n")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        _openssl(
            "req", "-new", *CURVE, "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN={common_name}",
        )  # fmt: skip
        _private(key)
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(days),
            "-extfile", str(extfile), "-out", str(cert),
        )  # fmt: skip
    return Issued(cert, key)


def common_name(cert: Path) -> str:
    """The CN of a certificate's subject (a host's: its role)."""
    try:
        out = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "multiline"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    except FileNotFoundError:
        raise KhodError("openssl is not installed (the Debian package openssl)") from None
    for line in out.stdout.splitlines():
        name, _, value = line.strip().partition(" = ")
        if name.strip() == "commonName" and value.strip():
            return value.strip()
    raise KhodError(f"cannot read the common name of certificate {cert}")
