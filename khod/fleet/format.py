"""The ``khod-export`` format, version 1 (docs/fleet.md, "Export format"): one JSON object per
line. The first is a header ``{"object": "header", "format": "khod-export",
"version": 1, ...}``; then objects ``boot``, ``blob``, ``event``, ``pstore``
and ``attempt``, boots first. Their keys are the store's column names. A row that
hangs off a boot names it by ``(machine_id, boot_id)``, never by a database id, so
the same object means the same thing in every store; binary columns are base64.

This module is the format alone: its object types and their tables, the header, and
the checks every object passes before any store sees it (``validate``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, LargeBinary, String, Table

from khod import __version__
from khod.errors import KhodError
from khod.store.schema import blobs, boots, events, kexec_attempts, pstore_records

FORMAT = "khod-export"
VERSION = 1

# type -> (table, columns of the table that are boot references, exported as boot ids)
TABLES: dict[str, tuple[Table, tuple[str, ...]]] = {
    "boot": (boots, ()),
    "blob": (blobs, ("boot_pk",)),
    "event": (events, ("boot_pk",)),
    "pstore": (pstore_records, ("collected_by", "describes")),
    "attempt": (kexec_attempts, ("from_boot", "verdict_boot")),
}
# in an export object, a boot reference is named by the boot id under this key
REF_KEY = {"boot_pk": "boot_id"}
# a row whose boot is unknown to the target is skipped (counted in unknown_boot); the
# other references (the boot a record describes, the boot that judged an attempt)
# become NULL when unknown
HARD_REFS = frozenset({"boot_pk", "collected_by", "from_boot"})
CONFLICT = {
    "boot": ("machine_id", "boot_id"),
    "blob": ("boot_pk", "direction", "name"),
    "event": ("boot_pk", "fingerprint"),
    "pstore": ("machine_id", "sha256"),
    "attempt": ("uid",),
}
INT32 = 2**31
INT64 = 2**63
# a time every reader can show (datetime's range, from the epoch: a boot or a record
# before 1970 is a clock gone wrong, not history): 0 .. 9999-12-31T23:59:59Z
TIME_MAX = 253_402_300_799
TIMES = frozenset({"booted_at", "ingested_at", "created_at", "record_time", "collected_at"})


class BadObject(KhodError):
    """One object of an import could not be used."""


def ref_key(column: str) -> str:
    return REF_KEY.get(column, column)


def header(since: float | None = None) -> dict[str, Any]:
    return {
        "object": "header",
        "format": FORMAT,
        "version": VERSION,
        "khod_version": __version__,
        "exported_at": time.time(),
        "since": since,
    }


# --- validation ---------------------------------------------------------------


Check = Callable[[Any], Any]


def int_range(col: Any) -> tuple[int, int]:
    """The values an integer column takes (from, up to but not including): the
    kernel's type where the column names one (``info["range"]``), else the column's."""
    if "range" in col.info:
        low, high = col.info["range"]
        return int(low), int(high)
    limit = INT64 if isinstance(col.type, BigInteger) else INT32
    return -limit, limit


def _checker(col: Any, name: str) -> Check:
    t = col.type

    def bad(why: str) -> BadObject:
        return BadObject(f"{name}: {why}")

    if isinstance(t, Boolean):

        def check(v: Any) -> Any:
            if not isinstance(v, bool):
                raise bad("expected true or false")
            return v

    elif isinstance(t, Integer):  # BigInteger is an Integer
        low, high = int_range(col)

        def check(v: Any) -> Any:
            # JSON has one number type: 3, 3.0 and 3e0 are the same integer
            if isinstance(v, float) and v.is_integer() and abs(v) < 2**64:
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad("expected an integer")
            if not low <= v < high:
                raise bad("integer out of range")
            return v

    elif isinstance(t, Float):

        def check(v: Any) -> Any:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad("expected a number")
            return float(v)

    elif isinstance(t, JSON):
        shape = JSON_SHAPES.get(name)

        def check(v: Any) -> Any:
            if not isinstance(v, (list, dict)):
                raise bad("expected a JSON array or object")
            if shape is not None:
                try:
                    return shape(v)
                except ValueError as e:
                    raise bad(str(e)) from None
            return v

    elif isinstance(t, LargeBinary):

        def check(v: Any) -> Any:
            if not isinstance(v, str):
                raise bad("expected base64")
            try:
                return base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise bad("not valid base64") from None

    else:  # String, Text, KText
        length = t.length if isinstance(t, String) else None

        def check(v: Any) -> Any:
            if not isinstance(v, str):
                raise bad("expected a string")
            if "\x00" in v:
                v = v.replace("\x00", "\\x00")
            if length is not None and len(v) > length:
                raise bad(f"longer than {length} characters")
            return v

    if name in TIMES:
        return _timed(check, bad)
    return check


def _timed(check: Check, bad: Callable[[str], BadObject]) -> Check:
    def timed(v: Any) -> Any:
        v = check(v)
        if not 0 <= v <= TIME_MAX:
            raise bad("not a time (seconds since 1970, before the year 10000)")
        return v

    return timed


# --- the shapes of JSON columns: the value as stored, or ValueError(why) -----------


def _int64(v: Any, what: str) -> int:
    # one number type in JSON, as for integer columns: 3, 3.0 and 3e0 are one integer
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**64:
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not -INT64 <= v < INT64:
        raise ValueError(f"{what} is not an integer of 64 bits")
    return v


def _subtrees(v: Any) -> Any:
    """``[{"name": str, "size": int | null}, ...]`` (khod.observation.Subtree)."""
    if not isinstance(v, list):
        raise ValueError("expected an array of subtrees")
    out = []
    for i, t in enumerate(v):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ValueError(f"item {i}: expected a subtree {{name, size}}")
        size = t.get("size")
        out.append(t | {"size": None if size is None else _int64(size, f"item {i}: size")})
    return out


def _scratch(v: Any) -> Any:
    """``[[phys, len], ...]``: the scratch areas, each two 64-bit integers."""
    if not isinstance(v, list):
        raise ValueError("expected an array of [address, length]")
    out = []
    for i, area in enumerate(v):
        if not (isinstance(area, list) and len(area) == 2):
            raise ValueError(f"item {i}: expected [address, length]")
        out.append([_int64(x, f"item {i}") for x in area])
    return out


def _checks(v: Any) -> Any:
    """``[{"name", "ok", "severity", "detail"}, ...]`` (khod.checks)."""
    if not isinstance(v, list) or not all(isinstance(c, dict) for c in v):
        raise ValueError("expected an array of objects")
    return v


def _argv(v: Any) -> Any:
    """``[[str, ...], ...]``: each command run, as its argv."""
    if not isinstance(v, list) or not all(
        isinstance(a, list) and all(isinstance(x, str) for x in a) for a in v
    ):
        raise ValueError("expected an array of argv lists of strings")
    return v


JSON_SHAPES: dict[str, Callable[[Any], Any]] = {
    "subtrees": _subtrees,
    "out_subtrees": _subtrees,
    "scratch": _scratch,
    "checks": _checks,
    "argv": _argv,
}


@dataclass
class _Shape:
    kind: str
    table: Table
    checks: dict[str, Check]
    required: frozenset[str]
    refs: tuple[str, ...]
    columns: dict[str, Any]  # key -> the column its value goes to (or is checked as)


def _shape(kind: str) -> _Shape:
    table, refs = TABLES[kind]
    columns: dict[str, Any] = {}
    required = set()
    for col in table.columns:
        if col.name == "id" or col.name in refs:
            continue
        columns[col.name] = col
        if not col.nullable:
            required.add(col.name)
    if "machine_id" not in columns:
        columns["machine_id"] = boots.c.machine_id
        required.add("machine_id")
    for ref in refs:
        columns[ref_key(ref)] = boots.c.boot_id
        if ref in HARD_REFS:
            required.add(ref_key(ref))
    checks = {key: _checker(col, key) for key, col in columns.items()}
    return _Shape(kind, table, checks, frozenset(required), refs, columns)


SHAPES = {kind: _shape(kind) for kind in TABLES}


def validate(obj: Any) -> tuple[str, dict[str, Any]]:
    """The type and the checked values of one export object."""
    if not isinstance(obj, dict):
        raise BadObject("not a JSON object")
    kind = obj.get("object")
    if kind not in SHAPES:
        raise BadObject(f"unknown object {kind!r}")
    shape = SHAPES[kind]
    missing = shape.required - obj.keys()
    if missing:
        raise BadObject(f"{kind}: missing {', '.join(sorted(missing))}")
    values: dict[str, Any] = {}
    for key, check in shape.checks.items():
        v = obj.get(key)
        values[key] = None if v is None else check(v)
        if v is None and key in shape.required:
            raise BadObject(f"{kind}: {key} is null")
    return kind, values


def parse_line(line: bytes | str) -> tuple[str, dict[str, Any]]:
    """One export line: its type and checked values, or BadObject."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise BadObject("not JSON") from None
    return validate(obj)


def check_header(obj: Any) -> None:
    if not isinstance(obj, dict) or obj.get("object") != "header" or obj.get("format") != FORMAT:
        raise BadObject("not a khod export (the first line is not its header)")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BadObject("the header has no version")
    if version > VERSION:
        raise BadObject(
            f"export format version {version} is newer than this khod reads ({VERSION})"
        )
