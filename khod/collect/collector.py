"""The collector every source reports to: the events of one boot's collection, and
the file reads that turn a failure into an event instead of an exception."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from khod.errors import KhodError, ParseError, SourceError
from khod.observation import Event, EventSource, Severity
from khod.parse.metadata import KexecMetadata
from khod.paths import HostPaths
from khod.sources.files import read_bytes
from khod.sources.kho import subtree_file

T = TypeVar("T")


class Collector:
    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths
        self.events: list[Event] = []

    def event(
        self,
        kind: str,
        source: str,
        severity: Severity,
        message: str,
        *,
        origin: EventSource,
        same_as: str | None = None,
    ) -> None:
        self.events.append(Event(kind, source, severity, message, origin=origin, same_as=same_as))

    def failed(
        self, e: KhodError, severity: Severity = Severity.ERROR, *, origin: EventSource
    ) -> None:
        if isinstance(e, ParseError):
            self.event("parse-error", e.source, severity, str(e), origin=origin)
        elif isinstance(e, SourceError):
            self.event("read-error", e.source, severity, str(e), origin=origin)
        else:
            self.event("error", "khod", severity, str(e), origin=origin)

    def file(self, path_attr: str, parse: Callable[[bytes, str], T]) -> T | None:
        path = getattr(self.paths, path_attr)
        shown = self.paths.rel(path)
        try:
            return parse(read_bytes(path, shown, 1 << 20), shown)
        except (SourceError, ParseError) as e:
            self.failed(e, origin=EventSource.IDENTITY)
            return None

    def kho_path(self, name: str) -> str:
        return self.paths.rel(self.paths.kho / name)

    def subtree_path(self, direction: str, name: str) -> str:
        """A subtree's file as shown: ``/sys/kernel/debug/kho/in/sub_fdts/LUO``."""
        return self.kho_path(subtree_file(direction, name))


@dataclass
class SubtreeFacts:
    """What the KHO subtrees told, each field filled by its subtree's collector
    (``khod.collect.subtrees.SUBTREES``); a subtree kept opaque fills none."""

    metadata: KexecMetadata | None = None  # incoming kexec-metadata
    out_metadata: KexecMetadata | None = None  # outgoing kexec-metadata
    luo_compatible: str | None = None
    liveupdate_num: int | None = None
    luo_sessions: bool | None = None
    pstore_kho: bytes | None = None  # the incoming pstore-kho blob (decoded with pstore)
