"""A check's result, and how severe its failure is."""

from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    severity: str  # of a failure: error (blocks a kexec unless --force), warning, info
    detail: str


def ok(name: str, detail: str, severity: str = ERROR) -> Check:
    return Check(name, True, severity, detail)


def fail(name: str, detail: str, severity: str = ERROR) -> Check:
    return Check(name, False, severity, detail)
