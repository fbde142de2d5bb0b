"""The store's rules for a database URL: which hosts and addresses it reaches, and the
TLS a remote PostgreSQL gets by default (verify-full). The fleet's host side adds its
certificates on top (khod.fleet.tls)."""

from __future__ import annotations

import ipaddress
import os

from sqlalchemy.engine import URL

VERIFIED = "verify-full"


def hosts(url: URL) -> list[str]:
    """Every host and address the URL may connect to. libpq takes lists; ``?host=`` and
    ``?hostaddr=`` override the URL's host, and ``PGHOST``/``PGHOSTADDR`` fill in what
    the URL leaves out. A name with an address elsewhere (``localhost`` with
    ``hostaddr=10.0.0.5``) goes where the address says: both are looked at."""

    def values(key: str, env: str) -> list[str]:
        given = url.query.get(key)
        if given:
            items = given if isinstance(given, tuple) else (given,)
        else:
            items = (os.environ.get(env, ""),) if os.environ.get(env) else ()
        return [h for v in items for h in v.split(",")]

    names = values("host", "PGHOST") if url.query.get("host") or not url.host else [url.host]
    return (names or [""]) + values("hostaddr", "PGHOSTADDR")


def is_local(host: str) -> bool:
    if not host or host.startswith("/") or host.startswith("@") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: wherever DNS points it, possibly another machine


def default_remote_tls(url: URL) -> URL:
    """Any command's ``--db``: a remote PostgreSQL URL that names no sslmode gets
    verify-full (libpq's CA file: ~/.postgresql/root.crt, or ``sslrootcert=``)."""
    if url.get_backend_name() != "postgresql" or "sslmode" in url.query:
        return url
    if all(is_local(h) for h in hosts(url)):
        return url
    return url.update_query_dict({"sslmode": VERIFIED})
