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
from collections.abc import Callable
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
# no_timer_check: the kernel's boot-time check that the 8254 timer ticks through the
# IO-APIC (timer_irq_works) counts ticks over a busy-wait; a TCG guest on a loaded host
# (two guests at once and other work, load 16 on 2 cores) got too few and the kernel
# panicked 13 ms into boot ("IO-APIC + timer doesn't work!"). KVM guests skip it too.
BASE_APPEND = (
    "console=ttyS0 loglevel=7 panic=-1 nokaslr no_timer_check kho_scratch=16M,64M,16M "
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

    def digest(self) -> str:
        return f"{self.name}: qemu rc {self.rc} after {self.seconds:.0f}s\n" + digest(self.serial)


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


KERNEL_START = "] Linux version "  # the first line each kernel prints


def split_kernels(serial: str) -> tuple[list[str], list[list[str]]]:
    """A serial console's lines: those before the first kernel started, and one list
    per kernel started (in order), each opening with its ``Linux version`` banner."""
    before: list[str] = []
    runs: list[list[str]] = []
    for line in serial.splitlines():
        if KERNEL_START in line:
            runs.append([])
        (runs[-1] if runs else before).append(line)
    return before, runs


def parse_serial(serial: str) -> list[Boot]:
    boots: list[Boot] = []
    before, runs = split_kernels(serial)
    for run in [before, *runs]:
        exec_from: tuple[str, int] | None = None
        kho: list[str] = []
        for line in run:
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

# what a failed run's console says that matters: the kernel or PID 1 giving up, a kexec,
# a reset, the test's own per-boot lines
NOTABLE = re.compile(
    r"Kernel panic|Oops|BUG:|RIP:|general protection|soft lockup|hung_task|blocked for more"
    r"|Freezing execution|Failed to start up manager|Failed to fork off|reboot: |Rebooting"
    r"|kexec|KHO: exec from|khod-e2e: (boot|host)|KHODE2E: boot|Power down|Restarting system"
)


def digest(serial: str, *, tail: int = 12, limit: int = 12000) -> str:
    """A failed run's serial console, short: for each kernel started (its clock and
    release), the lines that name a panic, an oops, a kexec, a reset or PID 1 giving up,
    and its last ``tail`` lines; the whole of it at most ``limit`` characters."""
    before, runs = split_kernels(serial)
    if not runs:
        return "no kernel started; the console's end:\n" + "\n".join(before[-tail:])
    out = [f"{len(runs)} kernel(s) started; before the first: {len(before)} line(s)"]
    for k, run in enumerate(runs):
        out.append(f"-- kernel {k}: {run[0].strip()[:160]}")
        notable = [line for line in run[1 : max(1, len(run) - tail)] if NOTABLE.search(line)]
        out += [line.rstrip()[:240] for line in notable[-40:]]
        out.append(f"   (last {min(tail, len(run))} lines of kernel {k})")
        out += [line.rstrip()[:240] for line in run[max(1, len(run) - tail) :]]
    text = "\n".join(out)
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


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


TB_SIZE = 128  # MiB of QEMU's translation cache (qemu_machine)


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
        #
        # A translation cache of TB_SIZE MiB, not QEMU's 1 GiB: a kexec does not reset
        # the machine, so the code QEMU translated for the kernel and processes before
        # it stays cached, and the next kernel's every store to a page that held such
        # code takes QEMU's slow path, until a cache flush, which 1 GiB never needs.
        # Measured on the systemd guest (cold boot, khoctl kexec, next boot): with the
        # default the kexec'd boot reached sysinit.target 67-101 s after PID 1 started
        # (cold: 22-27 s), its generators took 25-59 s (systemd kills them at 90 s: on
        # CI, PID 1 froze that way) and the kernel's system time was 4x; with 128 MiB,
        # 24.5 s and 2.9 s, the whole run 161 s instead of 283-335 s. 32 MiB flushed
        # too often (40 s), 64 and 256 did as well as 128.
        accel = f"tcg,thread=single,tb-size={TB_SIZE}"
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
        rc = watch(p, log, t0=t0, timeout=timeout, stall=STALL_SECONDS)
    seconds = time.monotonic() - t0
    serial = (d / "serial.log").read_text(errors="replace") if (d / "serial.log").exists() else ""
    return Run(name, d, share, serial, rc, seconds, parse_serial(serial))


def watch(
    p: subprocess.Popen[bytes],
    log: Path,
    *,
    t0: float,
    timeout: float,
    stall: float,
    on_output: Callable[[str], bool] | None = None,
) -> int:
    """Wait for qemu ``p``: its exit status, or -1 once ``timeout`` seconds have passed
    since ``t0``, or -2 once the serial ``log`` has not grown for ``stall`` seconds (then
    qemu is killed). ``on_output`` gets the whole log each time it grew; its True means
    the host acted on it, and the time that took is not the guest's stall."""
    size, since = -1, time.monotonic()
    while True:
        try:
            return p.wait(1)
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        cur = log.stat().st_size if log.exists() else 0
        if cur != size:
            size, since = cur, now
            if on_output is not None and on_output(log.read_text(errors="replace")):
                since = time.monotonic()
        if now - t0 > timeout or now - since > stall:
            p.kill()
            p.wait()
            return -1 if now - t0 > timeout else -2


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
        f"{'khod: kind':<17} {'previous_release':<20} {'count':<5} verdict",
    ]
    for b in r.boots:
        rec = recs.get(b.boot_id, {})
        said = f"{b.exec_from[0]} (count {b.exec_from[1]})" if b.exec_from else "-"
        lines.append(
            f"{b.step:<6} {b.boot_id[:8]:<8} {b.release:<20} {said:<32} "
            f"{rec.get('kind', 'NOT RECORDED'):<17} "
            f"{rec.get('previous_release') or '-':<20} "
            f"{rec.get('kexec_count', '-')!s:<5} {rec.get('verdict') or '-'}"
        )
    return "\n".join(lines)
