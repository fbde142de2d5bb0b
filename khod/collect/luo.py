"""The Live Update Orchestrator's state handed over (``kho/in/sub_fdts/LUO``): what was
offered, and what this kernel took of it, held against the kernel's own ``luo:`` lines
(``kernel/liveupdate/luo_core.c``; the layouts are ``khod.parse.luo``'s)."""

from __future__ import annotations

from khod.collect.collector import Collector, SubtreeFacts
from khod.errors import ParseError
from khod.observation import EventSource, Severity
from khod.parse.compat import same_abi
from khod.parse.kmsg import KhoLog
from khod.parse.luo import LuoState, UnknownLuoVersion, parse_luo
from khod.records import Direction, KhoSubtreeName
from khod.sources.kho import KhoFiles

LUO = KhoSubtreeName.LUO
MAX_STORED = (1 << 63) - 1  # a BIGINT column; the kernel's u64 counts live updates


def _parse_luo(
    c: Collector, kf: KhoFiles, direction: Direction
) -> tuple[str | None, LuoState | None]:
    """The LUO subtree: (its compatible, the decoded state). An unknown version keeps
    its compatible and an event; the blob itself is stored raw either way."""
    data = kf.subtree(direction, LUO)
    if data is None:
        return None, None
    shown = c.subtree_path(direction, LUO)
    try:
        luo = parse_luo(data, shown)
    except UnknownLuoVersion as e:
        c.event("unknown-luo-version", shown, Severity.WARNING, str(e), origin=EventSource.KHO)
        return e.compatible, None
    except ParseError as e:
        c.failed(e, origin=EventSource.KHO)
        return None, None
    for w in luo.warnings:
        c.event("luo-warning", shown, Severity.WARNING, f"{shown}: {w}", origin=EventSource.KHO)
    return luo.compatible, luo


def collect_luo(c: Collector, kf: KhoFiles, log: KhoLog | None, found: SubtreeFacts) -> None:
    """The subtree's row in ``SUBTREES``: what ``_collect`` finds, into ``found``."""
    found.luo_compatible, found.liveupdate_num, found.luo_sessions = _collect(c, kf, log)


def _collect(
    c: Collector, kf: KhoFiles, log: KhoLog | None
) -> tuple[str | None, int | None, bool | None]:
    """The incoming LUO state: its compatible (what was offered), and the number and
    sessions this kernel took (None when it refused them: its log says so, or it writes
    another compatible than it was handed, the whole string being what it compares).
    Where the kernel's log says it took the state, the blob must be that state (its
    number, this kernel's own compatible); else it is memory reused since (``_freed``).
    The outgoing number is held against the incoming one + 1."""
    out_compatible, out = _parse_luo(c, kf, Direction.OUT)
    logged = log.liveupdate_num if log is not None else None
    seen = _freed(kf, out_compatible, logged)
    if logged is not None and seen is not None:
        # the kernel took it (its log says so) and freed it: what debugfs shows is the
        # memory reused. It took only its own compatible, which it writes out again.
        c.event(
            "luo-state-freed",
            c.subtree_path(Direction.IN, LUO),
            Severity.INFO,
            f"{c.subtree_path(Direction.IN, LUO)} no longer holds the LUO state the kernel took "
            f"(it frees it once read; debugfs shows that memory reused: {seen}): the "
            "number is the kernel's log line, the compatible its own, the sessions not told",
            origin=EventSource.KHO,
            same_as=f"liveupdate number {logged}",  # not what the reused page holds now
        )
        if out is not None:
            _check_outgoing_luo(c, out, logged + 1)
        return out_compatible, _stored(c, logged), None
    compatible, luo = _parse_luo(c, kf, Direction.IN)
    errors = log.luo_errors if log is not None else ()
    for err in errors:
        c.event("kernel-luo-error", "kmsg", Severity.WARNING, err, origin=EventSource.KMSG)
    refused = None
    if compatible is not None:
        if errors:
            refused = f"the kernel said: {errors[-1]}"
        elif out_compatible is not None and not same_abi(compatible, out_compatible):
            refused = f"this kernel writes {out_compatible!r}"
    if refused is not None:
        c.event(
            "luo-not-taken",
            c.subtree_path(Direction.IN, LUO),
            Severity.WARNING,
            f"the incoming LUO state {compatible!r} was not taken ({refused}): no live "
            "update number, no sessions, the count starts again",
            origin=EventSource.KHO,
        )
        luo = None
    num = luo.liveupdate_num if luo is not None else None
    if luo is None and refused is None:
        num = logged  # the blob was not read or not decoded here: the kernel's word
    incoming = num
    if incoming is None and (refused is not None or kf.subtree(Direction.IN, LUO) is None):
        incoming = 0  # nothing taken: the kernel counts from 0
    if out is not None and incoming is not None:
        _check_outgoing_luo(c, out, incoming + 1)
    return compatible, _stored(c, num), luo.sessions if luo is not None else None


def _freed(kf: KhoFiles, own: str | None, logged: int | None) -> str | None:
    """What the incoming LUO blob holds instead of the state the kernel logged it took
    (number ``logged``; its compatible can only be the kernel's own, ``own``), or None
    when it is that state (or nothing says otherwise). 7.3.4's ``luo_early_startup``, an
    early initcall, reads the state and hands its pages back (``kho_restore_free``)
    while debugfs goes on showing that address: on the e2e's LUO boots it held other
    bytes, zeros, or a string the system wrote there since
    ("systemd-udev-trigger.service")."""
    data = kf.subtree(Direction.IN, LUO)
    if data is None or logged is None:
        return None
    try:
        luo = parse_luo(data, f"in/sub_fdts/{LUO}")
    except UnknownLuoVersion as e:
        return f"compatible {e.compatible!r}"
    except ParseError as e:
        return e.why
    if own is not None and not same_abi(luo.compatible, own):
        return f"compatible {luo.compatible!r}"
    if luo.liveupdate_num != logged:
        return f"liveupdate number {luo.liveupdate_num}"
    return None


def _stored(c: Collector, num: int | None) -> int | None:
    if num is not None and num > MAX_STORED:
        c.event(
            "luo-number-out-of-range",
            c.subtree_path(Direction.IN, LUO),
            Severity.WARNING,
            f"liveupdate number {num} is beyond what is stored; kept raw only",
            origin=EventSource.KHO,
        )
        return None
    return num


def _check_outgoing_luo(c: Collector, out: LuoState, expected: int) -> None:
    if out.liveupdate_num != expected:
        c.event(
            "outgoing-luo-mismatch",
            c.subtree_path(Direction.OUT, LUO),
            Severity.WARNING,
            f"outgoing LUO liveupdate number is {out.liveupdate_num}, expected {expected}",
            origin=EventSource.KHO,
        )
