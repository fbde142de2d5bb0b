"""The records that cross a process boundary, each defined once and imported by both
sides: the ingest job (the daemon to its ingest child, the first one forked early and
the later ones ``khod.ingest.worker``) and the metrics snapshot (the ingest child to the
resident daemon, ``metrics.json`` in the state dir, read again at the next start).

Each is a frozen dataclass with a ``VERSION``, sent as JSON (``{"version": N, ...}``,
bytes in base64), never pickled: a reader builds only these records, and refuses one
of another version (a khod upgraded while the old daemon runs), a truncated one or
garbage with one line (``RecordError``) and an event for the journal.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from khod.config import Config
from khod.errors import KhodError
from khod.observation import BootObservation, Event, EventSource, Severity
from khod.paths import HostPaths

__all__ = [
    "IngestJob",
    "MetricsSnapshot",
    "RecordError",
    "SnapshotBoot",
    "decode",
    "encode",
    "read_snapshot",
]


@dataclass(frozen=True)
class IngestJob:
    """What one ingest does (``khod.ingest.pipeline.run_ingest``): ``khod --once`` builds
    it in-process, the daemon sends it to its ingest child."""

    VERSION: ClassVar[int] = 1

    cfg: Config  # the effective configuration (file, then command line)
    paths: HostPaths
    obs: BootObservation | None = None  # collected already; None: collect it here
    rescan: bool = False  # only add the pstore records of a backend that came late
    snapshot: Path | None = None  # the daemon's ingests write its metrics snapshot here
    journal: bool = False  # journal entries for the boot and the records new in it
    store_checked: bool = False  # checked whole earlier in this start: the header suffices
    # khod --once: write the exposition the daemon serves here (node_exporter's textfile)
    textfile: str = ""


@dataclass(frozen=True)
class SnapshotBoot:
    """This boot, as /metrics shows it."""

    boot_id: str = ""
    release: str = ""
    previous_release: str | None = None
    kind: str = ""
    kho_abi: str | None = None
    kho_enabled: bool = False
    kexec_count: int | None = None
    metadata_source: str | None = None  # where previous_release and kexec_count came from
    booted_at: int | None = None
    scratch_bytes: int = 0
    liveupdate_num: int | None = None


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the resident daemon serves, computed from the store by the ingest child
    (``khod.ingest.snapshot``) and rendered by ``khod.metrics``. The empty one: no
    ingest has ended yet."""

    VERSION: ClassVar[int] = 1

    machine_id: str = ""
    boot: SnapshotBoot | None = None
    boots_by_kind: Mapping[str, int] = field(default_factory=dict)
    pstore: tuple[tuple[str, str, int], ...] = ()  # (backend, type, records)
    attempts_by_verdict: Mapping[str, int] = field(default_factory=dict)
    source_errors: Mapping[str, int] = field(default_factory=dict)  # by EventSource
    last_ingest: float | None = None  # seconds since the epoch
    ingest_duration: float | None = None  # seconds


class RecordError(KhodError):
    """A record that cannot be read: its one line, and the event that records it."""

    def __init__(self, what: str, source: str, why: str) -> None:
        super().__init__(f"{what} {source}: {why}")
        self.event = Event(
            "record-refused", source, Severity.ERROR, str(self), origin=EventSource.STORE
        )


R = TypeVar("R", IngestJob, MetricsSnapshot)


def encode(record: IngestJob | MetricsSnapshot) -> bytes:
    return json.dumps({"version": record.VERSION, **_to_json(record)}).encode()


def decode(cls: type[R], data: bytes, source: str) -> R:
    """The record ``data`` holds, or ``RecordError`` naming ``source``."""
    what = "ingest job" if cls is IngestJob else "metrics snapshot"
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        cut = " (cut short?)" if data.lstrip()[:1] == b"{" else ""
        raise RecordError(what, source, f"not JSON{cut}") from None
    if not isinstance(value, dict):
        raise RecordError(what, source, "not a JSON object")
    version = value.pop("version", None)
    if version != cls.VERSION:
        raise RecordError(
            what, source, f"version {version!r}, this khod reads version {cls.VERSION}"
        )
    try:
        return _from_json(cls, value, "")  # type: ignore[no-any-return]
    except _Bad as e:
        raise RecordError(what, source, str(e)) from None


def read_snapshot(path: Path) -> MetricsSnapshot | None:
    """The snapshot at ``path``; None when there is none yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RecordError("metrics snapshot", str(path), e.strerror or str(e)) from None
    return decode(MetricsSnapshot, data, str(path))


def _to_json(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, HostPaths):
        return str(value.root)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value  # str, int, float, bool, None


class _Bad(Exception):
    pass


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _from_json(tp: Any, v: Any, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _from_json(inner, v, where)
    if isinstance(tp, type) and is_dataclass(tp):
        return _dataclass(tp, v, where)
    if origin is tuple:
        if not isinstance(v, list):
            raise _Bad(f"{where or 'record'}: expected a list, got {type(v).__name__}")
        items = args[:1] * len(v) if args[1:] == (...,) else args
        if len(items) != len(v):
            raise _Bad(f"{where}: expected {len(items)} items, got {len(v)}")
        return tuple(
            _from_json(t, x, f"{where}[{i}]") for i, (t, x) in enumerate(zip(items, v, strict=True))
        )
    if origin is Mapping or origin is dict:
        if not isinstance(v, dict):
            raise _Bad(f"{where}: expected an object, got {type(v).__name__}")
        return {k: _from_json(args[1], x, f"{where}.{k}") for k, x in v.items()}
    return _scalar(tp, v, where)


def _dataclass(tp: type, v: Any, where: str) -> Any:
    if not isinstance(v, dict):
        raise _Bad(f"{where or 'record'}: expected an object, got {type(v).__name__}")
    hints, kwargs = _hints(tp), {}
    names = {f.name for f in fields(tp)}
    extra = sorted(set(v) - names)
    if extra:
        raise _Bad(f"{where}.{extra[0]}: not a field of this version".lstrip("."))
    for f in fields(tp):
        if f.name not in v:
            raise _Bad(f"{where}.{f.name}: missing".lstrip("."))
        kwargs[f.name] = _from_json(hints[f.name], v[f.name], f"{where}.{f.name}".lstrip("."))
    return tp(**kwargs)


def _scalar(tp: Any, v: Any, where: str) -> Any:
    if tp is HostPaths or tp is Path:
        if isinstance(v, str):
            return HostPaths(Path(v)) if tp is HostPaths else Path(v)
    elif tp is bytes:
        if isinstance(v, str):
            try:
                return base64.b64decode(v, validate=True)
            except binascii.Error:
                raise _Bad(f"{where}: not base64") from None
    elif isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(v)
        except ValueError:
            raise _Bad(f"{where}: {v!r} is not a {tp.__name__}") from None
    elif tp is bool:
        if isinstance(v, bool):
            return v
    elif tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif tp is float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            try:
                f = float(v)
            except OverflowError:
                raise _Bad(f"{where}: {str(v)[:20]}... is past any float") from None
            if not math.isfinite(f):
                raise _Bad(f"{where}: {f} is not a finite number")
            return f
    elif tp is str:
        if isinstance(v, str):
            return v
    else:
        raise _Bad(f"{where}: no reader for {tp!r}")
    raise _Bad(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(v).__name__}")
