"""Run a real KHO kernel in QEMU with khod inside, and read back what happened.

The guest sees the host's ``/`` read-only (so this checkout, its venv and the host's
kexec-tools) and a writable per-run share holding the plan, the store and the outputs.
Under TCG (KVM does not work on this kind of host); ``KHOD_E2E_ACCEL=kvm`` elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.vm.kernel import CACHE

HERE = Path(__file__).resolve().parent
# loglevel=7: KHO's pr_info lines ("KHO: exec from: ...") reach the serial console,
# the harness's independent record of what the kernel said. nokaslr: reserve_mem is best
# effort; with KASLR the cold boot after a panic found the "oops" region 22 MiB lower
# (0x7db00000, the kernel image where the region had been) than the boots before it
# (0x7f100000, kept there across KHO kexecs), and the panic's dump was not there.
BASE_APPEND = (
    "console=ttyS0 loglevel=7 panic=-1 nokaslr kho_scratch=16M,64M,16M "
    "reserve_mem=1M:4096:oops ramoops.mem_name=oops ramoops.record_size=65536 "
    "ramoops.console_size=65536 ramoops.pmsg_size=65536 ramoops.max_reason=4"
)


TABLES: list[str] = []  # per-boot tables of this session's runs (tests/vm/conftest.py)


@dataclass
class Boot:
    step: str
    boot_id: str
    release: str
    exec_from: tuple[str, int] | None  # the kernel's own "KHO: exec from: R (count N)"
    kho_lines: list[str] = field(default_factory=list)


@dataclass
class Run:
    name: str
    dir: Path
    share: Path
    serial: str
    rc: int  # qemu's exit status; -1 over the time limit, -2 stalled
    seconds: float
    boots: list[Boot]
    stalled_before: Path | None = None  # the run dir of a first attempt that stalled

    @property
    def db(self) -> Path:
        return self.share / "khod.db"

    def out(self, step: str) -> Path:
        return self.share / "out" / step

    def file(self, step: str, pattern: str) -> Path:
        (p,) = sorted(self.out(step).glob(pattern))
        return p


def initramfs(dest: Path) -> Path:
    root = dest / "initramfs"
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "host", "rw", "newroot"):
        (root / d).mkdir(parents=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, root / "bin" / "busybox")
    shutil.copy(HERE / "init.sh", root / "init")
    (root / "init").chmod(0o755)
    out = dest / "initramfs.cpio.gz"
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=root,
        input=files,
        capture_output=True,
        check=True,
    ).stdout
    out.write_bytes(
        subprocess.run(["gzip", "-9"], input=cpio, capture_output=True, check=True).stdout
    )
    return out


def parse_serial(serial: str) -> list[Boot]:
    boots: list[Boot] = []
    exec_from: tuple[str, int] | None = None
    kho: list[str] = []
    for line in serial.splitlines():
        if "] Linux version " in line:
            exec_from, kho = None, []
        m = re.search(r"\] (KHO: .*)$", line)
        if m:
            kho.append(m.group(1).strip())
            e = re.search(r"KHO: exec from: (\S+) \(count (\d+)\)", line)
            if e:
                exec_from = (e.group(1), int(e.group(2)))
        m = re.search(r"KHODE2E: boot step=(\S+) boot_id=(\S+) release=(\S+)", line)
        if m:
            boots.append(Boot(m.group(1), m.group(2), m.group(3), exec_from, kho))
    return boots


STALL_SECONDS = 240.0  # no serial output for this long: the guest is stuck


def run(
    name: str,
    kernel: Path,
    steps: dict[str, list[list[str]]],
    *,
    append: str,
    reset_on_panic: bool = False,
    timeout: float = 1500,
) -> Run:
    """Boot ``kernel`` cold with ``append`` (step 0) and let the guest follow ``steps``.

    A guest whose serial console stays silent for STALL_SECONDS is stopped and the
    run starts over once (TCG on a busy 2-core host has stalled a guest kernel at
    boot, before any of khod ran); the run says so in its table."""
    first = _run_once(
        name, kernel, steps, append=append, reset_on_panic=reset_on_panic, timeout=timeout
    )
    if first.rc != -2:
        return first
    again = _run_once(
        name, kernel, steps, append=append, reset_on_panic=reset_on_panic, timeout=timeout
    )
    again.stalled_before = first.dir
    return again


def qemu_machine(serial: Path, kernel: Path) -> list[str]:
    """The guest machine every VM test boots: q35, 2 vCPUs, 2 GiB, no display, the
    serial console to ``serial``, ``kernel`` (KHOD_E2E_ACCEL=kvm where there is one)."""
    accel = os.environ.get("KHOD_E2E_ACCEL", "tcg")
    cpu = "host,-arch-capabilities" if accel == "kvm" else "max"
    if accel == "tcg":
        # One host thread for both vCPUs. With multi-threaded TCG (QEMU 7.2 here) the
        # guest kernel faulted on its own a second into boot, at code it patches at
        # run time (a 5-byte NOP in enqueue_task_fair, an int3 in set_next_task_fair),
        # and once stalled; single-threaded TCG keeps the two vCPUs the scenarios boot
        # with and runs them in turn on one thread, where those races cannot happen.
        accel = "tcg,thread=single"
    return [
        "qemu-system-x86_64",
        "-machine",
        "q35",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-smp",
        "2",
        "-m",
        "2G",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{serial}",
        "-kernel",
        str(kernel),
    ]


def _run_once(
    name: str,
    kernel: Path,
    steps: dict[str, list[list[str]]],
    *,
    append: str,
    reset_on_panic: bool,
    timeout: float,
) -> Run:
    d = CACHE / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    share = d / "share"
    (share / "out").mkdir(parents=True)
    initrd = initramfs(d)
    bindir = str(Path(sys.executable).parent)
    (share / "plan.json").write_text(
        json.dumps({"steps": steps, "bindir": bindir, "initrd": str(initrd), "append": append})
    )
    shutil.copy(HERE / "guest.py", share / "guest.py")
    (share / "python").write_text(os.path.realpath(sys.executable))
    argv = [
        *qemu_machine(d / "serial.log", kernel),
        "-initrd",
        str(initrd),
        "-append",
        f"{append} khod.step=0",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={share},mount_tag=khshare,security_model=none,multidevs=remap",
    ]
    if not reset_on_panic:
        argv.append("-no-reboot")
    t0 = time.monotonic()
    log = d / "serial.log"
    with open(d / "qemu.stderr", "wb") as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        size, since = -1, time.monotonic()
        rc: int | None = None
        while rc is None:
            try:
                rc = p.wait(2)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            cur = log.stat().st_size if log.exists() else 0
            if cur != size:
                size, since = cur, now
            if now - t0 > timeout:
                rc = -1  # overall time limit
            elif now - since > STALL_SECONDS:
                rc = -2  # stalled
            if rc is not None:
                p.kill()
                p.wait()
    seconds = time.monotonic() - t0
    serial = (d / "serial.log").read_text(errors="replace") if (d / "serial.log").exists() else ""
    return Run(name, d, share, serial, rc, seconds, parse_serial(serial))


def records(r: Run) -> dict[str, dict[str, Any]]:
    """khod's record of each boot (by boot_id), read from the guest's store."""
    return records_at(r.db)


def records_at(db: Path) -> dict[str, dict[str, Any]]:
    """The boots of the SQLite store at ``db`` by boot_id, each with its verdict."""
    import sqlite3

    out: dict[str, dict[str, Any]] = {}
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        for row in conn.execute("SELECT * FROM boots"):
            out[row["boot_id"]] = dict(row)
        for row in conn.execute(
            "SELECT a.*, b.boot_id AS landed_in FROM kexec_attempts a "
            "LEFT JOIN boots b ON b.id = a.verdict_boot"
        ):
            if row["landed_in"]:
                out[row["landed_in"]]["verdict"] = row["verdict"]
    return out


def table(r: Run) -> str:
    """The per-boot table: the kernel's own line next to what khod recorded."""
    recs = records(r) if r.db.exists() else {}
    lines = [
        f"== {r.name}: {len(r.boots)} boots in {r.seconds:.0f}s (qemu rc {r.rc})"
        + (f"; a first attempt stalled ({r.stalled_before})" if r.stalled_before else ""),
        f"{'step':<6} {'boot':<8} {'release':<20} {'kernel: KHO: exec from':<32} "
        f"{'khod: kind':<15} {'previous_release':<20} {'count':<5} verdict",
    ]
    for b in r.boots:
        rec = recs.get(b.boot_id, {})
        said = f"{b.exec_from[0]} (count {b.exec_from[1]})" if b.exec_from else "-"
        lines.append(
            f"{b.step:<6} {b.boot_id[:8]:<8} {b.release:<20} {said:<32} "
            f"{rec.get('kind', 'NOT RECORDED'):<15} "
            f"{rec.get('previous_release') or '-':<20} "
            f"{rec.get('kexec_count', '-')!s:<5} {rec.get('verdict') or '-'}"
        )
    return "\n".join(lines)
