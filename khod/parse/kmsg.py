"""Kernel log records as ``/dev/kmsg`` returns them, and the KHO facts in them.

Record format (``Documentation/ABI/testing/dev-kmsg``)::

    <prefix>,<seq>,<usec>,<flags>[,...];<message>\\n
     KEY=value\\n            (optional continuation lines, leading space)

Non-printable bytes (and backslash) in the message are escaped as ``\\xNN``.

KHO lines (``kernel/liveupdate/kexec_handover.c``, 6.16-7.3), all prefixed ``KHO: ``:

- ``found kexec handover data.`` (6.16+; 6.16 appended "Will skip init ...")
- ``setup: handover FDT (0x...) is invalid: -N`` / ``is incompatible with 'kho-vN'``
- ``disabling KHO revival`` (7.1+) or ``disabling KHO revival: -N`` (6.16-7.0)
- ``exec from: <release> (count <n>)`` (7.1+, from ``kho_in_kexec_metadata``)
- ``Failed to reserve scratch area, disabling kexec handover``

Only the kernel's own records are its word: facility 0 (``pri >> 3`` of the prefix;
what user space writes to ``/dev/kmsg`` gets facility 1 or above, the kernel never lets
it claim 0) and the exact messages above, matched from the start of the text (a kernel
record can start with a user's 15-byte task name: ``comm[pid]: segfault at ... in
FILE[...]``, so nothing is searched for inside a line). The kernel's own warnings
(``count_warnings``): facility 0 records whose message starts with one of
``KERNEL_WARNINGS``.
``Revived memory reservation 'NAME' from KHO`` (``mm/memblock.c``, no prefix): a
``reserve_mem`` region taken from the handover, also by a ``kho=off`` kernel (7.3.4).
LUO lines (``kernel/liveupdate/luo_core.c``, 6.19+), prefixed ``luo: ``:

- ``Retrieved live update data, liveupdate number: N`` (the incoming struct accepted)
- ``LUO state is too small (N < M)``, ``LUO state is incompatible with '...'``,
  ``failed to retrieve LUO state '...' from KHO: ...``
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from khod.parse.metadata import decode_release

MAX_RECORDS = 1_000_000


@dataclass(frozen=True)
class KmsgRecord:
    facility: int
    level: int
    seq: int
    usec: int
    message: bytes  # unescaped bytes

    @property
    def text(self) -> str:
        return self.message.decode("utf-8", errors="backslashreplace")


_ESC = re.compile(rb"\\x([0-9a-fA-F]{2})")


def unescape(msg: bytes) -> bytes:
    return _ESC.sub(lambda m: bytes([int(m.group(1), 16)]), msg)


def parse_kmsg(data: bytes) -> list[KmsgRecord]:
    """Decode every well-formed record; malformed lines are skipped, never fatal."""
    records: list[KmsgRecord] = []
    for line in data.split(b"\n"):
        if not line or line.startswith(b" "):
            continue  # continuation (dictionary) line
        prefix, sep, msg = line.partition(b";")
        if not sep:
            continue
        fields = prefix.split(b",")
        if len(fields) < 3:
            continue
        try:
            pri, seq, usec = (int(f) for f in fields[:3])
        except ValueError:
            continue
        if pri < 0 or seq < 0 or usec < 0:
            continue
        records.append(KmsgRecord(pri >> 3, pri & 7, seq, usec, unescape(msg)))
        if len(records) >= MAX_RECORDS:
            break
    return records


_EXEC_FROM = re.compile(rb"^KHO: exec from: (.*) \(count (\d{1,10})\)$", re.S)
_REJECT = re.compile(rb"^KHO: setup: handover FDT \((0x[0-9a-fA-F]+)\) is (invalid|incompatible)")
_DISABLE = re.compile(rb"^KHO: [dD]isabling KHO revival(?:: -?\d{1,10})?$")
_FOUND = re.compile(rb"^KHO: found kexec handover data\.(?: .*)?$", re.S)
_SCRATCH_FAILED = re.compile(rb"^KHO: Failed to reserve scratch area, disabling kexec handover$")
_REVIVED = re.compile(rb"^Revived memory reservation '([^']{1,64})' from KHO$")
_LUO_NUM = re.compile(rb"^luo: Retrieved live update data, liveupdate number: (-?\d{1,20})$")
_LUO_ERR = re.compile(
    rb"^luo: (LUO state is (too small|incompatible with)|failed to retrieve LUO state)"
)
_META_ERR = re.compile(
    rb"^KHO: (?:[a-z-]{1,32}: )?(?:blob too small|version \d+ not supported|too small for v\d+)"
)


# A kernel record that starts with the task's name (``comm``, at most 15 bytes): a
# fault ("NAME[PID]: segfault at ..."), the OOM killer ("NAME invoked oom-killer: ..."),
# drop_caches ("NAME (PID): drop_caches: N"). Any user names a program as it likes.
_TASK_FIRST = re.compile(rb"^.{1,15}?(?:\[\d{1,10}\]| \(\d{1,10}\)| invoked oom-killer)", re.S)
# ... but the hung-task warning names its task 11 bytes in ("INFO: task COMM:PID blocked
# for more than"): no record that starts with a task's name can take that shape
_HUNG_TASK = re.compile(rb"^INFO: task .{1,15}:\d{1,10} blocked for more than ", re.S)


def _task_first(msg: bytes) -> bool:
    """Whether the record starts with a task's name, so not with the kernel's words."""
    return _TASK_FIRST.match(msg) is not None and _HUNG_TASK.match(msg) is None


@dataclass(frozen=True)
class KhoLog:
    """What the kernel log of this boot says about the incoming handover."""

    exec_from_release: str | None = None
    exec_from_release_raw: bytes | None = None
    exec_from_count: int | None = None
    found_handover: bool = False
    rejected: str | None = None  # "setup: handover FDT (...) is incompatible with 'kho-v4'"
    revival_disabled: str | None = None  # the "disabling KHO revival" line
    scratch_failed: bool = False
    scratch_areas: bool = False  # "KHO: scratch areas: ..." (KHO enabled, scratch reserved)
    metadata_errors: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()  # every KHO line, in order
    liveupdate_num: int | None = None  # "luo: Retrieved live update data, ... number: N"
    luo_errors: tuple[str, ...] = ()  # the kernel's own words on LUO state it refused
    revived: tuple[str, ...] = ()  # reserve_mem regions taken from the handover, by name


def parse_kho_log(records: list[KmsgRecord]) -> KhoLog:
    exec_release: str | None = None
    exec_raw: bytes | None = None
    exec_count: int | None = None
    found = scratch_failed = scratch_areas = False
    rejected = disabled = None
    meta_errors: list[str] = []
    lines: list[str] = []
    luo_num: int | None = None
    luo_errors: list[str] = []
    revived: list[str] = []
    for rec in records:
        msg = rec.message
        if rec.facility != 0 or _task_first(msg):
            continue  # user space's words, not the kernel's
        if msg.startswith(b"luo: "):
            m = _LUO_NUM.match(msg)
            if m:
                luo_num = int(m.group(1))  # %lld of a u64
                if luo_num < 0:
                    luo_num += 1 << 64
            elif _LUO_ERR.match(msg):
                luo_errors.append(rec.text)
            continue
        m = _REVIVED.match(msg)
        if m:
            revived.append(m.group(1).decode("utf-8", errors="backslashreplace"))
            continue
        if not msg.startswith(b"KHO: "):
            continue
        lines.append(rec.text)
        m = _EXEC_FROM.match(msg)
        if m:
            exec_raw = m.group(1)
            exec_release, _ = decode_release(exec_raw)
            exec_count = int(m.group(2))
            continue
        if _FOUND.match(msg):
            found = True
        elif msg.startswith((b"KHO: scratch areas:", b"KHO: bootmem areas:")):  # 7.4 name
            scratch_areas = True
        elif _REJECT.match(msg):
            rejected = rec.text.removeprefix("KHO: ")
        elif _DISABLE.match(msg):
            disabled = rec.text.removeprefix("KHO: ")
        elif _SCRATCH_FAILED.match(msg):
            scratch_failed = True
        if _META_ERR.match(msg):
            meta_errors.append(rec.text)
    return KhoLog(
        exec_release,
        exec_raw,
        exec_count,
        found,
        rejected,
        disabled,
        scratch_failed,
        scratch_areas,
        tuple(meta_errors),
        tuple(lines),
        luo_num,
        tuple(luo_errors),
        tuple(revived),
    )


# The kernel's reports of its own trouble, by the first words of the line:
# WARN_ON and lockdep ("WARNING: CPU: 0 PID: 1 at ...", "WARNING: possible circular
# locking dependency detected"), BUG ("BUG: kernel NULL pointer dereference", "BUG:
# KASAN: ..."), an Oops (x86 "Oops: 0002 [#1] ...", arm64 "Internal error: Oops: ..."),
# a hung task ("INFO: task kworker/0:1:12 blocked for more than 120 seconds."), a soft
# lockup ("watchdog: BUG: soft lockup - CPU#1 stuck for 23s!") and a machine check
# ("mce: [Hardware Error]: CPU 0: Machine Check ..." or "... Machine check events
# logged"; the lines after the first of an MCE report are not counted again).
KERNEL_WARNINGS = re.compile(
    rb"^(?:WARNING: |BUG: |(?:Internal error: )?Oops\b|INFO: task .{0,200} blocked for more than "
    rb"|watchdog: BUG: soft lockup|mce: \[Hardware Error\]: (?:CPU \d+: Machine Check"
    rb"|Machine check events logged))",
    re.S,
)


def count_warnings(records: list[KmsgRecord]) -> int:
    """How many of the kernel's own warning lines the log holds (``KERNEL_WARNINGS``):
    each line counts once, so a BUG followed by its Oops counts two."""
    return sum(
        1
        for r in records
        if r.facility == 0 and KERNEL_WARNINGS.match(r.message) and not _task_first(r.message)
    )
