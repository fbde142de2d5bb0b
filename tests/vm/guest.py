"""PID 1 of the e2e guest: at every boot, run this step's actions from /khshare/plan.json.

Step ``N`` comes from ``khod.step=N`` on the kernel command line; a step booted again
(a VM reset after a panic boots the first kernel again) is ``N#2``. Actions:

    ["ingest"]                          khod --once
    ["daemon"]                          khod (resident), scrape /metrics, SIGTERM
    ["check", KERNEL]                   khoctl check --json
    ["kexec", KERNEL, STEP, *flags]     khoctl kexec --now, into step STEP
    ["kexec-plain", KERNEL, STEP]       kexec -s -l, kexec -e (khod not told)
    ["capture"]                         this boot's files khod reads, into <out>/root
    ["pmsg", TEXT]                      a line into pstore's pmsg buffer
    ["panic"]                           sysrq-c

Output of every command goes to /khshare/out/<step>/; one line per boot to the console:
``KHODE2E: boot step=N boot_id=... release=...``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SHARE = "/khshare"
# what "capture" copies (read to EOF: KHO's debugfs files say size 0), shaped like / for
# khod's --sysroot; /dev/kmsg and the pstore record times are taken apart
CAPTURE = (
    "/proc/cmdline",
    "/proc/version",
    "/proc/stat",
    "/proc/config.gz",
    "/proc/sys/kernel/osrelease",
    "/proc/sys/kernel/random/boot_id",
    "/proc/sys/kernel/bootloader_type",
    "/sys/kernel/boot_params",
    "/sys/kernel/kexec_loaded",
    "/sys/kernel/kexec_crash_loaded",
    "/sys/kernel/kexec_crash_size",
    "/sys/kernel/kexec",
    "/sys/module/pstore/parameters",
    "/sys/module/ramoops/parameters",
    "/sys/module/printk/parameters",
    "/sys/kernel/debug/kho",
    "/sys/fs/pstore",
)


def console(msg: str) -> None:
    with open("/dev/console", "w") as c:
        c.write(f"KHODE2E: {msg}\n")


def sh(argv: list[str], out: str, env: dict[str, str] | None = None, timeout: int = 900) -> int:
    t0 = time.monotonic()
    with open(out, "w") as f:
        r = subprocess.run(
            argv, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False
        )
    console(
        f"ran {os.path.basename(argv[0])} {argv[1] if len(argv) > 1 else ''} rc={r.returncode}"
        f" in {time.monotonic() - t0:.1f}s"
    )
    return r.returncode


def copy_file(src: str, dest: str) -> None:
    try:
        with open(src, "rb") as f:
            data = f.read()
    except OSError:
        return  # write-only or gone: not a file khod reads
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
        f.write(data)


def capture(out: str) -> None:
    """This boot's files khod reads into ``out``/root, in this one process (a hundred
    small processes before a kexec slow the next kernel's boot under TCG)."""
    root = f"{out}/root"
    for top in CAPTURE:
        if os.path.isfile(top):
            copy_file(top, root + top)
        for d, _dirs, files in os.walk(top):
            for name in files:
                copy_file(f"{d}/{name}", f"{root}{d}/{name}")
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    records = []
    while True:
        try:
            rec = os.read(fd, 16384)  # one record per read
        except BrokenPipeError:
            continue  # overwritten while read: the next one
        except BlockingIOError:
            break
        if not rec:
            break
        records.append(rec)
    os.close(fd)
    os.makedirs(f"{root}/dev", exist_ok=True)
    Path(f"{root}/dev/kmsg").write_bytes(b"".join(records))
    with open(f"{out}/pstore-mtimes.txt", "w") as f:  # ns, ISO time, size, name
        for e in sorted(os.scandir("/sys/fs/pstore"), key=lambda e: e.name):
            st = e.stat()
            iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(st.st_mtime_ns // 10**9))
            f.write(f"{st.st_mtime_ns} {iso}.{st.st_mtime_ns % 10**9:09d}+0000 ")
            f.write(f"{st.st_size} {e.name}\n")
    console(f"captured {len(records)} kernel log records")


def main() -> None:
    for fs, where in (("debugfs", "/sys/kernel/debug"), ("pstore", "/sys/fs/pstore")):
        subprocess.run(["mount", "-t", fs, fs, where], check=False)
    # no init system here: bring up loopback for /metrics
    subprocess.run(["/bin/busybox", "ip", "link", "set", "lo", "up"], check=False)
    plan = json.loads(Path(f"{SHARE}/plan.json").read_text())
    cmdline = Path("/proc/cmdline").read_text().split()
    step = next((w.split("=", 1)[1] for w in cmdline if w.startswith("khod.step=")), "0")
    seen = f"{SHARE}/steps.log"
    earlier = Path(seen).read_text().splitlines() if os.path.exists(seen) else []
    n = 1 + sum(1 for line in earlier if line.split()[0] == step)
    key = step if n == 1 else f"{step}#{n}"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with open(seen, "a") as f:
        f.write(f"{step} {key} {boot_id}\n")
    release = os.uname().release
    console(f"boot step={key} boot_id={boot_id} release={release}")
    out = f"{SHARE}/out/{key}"
    os.makedirs(out, exist_ok=True)
    bindir = plan["bindir"]
    db = f"sqlite:///{SHARE}/khod.db"
    common = ["--db", db]
    env = {**os.environ, "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    for i, action in enumerate(plan["steps"].get(key, [])):
        what = action[0]
        tag = f"{out}/{i}-{what}"
        if what == "ingest":
            sh(
                [f"{bindir}/khod", "--once", *common, "--state-dir", f"{SHARE}/state"],
                f"{tag}.log",
                env,
            )
        elif what == "daemon":
            log = Path(f"{tag}.log").open("w")  # noqa: SIM115  (the daemon's, until it stops)
            p = subprocess.Popen(
                [f"{bindir}/khod", *common, "--state-dir", f"{SHARE}/state", "--no-watch-modules"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            text = ""
            for _ in range(600):
                try:
                    text = (
                        urllib.request.urlopen("http://127.0.0.1:9733/metrics", timeout=5)
                        .read()
                        .decode()
                    )
                    if "khod_last_ingest_timestamp_seconds 1" in text:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            Path(f"{tag}.prom").write_text(text)
            p.terminate()
            p.wait(60)
            log.close()
            console(f"daemon scraped, exit {p.returncode}")
        elif what == "check":
            rc = sh(
                [
                    f"{bindir}/khoctl",
                    "check",
                    "--json",
                    "--kernel",
                    action[1],
                    "--initrd",
                    plan["initrd"],
                ],
                f"{tag}.json",
                env,
            )
            Path(f"{tag}.rc").write_text(str(rc))
        elif what == "kexec":
            target, next_step, *flags = action[1:]
            append = f"{plan['append']} khod.step={next_step}"
            with open(f"{SHARE}/steps-leaving.log", "a") as f:
                f.write(f"{key} -> {next_step}\n")
            console(f"kexec to step {next_step}: {os.path.basename(target)} {flags}")
            rc = sh(
                [
                    f"{bindir}/khoctl",
                    "kexec",
                    "--now",
                    "--kernel",
                    target,
                    "--initrd",
                    plan["initrd"],
                    "--append",
                    append,
                    *common,
                    *flags,
                ],
                f"{tag}.log",
                env,
            )
            console(f"khoctl kexec returned {rc}")  # only reached when it failed
        elif what == "kexec-plain":
            target, next_step = action[1:]
            append = f"{plan['append']} khod.step={next_step}"
            with open(f"{SHARE}/steps-leaving.log", "a") as f:
                f.write(f"{key} -> {next_step}\n")
            console(f"plain kexec to step {next_step}: {os.path.basename(target)}")
            load = ["kexec", "-s", "-l", target, f"--initrd={plan['initrd']}"]
            rc = sh([*load, f"--append={append}"], f"{tag}.log", env)
            if rc == 0:
                subprocess.run(["sync"], check=False)
                subprocess.run(["kexec", "-e"], env=env, check=False)
            console("plain kexec failed")
        elif what == "capture":
            capture(out)
        elif what == "pmsg":
            with open("/dev/pmsg0", "w") as f:
                f.write(action[1] + "\n")
        elif what == "panic":
            console("panic now")
            subprocess.run(["sync"], check=False)
            Path("/proc/sys/kernel/sysrq").write_text("1")
            Path("/proc/sysrq-trigger").write_text("c")
    subprocess.run(["sync"], check=False)
    console("poweroff")
    subprocess.run(["/bin/busybox", "poweroff", "-f"], check=False)
    time.sleep(60)


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:  # PID 1 must not just die: say why and power off
        console(f"guest driver failed: {type(e).__name__}: {e}")
        subprocess.run(["/bin/busybox", "poweroff", "-f"], check=False)
        sys.exit(1)
