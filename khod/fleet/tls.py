"""How a host reaches the fleet database: verified TLS by default.

A PostgreSQL URL whose host is not this machine (not loopback, not a Unix socket) gets
``sslmode=verify-full`` with the fleet CA, and the host's client certificate and key,
from ``[sync]`` in khod.toml. A weaker mode (plaintext, or TLS that does not check the
server's name) is refused unless the operator set that mode in ``sync.sslmode``
explicitly. Loopback and Unix sockets are left as the URL says, unless ``sync.sslmode``
is set: then it applies to them too. A URL without a user name connects as the client
certificate's CN (the host's role, which ``khoctl fleet enroll`` names anew after a
revocation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from khod.errors import KhodError
from khod.store.url import VERIFIED, is_local
from khod.store.url import hosts as _hosts

MODES = ("disable", "allow", "prefer", "require", "verify-ca", VERIFIED)


@dataclass(frozen=True)
class TlsSettings:
    sslmode: str = ""  # "": verify-full for a remote database, the URL's own for a local one
    ca: str = ""
    cert: str = ""
    key: str = ""


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
        text = url.render_as_string(hide_password=False)
    remote = [h for h in _hosts(url) if not is_local(h)]
    if not remote and not tls.sslmode:
        # this machine: the URL's own sslmode (libpq's prefer), and the host's client
        # certificate when it has one, for a fleet database that takes certificates only
        extra = {
            param: path
            for param, path in (("sslcert", tls.cert), ("sslkey", tls.key))
            if path and param not in url.query and os.path.isfile(path)
        }
        if len(extra) < 2:
            return text
        return url.update_query_dict(extra).render_as_string(hide_password=False)
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
