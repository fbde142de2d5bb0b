"""The one module that imports systemd-python: sd_notify and the journal.

sd_notify falls back to a plain datagram on ``$NOTIFY_SOCKET`` when systemd-python is
not importable; the journal falls back to stderr lines.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from khod.observation import Boot, BootObservation, Event, PstoreRecord, Severity
from khod.records import is_crash

# MESSAGE_IDs of khod's journal entries (each made by `systemd-id128 new`, never typed);
# systemd/khod.catalog explains each one
MESSAGE_IDS = {
    "boot-recorded": "8cdcc4ade3a94ee197e11e9990c60450",
    "kexec-rejected": "934a08abe342405dab6ffe1519173c13",
    "source-error": "9177d41ebf564ff199b24b8fa4228918",
    "anomaly": "ef3311b7ae144c80932d77a62ea23ea5",
    "pstore-crash": "95545d729a4543bbafc31f3d660a7dce",
    "pstore-record": "b9371c84a1624c8b9c79d59f1a01764c",
}
PRIORITY = {Severity.INFO: 6, Severity.WARNING: 4, Severity.ERROR: 3}


def notify(state: str) -> bool:
    """sd_notify(3): READY=1, STATUS=..., WATCHDOG=1. False when not under systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    try:
        import systemd.daemon  # noqa: PLC0415
    except ImportError:
        return _notify_datagram(state)
    # sd_notify is a sendmsg: a signal (SIGHUP from systemctl reload, say) landing in it
    # comes back as EINTR, which the C binding raises instead of retrying
    for _ in range(5):
        try:
            return bool(systemd.daemon.notify(state))
        except InterruptedError:
            continue
        except OSError:
            return False  # the manager went away: nothing to tell, nothing to stop for
    return False


def _notify_datagram(state: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
        return True
    except OSError:
        return False


def event_message_id(e: Event) -> str:
    if e.kind in ("parse-error", "read-error"):
        return MESSAGE_IDS["source-error"]
    return MESSAGE_IDS["anomaly"]


def journal_fields_for_boot(obs: Boot) -> dict[str, Any]:
    return {
        "KHOD_BOOT_ID": obs.boot_id,
        "KHOD_MACHINE_ID": obs.machine_id,
        "KHOD_RELEASE": obs.release,
        "KHOD_KIND": str(obs.kind),
        "KHOD_PREVIOUS_RELEASE": obs.previous_release or "",
        "KHOD_KEXEC_COUNT": "" if obs.kexec_count is None else str(obs.kexec_count),
        "KHOD_METADATA_SOURCE": obs.metadata_source or "",
        "KHOD_KHO_ABI": obs.kho_abi or "",
        "KHOD_LIVEUPDATE_NUM": "" if obs.liveupdate_num is None else str(obs.liveupdate_num),
        "KHOD_BOOTLOADER_TYPE": "" if obs.bootloader_type is None else str(obs.bootloader_type),
    }


def send(message: str, message_id: str, priority: int, **fields: Any) -> None:
    try:
        import systemd.journal  # noqa: PLC0415
    except ImportError:
        print(f"khod: {message}", file=sys.stderr)
        return
    systemd.journal.send(
        message, MESSAGE_ID=message_id, PRIORITY=str(priority), SYSLOG_IDENTIFIER="khod", **fields
    )


def journal_event(e: Event) -> None:
    """One entry for an event whose line was said already (on stderr): nothing more
    where there is no journal to send it to."""
    try:
        import systemd.journal  # noqa: PLC0415
    except ImportError:
        return
    with contextlib.suppress(OSError):  # no journald: the line on stderr is all there is
        systemd.journal.send(
            e.message,
            MESSAGE_ID=event_message_id(e),
            PRIORITY=str(PRIORITY[e.severity]),
            SYSLOG_IDENTIFIER="khod",
            KHOD_EVENT=e.kind,
            KHOD_SOURCE=e.source,
        )


def journal_boot(obs: BootObservation, new_events: list[Event]) -> None:
    """One entry for the boot, one per problem."""
    f = journal_fields_for_boot(obs)
    what = str(obs.kind)
    if obs.previous_release:
        what += f" from {obs.previous_release} (count {obs.kexec_count})"
    send(
        f"khod recorded boot {obs.boot_id}: {obs.release}, {what}",
        MESSAGE_IDS["boot-recorded"],
        6,
        **f,
    )
    if obs.kind == "kexec-rejected":
        send(
            f"kexec handover rejected: {obs.kind_reason}",
            MESSAGE_IDS["kexec-rejected"],
            4,
            KHOD_REASON=obs.kind_reason or "",
            **f,
        )
    for e in new_events:
        send(
            e.message,
            event_message_id(e),
            PRIORITY[e.severity],
            KHOD_EVENT=e.kind,
            KHOD_SOURCE=e.source,
            **f,
        )


def journal_pstore(
    boot: Boot,
    records: Sequence[PstoreRecord],
    saved: frozenset[str],
) -> None:
    """One entry per pstore record new to the store, once: systemd-pstore's archive
    keeps a record for days, and found again at the next boot it is not new. ``boot``:
    the observation an ingest saved, or the stored boot a rescan added records to."""
    f = journal_fields_for_boot(boot)
    done: set[str] = set()
    for r in records:
        if r.sha256 not in saved or r.sha256 in done:
            continue
        done.add(r.sha256)
        crash = is_crash(r.reason)
        what = f"{r.reason}#{r.count}" if r.reason else r.type
        send(
            f"pstore record {r.name} ({what}) from {r.release or 'the previous kernel'}",
            MESSAGE_IDS["pstore-crash" if crash else "pstore-record"],
            3 if crash else 6,
            KHOD_PSTORE_NAME=r.name,
            KHOD_PSTORE_REASON=r.reason or "",
            KHOD_PSTORE_BACKEND=r.backend,
            **f,
        )
