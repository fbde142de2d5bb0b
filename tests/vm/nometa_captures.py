"""Turn a run of tests/vm/test_e2e_nometa.py into fixture sysroots: tests/data/nometa-chain/.

    python -m tests.vm.nometa_captures [RUN_DIR]   # default: the newest nometa run

Reads ``RUN_DIR/share`` (the plan, each boot's ``out/<step>/root`` written by the guest's
``capture`` action, the store) and ``RUN_DIR/serial.log``; writes, per step, the capture
byte for byte plus ``etc/machine-id`` (one fixed id: one machine) and
``PSTORE-MTIMES.txt`` (git keeps no mtimes); a ``README.txt`` naming the kernels, the
command lines, what each kernel logged and what khod recorded in the guest; the serial
log; ``SHA256SUMS``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.vm import harness
from tests.vm.kernel import CACHE, FRAGMENT

REPO = Path(__file__).resolve().parents[2]
DEST = REPO / "tests" / "data" / "nometa-chain"
LOG_LINES = re.compile(r"KHO|kexec|Kernel command line|khod-e2e")
MACHINE_ID = hashlib.md5(b"khod-nometa-chain").hexdigest()


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


def entered_by(step: str, steps: dict[str, list[list[str]]]) -> str:
    if step == "0":
        return "cold boot (QEMU -kernel)"
    for prev, actions in steps.items():
        for a in actions:
            if a[0] in ("kexec", "kexec-plain") and a[2] == step:
                how = "khoctl kexec --now" if a[0] == "kexec" else "kexec -s -l + kexec -e"
                flags = " " + " ".join(a[3:]) if a[3:] else ""
                return f"{how}{flags} from step {prev} ({Path(a[1]).name})"
    return "?"


def describe(
    step: str, root: Path, steps: dict[str, list[list[str]]], rec: dict[str, object]
) -> list[str]:
    lines = kernel_lines((root / "dev/kmsg").read_bytes())
    exec_from = [ln for ln in lines if "KHO: exec from" in ln]
    kho = root / "sys/kernel/debug/kho"
    subtrees = {
        d: sorted(p.name for p in (kho / d / "sub_fdts").glob("*")) or ["(none)"]
        for d in ("in", "out")
        if (kho / d).is_dir()
    }
    loader = int((root / "proc/sys/kernel/bootloader_type").read_text())
    pstore = sorted(p.name for p in (root / "sys/fs/pstore").glob("*"))
    return [
        f"== step{step}",
        f"  kernel:          {(root / 'proc/sys/kernel/osrelease').read_text().strip()}"
        f"   (entered by: {entered_by(step, steps)})",
        f"  command line:    {(root / 'proc/cmdline').read_text().strip()}",
        f"  boot_id:         {(root / 'proc/sys/kernel/random/boot_id').read_text().strip()}",
        f"  bootloader_type: {loader:#x}",
        "  KHO exec from:   "
        + (exec_from[0] if exec_from else '(no "KHO: exec from" line in this boot)'),
        *[f"  kho {d}/sub_fdts: {', '.join(names)}" for d, names in subtrees.items()],
        f"  pstore files:    {', '.join(pstore) or '(none)'}",
        "  khod recorded in the guest: "
        + ", ".join(
            f"{k} {rec.get(k)}"
            for k in ("kind", "previous_release", "kexec_count", "metadata_source", "verdict")
        ),
        "  kernel log lines (/dev/kmsg, dmesg form):",
        *[f"    {ln}" for ln in lines if LOG_LINES.search(ln)],
    ]


def make(run: Path) -> Path:
    share = run / "share"
    plan = json.loads((share / "plan.json").read_text())
    steps: dict[str, list[list[str]]] = plan["steps"]
    recs = harness.records_at(share / "khod.db")
    kdir = Path(steps["0"][-1][1]).parent
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    shutil.rmtree(DEST, ignore_errors=True)
    DEST.mkdir(parents=True)
    readme = [
        "khod sysroots: a KHO kernel without kexec-metadata (issue 27)",
        "Made by tests/vm/test_e2e_nometa.py (its guest's 'capture' action, tests/vm/guest.py)",
        "and `python -m tests.vm.nometa_captures RUN_DIR`. Each step<N>/ is shaped like / of",
        "that boot (use as --sysroot); nothing was written by hand (etc/machine-id is one",
        "fixed id: one machine; PSTORE-MTIMES.txt holds the pstore record times).",
        "",
        f"kernel source:  Debian {(kdir / 'source').read_text().strip()}",
        f"config:         x86_64_defconfig + kvm_guest.config + tests/vm/{FRAGMENT.name}",
        "kernels:        a, b: stock; nometa: kho_init's kho_kexec_metadata_init() call left",
        "                out (tests/vm/kernel.py): no kexec-metadata subtree read or handed on",
        "                (the stand-in for a 7.0 kernel); KHO ABI kho-v4 for all three",
        *[
            f"                {t}: {(kdir / f'release-{t}').read_text().strip()}"
            for t in ("a", "b", "nometa")
        ],
        f"emulator:       {qemu}",
        "                -machine q35 -accel tcg,thread=single,tb-size=128 -cpu max -smp 2 -m 2G",
        f"command line:   {plan['append']} khod.step=N",
        f"etc/machine-id: {MACHINE_ID}",
        f"run:            {run.name}",
        "",
    ]
    sums = []
    for step in sorted(steps):
        src = share / "out" / step
        dest = DEST / f"step{step}"
        shutil.copytree(src / "root", dest)
        (dest / "etc").mkdir(exist_ok=True)
        (dest / "etc" / "machine-id").write_text(MACHINE_ID + "\n")
        mtimes = (src / "pstore-mtimes.txt").read_text()
        if mtimes.strip():
            (dest / "PSTORE-MTIMES.txt").write_text(mtimes)
        boot_id = (dest / "proc/sys/kernel/random/boot_id").read_text().strip()
        readme += [*describe(step, dest, steps, recs.get(boot_id, {})), ""]
    (DEST / "README.txt").write_text("\n".join(readme))
    shutil.copy(run / "serial.log", DEST / "serial.log")
    for p in sorted(DEST.rglob("*")):
        if p.is_file():
            sums.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(DEST)}")
    (DEST / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return DEST


if __name__ == "__main__":
    runs = sorted((CACHE / "runs").glob("nometa-*"))
    print(make(Path(sys.argv[1]) if len(sys.argv) > 1 else runs[-1]))
