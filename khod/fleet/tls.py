"""How a host reaches the fleet database: verified TLS by default.

A PostgreSQL URL whose host is not this machine (not loopback, not a Unix socket) gets
``sslmode=verify-full`` with the fleet CA, and the host's client certificate and key,
from ``[sync]`` in khod.toml. A weaker mode (plaintext, or TLS that does not check the
server's name) is refused unless the operator set that mode in ``sync.sslmode``
explicitly. Loopback and Unix sockets are left as the URL says, unless ``sync.sslmode``
is set: then it applies to them too; a configured client certificate is offered to them
as well. ``hostaddr=`` is where libpq connects: a local name with a remote address is
remote. A URL without a user name connects as the certificate's CN (the host's role,
which ``khoctl fleet enroll`` may renew with a new name).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from khod.errors import KhodError

MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
VERIFIED = "verify-full"


@dataclass(frozen=True)
class TlsSettings:
    sslmode: str = ""  # "": verify-full for a remote database, the URL's own for a local one
    ca: str = ""
    cert: str = ""
    key: str = ""


def _hosts(url: URL) -> list[str]:
    """Every host the URL may connect to (libpq takes a list; ``?host=`` overrides), and
    every address (``?hostaddr=``, where libpq connects whatever the name)."""
    out = []
    for key in ("host", "hostaddr"):
        given = url.query.get(key)
        if given:
            values = given if isinstance(given, tuple) else (given,)
            out += [h for v in values for h in v.split(",")]
    if not url.query.get("host"):
        out.append(url.host or "")
    return out


def is_local(host: str) -> bool:
    if not host or host.startswith("/") or host.startswith("@") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: wherever DNS points it, possibly another machine


def secure_url(text: str, tls: TlsSettings) -> str:
    """The URL to connect with; a KhodError when it would not be verified TLS and the
    operator did not say that is wanted."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise KhodError(f"not a database URL: {text!r}") from None
    if url.get_backend_name() != "postgresql":
        return text
    if tls.sslmode and tls.sslmode not in MODES:
        raise KhodError(f"sync.sslmode: expected one of {', '.join(MODES)}, got {tls.sslmode!r}")
    if url.username is None and tls.cert and Path(tls.cert).is_file():
        from khod.fleet.certs import common_name  # noqa: PLC0415

        url = url.set(username=common_name(Path(tls.cert)))
    remote = [h for h in _hosts(url) if not is_local(h)]
    if not remote and not tls.sslmode:
        # loopback: TLS as the URL says, with the client certificate if one is set
        offer = {p: v for p, v in (("sslcert", tls.cert), ("sslkey", tls.key)) if v}
        if str(url.query.get("sslmode", "")) == "disable" or any(p in url.query for p in offer):
            return url.render_as_string(hide_password=False)
        return url.update_query_dict(offer).render_as_string(hide_password=False)
    given = url.query.get("sslmode")
    mode = str(given) if given else (tls.sslmode or VERIFIED)
    if remote and mode not in (VERIFIED, tls.sslmode):
        where = remote[0] if url.port is None else f"{remote[0]}:{url.port}"
        raise KhodError(
            f"fleet database {where}: sslmode={mode} does not verify the server; "
            f'set sync.sslmode = "{mode}" in khod.toml to allow it'
        )
    extra = {"sslmode": mode}
    if mode != "disable":
        for param, path in (("sslrootcert", tls.ca), ("sslcert", tls.cert), ("sslkey", tls.key)):
            if path and param not in url.query:
                extra[param] = path
    return url.update_query_dict(extra).render_as_string(hide_password=False)


def default_remote_tls(url: URL) -> URL:
    """Any command's ``--db``: a remote PostgreSQL URL that names no sslmode gets
    verify-full (libpq's CA file: ~/.postgresql/root.crt, or ``sslrootcert=``)."""
    if url.get_backend_name() != "postgresql" or "sslmode" in url.query:
        return url
    if all(is_local(h) for h in _hosts(url)):
        return url
    return url.update_query_dict({"sslmode": VERIFIED})
