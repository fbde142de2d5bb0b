"""The JSON contract (docs/commands.md) and human tables for boots."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from khod.cli.output import epoch, when
from khod.parse.compat import split_compat
from khod.parse.proc import loaded_by_kexec
from khod.store.boots import BootRecord


def iso(ts: int | float | None) -> str | None:
    """The time in UTC; None (unknown) when there is none, or none a calendar can show
    (a wrapped clock, a row that came in around import's checks)."""
    if ts is None:
        return None
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def boot_json(b: BootRecord, *, history: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {
        "boot_id": b.boot_id,
        "machine_id": b.machine_id,
        "release": b.release,
        "kind": b.kind,
        "kind_reason": b.kind_reason,
        "previous_release": b.previous_release,
        "kexec_count": b.kexec_count,
        # where previous_release and kexec_count come from: "kho" (the handed-over blob),
        # "kmsg" (the kernel's log line), "attempt" (khod's own kexec record), or None
        "metadata_source": b.metadata_source,
        "kho": {
            "enabled": b.kho_enabled,
            "abi": b.kho_abi,
            "abi_base": split_compat(b.kho_abi).base if b.kho_abi else None,
            "abi_tags": list(split_compat(b.kho_abi).tags) if b.kho_abi else [],
            "subtrees": [t.as_json() for t in b.subtrees],
        },
        "luo": {
            "compatible": b.luo_compatible,
            "liveupdate_num": b.liveupdate_num,
            "sessions": b.luo_sessions,
        },
        "bootloader_type": b.bootloader_type,
    }
    if history:
        d["booted_at"] = iso(b.booted_at)
    return d


def chain_json(chain: Sequence[BootRecord]) -> list[dict[str, Any]]:
    """Each boot with ``link``: ``start``, ``ok`` (previous_release and count follow on
    from the boot before), or ``gap`` (a boot in between is missing from the store)."""
    out = []
    prev: BootRecord | None = None
    for b in chain:
        d = boot_json(b, history=True)
        if prev is None:
            d["link"] = "start"
        elif (
            b.previous_release == prev.release
            and b.kexec_count is not None
            and (prev.kexec_count is not None and b.kexec_count == prev.kexec_count + 1)
        ):
            d["link"] = "ok"
        else:
            d["link"] = "gap"
        out.append(d)
        prev = b
    return out


def _cell(v: Any) -> str:
    return "-" if v is None else str(v)


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *, legend: bool = True
) -> str:
    """A plain aligned table: columns are (header, key) with dotted keys into the dicts;
    ``legend``: the header line first."""

    def get(d: dict[str, Any], key: str) -> Any:
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
        return d

    cells = [[h for h, _ in columns]] + [[_cell(get(r, k)) for _, k in columns] for r in rows]
    if not legend:
        cells = cells[1:]
        if not cells:
            return ""
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


BOOT_COLUMNS = (
    ("BOOTED", "booted"),  # booted_at for a person (khod.cli.output.when)
    ("BOOT", "boot_id"),
    ("RELEASE", "release"),
    ("KIND", "kind"),
    ("FROM", "previous_release"),
    ("COUNT", "kexec_count"),
    ("ABI", "kho.abi"),
    ("LIVEUPDATE", "luo.liveupdate_num"),
)


def _loader(v: int | None) -> str:
    if v is None:
        return "-"
    return f"0x{v:02x}" + (" (kexec)" if loaded_by_kexec(v) else "")


def _luo(luo: dict[str, Any]) -> str:
    if luo["compatible"] is None and luo["liveupdate_num"] is None:
        return "-"
    sessions = {True: ", sessions handed over", False: ", no sessions", None: ""}
    return (
        f"{_cell(luo['compatible'])}, liveupdate number {_cell(luo['liveupdate_num'])}"
        + sessions[luo["sessions"]]
    )


def _whose(source: str | None) -> str:
    """Where a chain khod derived itself came from: not the kernel's word."""
    if source == "attempt":
        return " (khod's kexec record, not the kernel's)"
    if source == "derived":
        return " (the boot khod recorded before, the journal's: not the kernel's)"
    return ""


def status_text(d: dict[str, Any]) -> str:
    kho = d["kho"]
    subtrees = (
        ", ".join(
            f"{s['name']} ({s['size']} B)" if s.get("size") is not None else s["name"]
            for s in kho["subtrees"]
        )
        or "-"
    )
    lines = [
        f"boot:              {d['boot_id']}",
        f"release:           {d['release']}",
        f"kind:              {d['kind']}" + (f" ({d['kind_reason']})" if d["kind_reason"] else ""),
        f"previous release:  {_cell(d['previous_release'])}" + _whose(d["metadata_source"]),
        f"kexec count:       {_cell(d['kexec_count'])}",
        f"KHO:               {'enabled' if kho['enabled'] else 'disabled'}, "
        f"ABI {_cell(kho['abi'])}",
        f"incoming subtrees: {subtrees}",
        f"live update (LUO): {_luo(d['luo'])}",
        f"loaded by:         {_loader(d['bootloader_type'])}",
    ]
    if "recorded" in d:
        lines.append(f"recorded:          {'yes' if d['recorded'] else 'no'}")
    return "\n".join(lines)


def dumps_json(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records grouped into dumps (the parts of one EFI/ERST dump joined, oldest part
    first); records come from load_pstore, already in that order."""
    out: list[dict[str, Any]] = []
    by_key: dict[str, dict[str, Any]] = {}
    for r in records:
        d = by_key.get(r["dump_key"])
        if d is None:
            d = {
                "type": r["type"],
                "backend": r["backend"],
                "reason": r["reason"],
                "count": r["count"],
                "record_time": None,
                "release": r["release"],
                "records": [],
                "text": "",
                "complete": True,
            }
            by_key[r["dump_key"]] = d
            out.append(d)
        d["records"].append(
            {
                "name": r["name"],
                "location": r["location"],
                "path": r["path"],
                "part": r["part"],
                "size": r["size"],
                "sha256": r["sha256"],
                "compressed": r["compressed"],
                "inflate_status": r["inflate_status"],
            }
        )
        if iso(r["record_time"]) is not None:  # a time that cannot be shown is unknown
            d["record_time"] = max(d["record_time"] or 0, r["record_time"])
        if r["text"] is None:
            d["complete"] = False
        else:
            d["text"] += r["text"]
        d["release"] = d["release"] or r["release"]
    for d in out:
        d["record_time"] = iso(d["record_time"])
    return out


def dumps_text(dumps: Sequence[dict[str, Any]], utc: bool = True) -> str:
    chunks = []
    for d in dumps:
        names = ", ".join(r["name"] for r in d["records"])
        what = d["type"] + (f" {d['reason']}#{d['count']}" if d["reason"] else "")
        head = f"== {what} from {d['backend']} ({names})"
        if d["record_time"]:
            head += f", written {when(epoch(d['record_time']), utc)}"
        if d["release"]:
            head += f" by {d['release']}"
        chunks.append(head)
        text = d["text"].rstrip("\n")
        if not d["complete"]:
            size = sum(r["size"] for r in d["records"])
            text += (
                f"\n(a compressed part could not be decoded here; its {size} raw bytes "
                "are kept in the store)"
            )
        chunks.append(text)
    return "\n".join(chunks)


def event_json(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": iso(e["created_at"]),
        "kind": e["kind"],
        "severity": e["severity"],
        "source": e["source"],
        "origin": e["origin"],
        "message": e["message"],
    }


def show_json(
    b: BootRecord,
    events: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    verdict: str | None,
) -> dict[str, Any]:
    """Everything recorded about one boot (``khoctl show``): the boot as history shows
    it, what the store adds, its events, and a summary of its pstore dumps."""
    d = boot_json(b, history=True)
    d.update(
        {
            "cmdline": b.cmdline,
            "warnings": b.warnings,
            "memory_map_handed": b.memory_map_handed,
            "outgoing": {
                "release": b.out_release,
                "kexec_count": b.out_kexec_count,
                "subtrees": [t.as_json() for t in b.out_subtrees],
            },
            "ingested_at": iso(b.ingested_at),
            "khod_version": b.khod_version,
            "verdict": verdict,
            "events": [event_json(e) for e in events],
            "dumps": [
                {k: v for k, v in dump.items() if k != "text"} for dump in dumps_json(records)
            ],
        }
    )
    return d


def show_text(d: dict[str, Any], b: BootRecord, events: Sequence[dict[str, Any]], utc: bool) -> str:
    lines = [
        status_text(d),
        f"machine:           {d['machine_id']}",
        f"booted:            {_cell(when(b.booted_at, utc))}",
        f"command line:      {_cell(d['cmdline'])}",
        f"kernel warnings:   {_cell(d['warnings'])}",
        f"kexec verdict:     {_cell(d['verdict'])}",
        f"recorded:          {_cell(when(b.ingested_at, utc))} by khod {d['khod_version']}",
    ]
    dumps = d["dumps"]
    lines.append(
        f"pstore:            {len(dumps)} dump{'s' if len(dumps) != 1 else ''}"
        + (f" (khoctl dmesg {d['boot_id']})" if dumps else "")
    )
    lines.append(f"events:            {len(events) or '-'}")
    for e in events:
        lines.append(
            f"  {_cell(when(e['created_at'], utc))}  {e['severity']:<7} {e['kind']}: {e['message']}"
        )
    return "\n".join(lines)
