"""Exception types. Parsers raise ParseError; entry points turn KhodError into one line."""

from __future__ import annotations


class KhodError(Exception):
    """An error meant for the operator: printed as one line, exit status 1."""


class ParseError(KhodError):
    """Bytes that do not decode as the kernel interface they claim to be.

    ``source`` names the input (a path relative to the sysroot, or a parser name),
    ``offset`` the byte offset where decoding failed (None when not positional).
    """

    def __init__(self, source: str, offset: int | None, why: str) -> None:
        self.source = source
        self.offset = offset
        self.why = why
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"{source}{where}: {why}")


class SourceError(KhodError):
    """A file that could not be read (missing, permission denied, not a file...)."""

    def __init__(self, source: str, why: str) -> None:
        self.source = source
        self.why = why
        super().__init__(f"{source}: {why}")


class StoreError(KhodError):
    """The database cannot be opened, migrated or written."""
