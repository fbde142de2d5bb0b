"""The generated fleet every fleet benchmark imports: N boots over H hosts, kexec chains
across a dozen releases, P pstore records and one kexec attempt per boot after a host's
first, one transition made crash-prone (``BAD``), written as a khod export."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from tests.builders import attempt_row, boot_row, export_header, export_line, pstore_row

PY = sys.executable
KHOCTL = str(Path(PY).parent / "khoctl")

RELEASES = [f"7.{minor}.{patch}-fleet" for minor in (1, 2, 3, 4) for patch in (0, 2, 4)]
BAD = ("7.3.2-fleet", "7.3.4-fleet")  # the crash-prone transition


def attempt_line(
    machine: str,
    uid: int,
    *,
    frm: str,
    prev: str,
    target: str,
    verdict: str,
    judged_by: str | None,
    t: int,
) -> str:
    row = attempt_row(
        machine,
        f"{uid:08x}-0000-4000-8000-{uid:012x}",
        from_boot=frm,
        prev=prev,
        target=target,
        verdict=verdict,
        verdict_boot=judged_by,
        created_at=float(t),
        target_image="/boot/vmlinuz-" + target,
        target_abi="kho-v4",
    )
    return export_line(row).rstrip("\n")


def generate(
    path: Path, n_boots: int, n_hosts: int, n_pstore: int, *, attempts_path: Path, seed: int = 7
) -> dict[str, Any]:
    """Write the export, and the attempts' export; return what was generated (for the
    checks below). Every boot after a host's first was aimed at by an attempt from the
    boot before: a kexec boot's landed; a cold boot's failed to land (or was rejected);
    the bad transition fails to land three times as often. 2% of boots logged kernel
    warnings (the bad transition's, 10%)."""
    rnd = random.Random(seed)
    n_attempts = 0
    att = attempts_path.open("w")
    att.write(export_line(export_header()))
    per_host = n_boots // n_hosts
    t0 = 1_780_000_000
    candidates: list[tuple[str, str, str, bool]] = []  # machine, describes, found_by, bad
    with path.open("w") as out:
        out.write(export_line(export_header()))
        for h in range(n_hosts):
            machine = f"{h:032x}"
            rel = rnd.choice(RELEASES)
            count = 0
            prev_boot = None
            prev_bad = False
            for i in range(per_host):
                boot_id = f"{h:08x}-0000-4000-8000-{i:012x}"
                idx = RELEASES.index(rel)
                target = RELEASES[min(len(RELEASES) - 1, max(0, idx + rnd.choice((-1, 0, 1, 1))))]
                fails = 0.3 if (rel, target) == BAD else 0.1
                booted = t0 + h * 7 + i * 86_400
                if i == 0 or rnd.random() < fails:
                    if i > 0:  # the attempt from the boot before did not land
                        verdict = "abi-mismatch" if rnd.random() < 0.2 else "cold-boot"
                        n_attempts += 1
                        line = attempt_line(
                            machine,
                            n_attempts,
                            frm=prev_boot or "",
                            prev=rel,
                            target=target,
                            verdict=verdict,
                            judged_by=boot_id,
                            t=booted - 60,
                        )
                        att.write(line + "\n")
                    prev, count = None, 0  # a cold boot
                else:
                    prev, count = rel, count + 1  # a kexec
                    rel = target
                    n_attempts += 1
                    line = attempt_line(
                        machine,
                        n_attempts,
                        frm=prev_boot or "",
                        prev=prev,
                        target=rel,
                        verdict="landed",
                        judged_by=boot_id,
                        t=booted - 60,
                    )
                    att.write(line + "\n")
                warned = rnd.random() < (0.1 if (prev, rel) == BAD else 0.02)
                kexec = [{"name": "kexec-metadata", "size": 73}]
                row = boot_row(
                    machine,
                    boot_id,
                    rel,
                    prev,
                    booted,
                    cmdline="BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro console=ttyS0 kho=on",
                    kexec_count=count,
                    subtrees=kexec if prev else [],
                    out_subtrees=kexec,
                    out_release=rel,
                    out_kexec_count=count,
                    scratch=[[4294967296, 100663296]],
                    warnings=rnd.randint(1, 5) if warned else 0,
                    ingested_at=float(booted + 9),
                    khod_version="bench",
                )
                out.write(export_line(row))
                if prev_boot is not None:
                    candidates.append((machine, prev_boot, boot_id, prev_bad))
                prev_boot = boot_id
                prev_bad = (prev, rel) == BAD
    # pstore records: found by a boot, describing the boot before it; the bad
    # transition's boots crash 20 times as often
    weights = [20.0 if bad else 1.0 for *_, bad in candidates]
    chosen = rnd.choices(range(len(candidates)), weights=weights, k=n_pstore * 2)
    seen: set[int] = set()
    picks = [c for c in chosen if not (c in seen or seen.add(c))][:n_pstore]  # type: ignore[func-returns-value]
    with path.open("a") as out:
        for j, c in enumerate(picks):
            machine, describes, found_by, _bad = candidates[c]
            reason = rnd.choice(("Panic", "Oops", "Shutdown", "Shutdown"))
            raw = f"{reason}#1 Part1\n<0>[ 1.0] record {j}\n".encode()
            row = pstore_row(
                machine,
                found_by,
                describes,
                reason,
                raw=raw,
                path="/sys/fs/pstore/dmesg-ramoops-0",
                name="dmesg-ramoops-0",
                backend="ramoops",
                record_id=0,
                dump_key=f"ramoops:dmesg:0:{j:016x}",
            )
            out.write(export_line(row))
    att.close()
    return {"boots": per_host * n_hosts, "pstore": len(picks), "attempts": n_attempts}
