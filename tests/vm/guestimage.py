"""A Debian 13 guest that systemd boots, with the khod .deb built from this checkout
installed by apt, booted on the suite's kernel with its root on virtio-9p.

The image is the clean trixie chroot (tests/debian.py) plus PACKAGES from the Debian
archive and ``apt-get install ./khod_*.deb``; cached as a tarball under
~/.cache/khod-e2e/images/, keyed by the deb's sha256 and PACKAGES. Each boot unpacks
it afresh and adds the test's own unit, khod-e2e.service, which waits for the boot to
finish, writes what the test reads to /khod-e2e/ in the image and powers off; the run
directory under ~/.cache/khod-e2e/runs/ keeps that and the serial log.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.debian import cached_chroot, in_chroot, pack, unpack
from tests.vm.harness import qemu_machine
from tests.vm.kernel import CACHE

PACKAGES = ["systemd-sysv", "udev", "kexec-tools"]
OUT = "khod-e2e"  # the directory in the image khod-e2e.service writes to
TABLES: list[str] = []  # this session's guest reports (tests/vm/conftest.py)

UNIT = """\
[Unit]
Description=khod end-to-end: report what this boot did, then power off
After=khod.service multi-user.target

[Service]
ExecStart=/usr/local/sbin/khod-e2e
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

SCRIPT = f"""\
#!/bin/sh
# the test's own unit (not the product's): wait for khod and the boot, report, power off
out=/{OUT}
mkdir -p $out
echo "<6>khod-e2e: boot_id=$(cat /proc/sys/kernel/random/boot_id)" > /dev/kmsg
i=0
while [ $i -lt 180 ]; do
  case "$(systemctl is-active khod)" in active|failed) break ;; esac
  i=$((i + 1)); sleep 1
done
systemctl is-system-running --wait > $out/system-running 2>&1
systemctl is-active khod > $out/is-active 2>&1
systemctl --failed --no-legend > $out/failed 2>&1
khoctl status --json > $out/status.json 2> $out/status.err
journalctl -b -u khod --no-pager -o short-monotonic > $out/journal-khod 2>&1
journalctl -b --no-pager -o short-monotonic > $out/journal 2>&1
systemd-analyze time > $out/analyze-time 2>&1
systemd-analyze blame 2>&1 | head > $out/analyze-blame
echo done > $out/done
sync
echo "<6>khod-e2e: reported, powering off" > /dev/kmsg
systemctl poweroff
"""


def image(deb: Path) -> tuple[Path, float]:
    """The cached image tarball for this deb, and the seconds it took to build (0 if
    it was cached)."""
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    key = hashlib.sha256(f"{digest} {sorted(PACKAGES)} v1".encode()).hexdigest()[:16]
    tar = CACHE / "images" / f"trixie-systemd-{key}.tar"
    if tar.exists():
        return tar, 0.0
    t0 = time.monotonic()
    tar.parent.mkdir(parents=True, exist_ok=True)
    work = tar.parent / f"{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    root = unpack(cached_chroot("clean", []), work)
    shutil.copy(deb, root / "tmp" / deb.name)
    r = in_chroot(
        root,
        "apt-get update -q && apt-get install -y -q --no-install-recommends "
        + " ".join(PACKAGES)
        + f" && cd /tmp && apt-get install -y -q --no-install-recommends ./{deb.name}"
        + f" && rm /tmp/{deb.name} && apt-get clean",
        timeout=3600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pack(root, tar)
    shutil.rmtree(work, ignore_errors=True)
    return tar, time.monotonic() - t0


@dataclass
class Boot:
    dir: Path  # the run directory: serial.log, and khod-e2e/ as the guest wrote it
    serial: str
    rc: int  # qemu's exit status; -1 over the time limit
    seconds: float

    def out(self, name: str) -> str:
        p = self.dir / OUT / name
        return p.read_text(errors="replace") if p.exists() else ""


def boot(tar: Path, kernel: Path, append: str, timeout: float = 1200) -> Boot:
    """Unpack the image, add khod-e2e.service, boot it cold until it powers off."""
    d = CACHE / "runs" / f"systemd-{time.strftime('%Y%m%d-%H%M%S')}"
    d.mkdir(parents=True)
    root = unpack(tar, d / "root")
    units = root / "etc/systemd/system"
    (units / "khod-e2e.service").write_text(UNIT)
    (units / "multi-user.target.wants").mkdir(exist_ok=True)
    (units / "multi-user.target.wants" / "khod-e2e.service").symlink_to(
        "/etc/systemd/system/khod-e2e.service"
    )
    script = root / "usr/local/sbin/khod-e2e"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    argv = [
        *qemu_machine(d / "serial.log", kernel),
        "-nic",
        "none",
        "-no-reboot",
        "-append",
        f"{append} root=groot rootfstype=9p "
        "rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose rw "
        "init=/lib/systemd/systemd",
        "-virtfs",
        f"local,path={root},mount_tag=groot,security_model=passthrough,multidevs=remap",
    ]
    t0 = time.monotonic()
    with open(d / "qemu.stderr", "wb") as err:
        try:
            rc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    seconds = time.monotonic() - t0
    serial = (d / "serial.log").read_text(errors="replace") if (d / "serial.log").exists() else ""
    if (root / OUT).is_dir():  # keep what the guest reported and the serial log, not the image
        shutil.copytree(root / OUT, d / OUT)
    shutil.rmtree(root)
    return Boot(d, serial, rc, seconds)
