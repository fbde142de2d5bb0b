"""Turn the arm64 capture runs into fixture sysroots: tests/data/arm64-<scenario>/<step>/.

    python tests/vm/arm64/mkfixtures.py chain nokho pstore

Reads ``$KHARM/runs/<scenario>/`` (made by run-chain.sh; KHARM defaults to
``~/.cache/khod-arm64``) and writes, per step, the guest's ``root/`` capture (the paths
khod reads, byte for byte) plus ``etc/machine-id`` (one id per scenario: one machine) and
``PSTORE-MTIMES.txt`` (git keeps no mtimes); per scenario a ``README.txt`` naming the
kernel, its config, every step's command line and the kernel's own log lines, the serial
log, and ``SHA256SUMS``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
KHARM = Path(os.environ.get("KHARM", Path.home() / ".cache" / "khod-arm64"))
LOG_LINES = re.compile(
    r"KHO|kexec|pstore|ramoops|reserve_mem|Kernel command line|Machine model|khlab-marker"
)
CHOSEN = ("linux,booted-from-kexec", "linux,kho-fdt", "linux,kho-scratch")


def version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "?"


def step_order(name: str) -> tuple[int, int]:
    m = re.fullmatch(r"step(\d+)(?:-boot(\d+))?", name)
    assert m, name
    return int(m[1]), int(m[2] or 1)


def entered_by(step: str, plan: dict[int, list[str]]) -> str:
    num, boot = step_order(step)
    if boot > 1:
        kernel = plan[0][2]
        return f"boot {boot} of step {num}: VM reset after a panic, QEMU booted {kernel} again"
    action, kernel = plan[num][1], plan[num][2]
    return f"{action} {kernel}" if action != "cold" else f"cold boot of {kernel} (QEMU -kernel)"


def kernel_lines(kmsg: bytes) -> list[str]:
    """The kernel's own records of a /dev/kmsg capture in dmesg's form: [sec.usec] text."""
    out = []
    for rec in kmsg.decode(errors="replace").splitlines():
        if rec.startswith(" ") or ";" not in rec:
            continue  # a continuation line (" KEY=value")
        head, text = rec.split(";", 1)
        pri, _seq, usec = (int(f) for f in head.split(",")[:3])
        if pri >> 3 == 0:  # facility 0: the kernel, not user space writing to /dev/kmsg
            out.append(f"[{usec // 1_000_000:5d}.{usec % 1_000_000:06d}] {text}")
    return out


def describe(step: str, src: Path, plan: dict[int, list[str]]) -> list[str]:
    root = src / "root"
    chosen = root / "proc/device-tree/chosen"
    dmesg = kernel_lines((root / "dev/kmsg").read_bytes())
    exec_from = [ln for ln in dmesg if "KHO: exec from" in ln]
    exec_rec = [
        ln
        for ln in (root / "dev/kmsg").read_bytes().decode(errors="replace").splitlines()
        if "KHO: exec from" in ln
    ]
    pstore = sorted(p.name for p in (root / "sys/fs/pstore").glob("*"))
    kho = root / "sys/kernel/debug/kho"
    lines = [
        f"== {step}",
        f"  kernel:        {(src / 'uname-r.txt').read_text().strip()}"
        f"   (entered by: {entered_by(step, plan)})",
        f"  command line:  {(root / 'proc/cmdline').read_text().strip()}",
        f"  boot_id:       {(root / 'proc/sys/kernel/random/boot_id').read_text().strip()}",
    ]
    if exec_from:
        rec = f"  (kmsg record: {exec_rec[0]})" if exec_rec else ""
        lines.append(f"  KHO exec from: {exec_from[0].strip()}{rec}")
    else:
        lines.append('  KHO exec from: (no "KHO: exec from" line in this boot)')
    present = [p for p in CHOSEN if (chosen / p).exists()]
    none_of = f"(none of {', '.join(CHOSEN)})"
    no_kho = "(none: no /sys/kernel/debug/kho)"
    lines.append(f"  /chosen:       {', '.join(present) if present else none_of}")
    lines.append(f"  pstore files:  {', '.join(pstore) if pstore else '(none)'}")
    lines.append(f"  kho tree:      {'sys/kernel/debug/kho/' if kho.is_dir() else no_kho}")
    lines.append("  kernel log lines (/dev/kmsg, dmesg form):")
    lines += [f"    {ln}" for ln in dmesg if LOG_LINES.search(ln) and "KHO: exec from" not in ln]
    return lines


def make(scn: str) -> Path:
    run = KHARM / "runs" / scn
    out = run / "share" / "out"
    dest = REPO / "tests" / "data" / f"arm64-{scn}"
    plan_text = (run / "share" / "plan").read_text()
    plan = {int(ln.split("|")[0]): ln.split("|") for ln in plan_text.splitlines() if ln}
    steps = sorted((p.name for p in out.iterdir() if p.is_dir()), key=step_order)
    machine_id = hashlib.md5(f"khod-arm64-{scn}".encode()).hexdigest()
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    src_deb = (KHARM / "out" / "source").read_text().strip()
    readme = [
        f"khod arm64 sysroots for scenario '{scn}'",
        "Made by `make capture-arm64` (tests/vm/arm64/: build-kernel.sh, run-chain.sh,",
        "mkfixtures.py; docs/arm64-captures.md).",
        "Each <step>/ is shaped like / of that boot (use as --sysroot). Captured by",
        "tests/vm/arm64/guest/stage.sh in a real Linux 7.3.4 arm64 guest under QEMU TCG;",
        "nothing was written by hand (etc/machine-id is one fixed id per scenario: one machine;",
        "PSTORE-MTIMES.txt holds the pstore record times, which git does not keep).",
        "",
        f"kernel source:  Debian {src_deb}",
        f"compiler:       {version(['aarch64-linux-gnu-gcc', '--version'])}",
        "config:         make ARCH=arm64 allnoconfig + tests/vm/arm64/kho-arm64.config,",
        "                LOCALVERSION -khod-arm64-a / -khod-arm64-b (Image-a, Image-b); the full",
        "                config of each boot is its proc/config.gz",
        f"emulator:       {version(['qemu-system-aarch64', '--version'])}",
        "                -M virt -accel tcg,thread=single,tb-size=128",
        "                -cpu max,pauth-impdef=on -smp 2 -m 2G",
        "kexec:          kexec_file_load(2) + reboot(LINUX_REBOOT_CMD_KEXEC) (guest/khhelper.c)",
        f"etc/machine-id: {machine_id}",
        "",
        "plan (STEP|ACTION|KERNEL|APPEND; /kernels is the host's $KHARM/out over 9p):",
        *[f"  {ln}" for ln in plan_text.splitlines()],
        "",
    ]
    sums = []
    for step in steps:
        src = out / step
        shutil.copytree(src / "root", dest / step, symlinks=False)
        (dest / step / "etc").mkdir(exist_ok=True)
        (dest / step / "etc" / "machine-id").write_text(machine_id + "\n")
        mtimes = src / "pstore-mtimes.txt"
        if mtimes.exists() and mtimes.read_text().strip():
            lines = sorted(mtimes.read_text().splitlines(), key=lambda ln: ln.split()[-1])
            (dest / step / "PSTORE-MTIMES.txt").write_text("\n".join(lines) + "\n")
        readme += [*describe(step, src, plan), ""]
    (dest / "README.txt").write_text("\n".join(readme))
    shutil.copy(run / "serial.log", dest / "serial.log")
    for p in sorted(dest.rglob("*")):
        if p.is_file() and p.name != "SHA256SUMS":
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            sums.append(f"{digest}  {p.relative_to(dest)}")
    (dest / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return dest


if __name__ == "__main__":
    for name in sys.argv[1:] or ["chain", "nokho", "pstore"]:
        print(make(name))
