"""``/etc/khod/khod.toml`` and its drop-ins (``khod.toml.d/*.toml``, merged by name, key
by key: ``khod.conffiles``): every key, its default, and one-line errors naming the key.

[daemon]
listen = "127.0.0.1:9733"     # /metrics; another address is an explicit choice
textfile = ""                 # also write the exposition here (node_exporter)
watch_modules = true          # rescan pstore when a module (backend) loads
retry_interval = "30s"        # after a failed ingest (disk full, database away)
ingest_timeout = "5m"         # an ingest child still running then is killed (and retried)

[store]
db = ""                       # SQLAlchemy URL; "" = the default SQLite file
state_dir = "/var/lib/khod"   # spool of captured boots, metrics snapshot

[pstore]
own = false                   # unlink /sys/fs/pstore files once committed
inflate_limit = "16MiB"       # larger .enc.z records are kept compressed

[retention]                   # applied after every ingest; this boot is always kept
max_boots = 10000             # per machine; 0 = no limit
max_age = "730d"              # s, m, h, d, w; "0" = no limit
max_bytes = "1GiB"            # raw blobs and pstore bytes per machine; "0" = no limit

[sync]                        # store-and-forward to the fleet database
to = ""                       # SQLAlchemy URL, e.g. postgresql+psycopg://khod@db/fleet
interval = "5m"               # between pushes; failures retry sooner, backing off
sslmode = ""                  # "" = verify-full for a remote database; another mode is
                              #   an explicit opt-out (disable, require, verify-ca, ...)
ca = "/etc/khod/fleet/ca.crt"     # the fleet CA, that signed the server's certificate
cert = "/etc/khod/fleet/host.crt" # this host's client certificate (khoctl fleet enroll)
key = "/etc/khod/fleet/host.key"  # ... and its key (0600)

[fleet]                       # the transition report, and what a host reads of it
window = "24h"                # a boot counts for the crash rates this long after landing
verdicts = ""                 # the published report (khoctl report transitions --json):
                              #   a path or an http(s) URL; khoctl check / kexec refuse a
                              #   transition it calls worse ("" = not consulted)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from khod.conffiles import DEFAULT_PATH as _DEFAULT
from khod.conffiles import ConfigError as ConfigError  # noqa: PLC0414 (re-exported)
from khod.conffiles import merged
from khod.timespec import duration

DEFAULT_PATH = Path(_DEFAULT)
_SIZE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|TiB|K|M|G|T)?$")
_UNITS = {
    None: 1,
    "B": 1,
    "K": 1 << 10,
    "KiB": 1 << 10,
    "M": 1 << 20,
    "MiB": 1 << 20,
    "G": 1 << 30,
    "GiB": 1 << 30,
    "T": 1 << 40,
    "TiB": 1 << 40,
}


def parse_size(value: object, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _SIZE.match(str(value).strip()) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"{key}: expected a size like '16MiB', got {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_duration(value: object, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    seconds = duration(value) if isinstance(value, str) else None
    if seconds is None:
        raise ConfigError(f"{key}: expected a duration like '30d', got {value!r}")
    return seconds


def parse_listen(value: object, key: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected 'ADDRESS:PORT', got {value!r}")
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected 'ADDRESS:PORT', got {value!r}")
    return host, int(port)


@dataclass(frozen=True)
class Config:
    listen: tuple[str, int] = ("127.0.0.1", 9733)
    textfile: str = ""
    watch_modules: bool = True
    retry_interval: int = 30
    ingest_timeout: int = 300
    db: str = ""
    state_dir: str = "/var/lib/khod"
    own_pstore: bool = False
    inflate_limit: int = 16 << 20
    max_boots: int = 10000
    max_age: int = 730 * 86400
    max_bytes: int = 1 << 30
    sync_to: str = ""
    sync_interval: int = 300
    sync_sslmode: str = ""
    sync_ca: str = "/etc/khod/fleet/ca.crt"
    sync_cert: str = "/etc/khod/fleet/host.crt"
    sync_key: str = "/etc/khod/fleet/host.key"
    fleet_window: int = 86400
    fleet_verdicts: str = ""
    source: str = field(default="defaults", compare=False)


def default_db_url() -> str:
    """The store where neither --db nor [store] db names one: $KHOD_DB, else SQLite at
    /var/lib/khod/khod.db for root, $XDG_STATE_HOME/khod/khod.db otherwise."""
    env = os.environ.get("KHOD_DB")
    if env:
        return env
    if os.geteuid() == 0:
        return "sqlite:////var/lib/khod/khod.db"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(state) / 'khod' / 'khod.db'}"


def store_url(given: str | None, configured: str) -> str:
    """The one rule for the store khod and khoctl use: ``--db`` (``given``), else
    ``[store] db`` of the configuration, else ``default_db_url``."""
    return given or configured or default_db_url()


# (section, key) -> (Config field, converter)
def _bool(v: object, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {v!r}")
    return v


def _str(v: object, key: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{key}: expected a string, got {v!r}")
    return v


def _count(v: object, key: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 63:
        raise ConfigError(f"{key}: expected a whole number from 0 to {(1 << 63) - 1}, got {v!r}")
    return v


SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _sslmode(v: object, key: str) -> str:
    if v != "" and v not in SSLMODES:
        raise ConfigError(f'{key}: expected "" or one of {", ".join(SSLMODES)}, got {v!r}')
    return str(v)


KEYS: dict[tuple[str, str], tuple[str, Any]] = {
    ("daemon", "listen"): ("listen", parse_listen),
    ("daemon", "textfile"): ("textfile", _str),
    ("daemon", "watch_modules"): ("watch_modules", _bool),
    ("daemon", "retry_interval"): ("retry_interval", parse_duration),
    ("daemon", "ingest_timeout"): ("ingest_timeout", parse_duration),
    ("store", "db"): ("db", _str),
    ("store", "state_dir"): ("state_dir", _str),
    ("pstore", "own"): ("own_pstore", _bool),
    ("pstore", "inflate_limit"): ("inflate_limit", parse_size),
    ("retention", "max_boots"): ("max_boots", _count),
    ("retention", "max_age"): ("max_age", parse_duration),
    ("retention", "max_bytes"): ("max_bytes", parse_size),
    ("sync", "to"): ("sync_to", _str),
    ("sync", "interval"): ("sync_interval", parse_duration),
    ("sync", "sslmode"): ("sync_sslmode", _sslmode),
    ("sync", "ca"): ("sync_ca", _str),
    ("sync", "cert"): ("sync_cert", _str),
    ("sync", "key"): ("sync_key", _str),
    ("fleet", "window"): ("fleet_window", parse_duration),
    ("fleet", "verdicts"): ("fleet_verdicts", _str),
}
assert {f for f, _ in KEYS.values()} == {f.name for f in fields(Config)} - {"source"}


def load_config(path: Path | None, *, required: bool = False) -> Config:
    """The file, then its drop-ins (``<path>.d/*.toml``, by name) key by key over it; a
    missing default file with no drop-ins means defaults. Errors name the file."""
    p = str(path or DEFAULT_PATH)
    files, values = merged(p)
    if not files:
        if required or path is not None:
            raise ConfigError(f"{p}: not found")
        return Config()
    out: dict[str, Any] = {}
    for (section, key), (file, value) in values.items():
        spec = KEYS.get((section, key))
        if spec is None:
            raise ConfigError(f"{file}: {section}.{key}: unknown key")
        name, conv = spec
        try:
            out[name] = conv(value, f"{section}.{key}")
        except ConfigError as e:
            raise ConfigError(f"{file}: {e}") from None
    return Config(**out, source=", ".join(files))
