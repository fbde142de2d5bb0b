"""Which configuration files are read, and how they merge: the main file, then every
``*.toml`` in ``<main>.d/`` in the order of their names, a later file's key over an
earlier one's (key by key, as systemd and journald merge their drop-ins).

Standard library only (``os``, ``tomllib``): the boot capture reads ``store.state_dir``
through this before anything heavy is imported; ``khod.config`` checks the values.
"""

from __future__ import annotations

import os
import tomllib

from khod.errors import KhodError

DEFAULT_PATH = "/etc/khod/khod.toml"
# section, key -> (the file that set it last, its value)
Merged = dict[tuple[str, str], tuple[str, object]]


class ConfigError(KhodError):
    """A configuration file that does not parse, or a value that does not check."""


def dropin_dir(main: str) -> str:
    return main + ".d"


def config_files(main: str) -> list[str]:
    """The main file, then its drop-ins by name. Hidden files (editor locks) and names
    not ending in ``.toml`` (``.dpkg-old``, ``~``) are skipped."""
    files = [main]
    d = dropin_dir(main)
    try:
        with os.scandir(d) as it:
            names = [e.name for e in it if _is_dropin(e)]
    except (FileNotFoundError, NotADirectoryError):
        return files
    except OSError as e:
        raise ConfigError(f"{d}: {e.strerror}") from None
    return files + [os.path.join(d, n) for n in sorted(names)]


def _is_dropin(e: os.DirEntry[str]) -> bool:
    return e.name.endswith(".toml") and not e.name.startswith(".") and e.is_file()


def read_toml(path: str, *, missing_ok: bool = False) -> dict[str, object] | None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ConfigError(f"{path}: not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def merged(main: str, *, lenient: bool = False) -> tuple[list[str], Merged]:
    """The files read, in order (a missing main file is not one), and every key's last
    value with the file it came from. Errors name the file; ``lenient`` (the early
    reader) skips a file it cannot use."""
    files: list[str] = []
    values: Merged = {}
    for path in config_files(main):
        try:
            doc = read_toml(path, missing_ok=path == main)
        except ConfigError:
            if lenient:
                continue
            raise
        if doc is None:  # no main file: its drop-ins still count
            continue
        files.append(path)
        for section, table in doc.items():
            if not isinstance(table, dict):
                if lenient:
                    continue
                raise ConfigError(f"{path}: {section}: expected a [{section}] table")
            for key, value in table.items():
                values[(section, key)] = (path, value)
    return files, values
