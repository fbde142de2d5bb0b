"""A Debian 13 guest that systemd boots, with the khod .deb built from this checkout
installed by apt, booted on the suite's kernels with its root on virtio-9p.

The image is the clean trixie chroot (tests/debian.py) plus PACKAGES from the Debian
archive and ``apt-get install ./khod_*.deb``; cached as a tarball under
~/.cache/khod-e2e/images/, keyed by the deb's sha256 and PACKAGES. Each run unpacks it
afresh and adds the test's own driver and units (tests/vm/guestdriver.py), the plan it
follows (one step per boot: report, act, kexec or panic or power off) and the suite's
kernels under /boot/khod-e2e/; nothing of khod is added by hand. The run directory under
~/.cache/khod-e2e/runs/ keeps the serial log, what the driver wrote and the guest's store.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cachelock import locked
from tests.debian import cached_chroot, in_chroot, pack, unpack
from tests.vm.harness import digest, qemu_machine, split_kernels, watch
from tests.vm.kernel import CACHE, KERNELS

# what the guest's operator installs beside khod: systemd as init, udev (khod's module
# uevents), kexec-tools (khoctl kexec), psycopg (khod's sync to the fleet's PostgreSQL)
PACKAGES = ["systemd-sysv", "udev", "kexec-tools", "python3-psycopg"]
CLOUD_KERNEL = "linux-image-cloud-amd64"  # Debian's own, from trixie-backports
OUT = "khod-e2e"  # the directory in the image the driver writes to
TABLES: list[str] = []  # this session's guest reports (tests/vm/conftest.py)
DRIVER = Path(__file__).with_name("guestdriver.py")
VMM = Path(__file__).with_name("luovmm.py")  # /usr/local/sbin/khod-e2e-vmm
PORT_NAME = "org.khod.e2e"  # the virtio port the host says "go" on
GUEST_IP = "10.0.2.15"  # QEMU user networking: the guest; the host is 10.0.2.2
STALL_SECONDS = 300.0  # no serial output this long, the host not acting: stuck

UNITS = {
    "khod-e2e-early.service": """\
[Unit]
Description=khod end-to-end: set the stage for this boot before khod starts
DefaultDependencies=no
After=local-fs.target
Before=khod.service khod-pstore.service sysinit.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/khod-e2e early

[Install]
WantedBy=sysinit.target
""",
    "khod-e2e.service": """\
[Unit]
Description=khod end-to-end: report what this boot did, then take the next step
After=khod.service multi-user.target

[Service]
ExecStart=/usr/local/sbin/khod-e2e
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
""",
}
NETWORK = f"""\
[Match]
Name=en* eth*

[Network]
Address={GUEST_IP}/24
Gateway=10.0.2.2
"""


def image(deb: Path) -> tuple[Path, float]:
    """The cached image tarball for this deb, and the seconds it took to build (0 if
    it was cached)."""
    deb_sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    key = hashlib.sha256(f"{deb_sha} {sorted(PACKAGES)} v2".encode()).hexdigest()[:16]
    tar = CACHE / "images" / f"trixie-systemd-{key}.tar"
    with locked(tar.with_suffix(".lock")):
        return (tar, 0.0) if tar.exists() else (tar, _build_image(deb, tar, key))


def _build_image(deb: Path, tar: Path, key: str) -> float:
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
        + f" && rm /tmp/{deb.name} && apt-get clean"
        # what the first boot of an installed system does once (ConditionNeedsUpdate):
        # done here, so that no boot under test pays for it
        + " && ldconfig && journalctl --update-catalog && /usr/lib/systemd/systemd-update-done",
        timeout=3600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pack(root, tar)
    shutil.rmtree(work, ignore_errors=True)
    return time.monotonic() - t0


@dataclass
class Boot:
    """What the driver wrote for one boot (boot-N/), and the kernel's own KHO lines."""

    n: int
    dir: Path
    kho_lines: list[str]

    def out(self, name: str) -> str:
        p = self.dir / name
        return p.read_text(errors="replace") if p.exists() else ""

    def json(self, name: str) -> Any:
        text = self.out(name)
        return json.loads(text) if text.strip() else None

    @property
    def boot_id(self) -> str:
        return self.out("boot_id").strip()

    def exec_from(self) -> tuple[str, int] | None:
        """The kernel's "KHO: exec from: R (count N)", if it said so."""
        for line in self.kho_lines:
            m = re.search(r"KHO: exec from: (\S+) \(count (\d+)\)", line)
            if m:
                return m.group(1), int(m.group(2))
        return None

    def units(self) -> dict[str, dict[str, str]]:
        """``systemctl show`` of the units the driver asked about, by unit."""
        out: dict[str, dict[str, str]] = {}
        for block in self.out("units").strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if "Id" in props:
                out[props["Id"]] = props
        return out

    def userspace_started(self) -> float:
        """CLOCK_MONOTONIC when PID 1 started: the boot's times are taken from here,
        so that the kernel's own boot (longer after a kexec) is left out of them."""
        m = re.search(r"^UserspaceTimestampMonotonic=(\d+)$", self.out("manager"), re.M)
        return int(m.group(1)) / 1e6 if m else 0.0

    def generators(self) -> float:
        """Seconds systemd's generators took at this boot (0: not known). PID 1 gives
        them DEFAULT_TIMEOUT_USEC (90 s), then kills them and freezes ("Failed to fork
        off sandboxing environment for executing generators")."""
        m = dict(
            re.findall(
                r"^Generators(Start|Finish)TimestampMonotonic=(\d+)$", self.out("manager"), re.M
            )
        )
        if not m.get("Start") or not m.get("Finish"):
            return 0.0
        return (int(m["Finish"]) - int(m["Start"])) / 1e6

    def reached(self, unit: str) -> float:
        """Seconds after PID 1 started that ``unit`` became active (0: never)."""
        at = int(self.units().get(unit, {}).get("ActiveEnterTimestampMonotonic", 0)) / 1e6
        return at - self.userspace_started() if at else 0.0


@dataclass
class Run:
    name: str
    dir: Path  # serial.log, khod-e2e/ as the guest wrote it, khod.db (the guest's store)
    serial: str
    rc: int  # qemu's exit status; -1 over the time limit, -2 stalled
    seconds: float
    boots: list[Boot]
    host_errors: list[str]  # what went wrong in the host's part of a step

    @property
    def db(self) -> Path:
        return self.dir / "khod.db"

    def summary(self) -> str:
        return f"{self.name}: {len(self.boots)} boots in {self.seconds:.0f}s (qemu rc {self.rc})"

    def digest(self) -> str:
        """What a failed run shows: its summary, QEMU's own stderr, and the console's
        digest (harness.digest)."""
        err = self.dir / "qemu.stderr"
        qemu = err.read_text(errors="replace").strip()[-2000:] if err.exists() else ""
        return "\n".join([self.summary(), f"qemu stderr: {qemu or '(empty)'}", digest(self.serial)])


def _kho_lines(serial: str) -> list[list[str]]:
    """The kernel's KHO lines, one list per kernel started (in serial order)."""
    _, runs = split_kernels(serial)
    return [
        [m.group(1).strip() for line in run if (m := re.search(r"\] (KHO: .*)$", line))]
        for run in runs
    ]


def run(
    name: str,
    tar: Path,
    kernel_dir: Path,
    steps: list[dict[str, Any]],
    *,
    append: str,
    files: dict[str, str] | None = None,
    forward: int | None = None,
    host: dict[str, Callable[[], None]] | None = None,
    own_kernel: bool = False,
    first: str = "a",
    timeout: float = 2400,
) -> Run:
    """Boot the image cold on ``kernel_dir``'s kernel ``first`` (every kernel of
    tests/vm/kernel.py is in the image, /boot/khod-e2e/bzImage-TAG) and let the driver follow
    ``steps`` (one per boot, see tests/vm/guestdriver.py) until it powers off.

    ``files`` are added to the image (paths relative to its root; a value ``@/dev/null``
    makes a symlink: a masked unit). ``forward``: the guest's port 9733 reachable on this
    host's 127.0.0.1:``forward`` through QEMU user networking (the guest gets
    GUEST_IP); ``host[TAG]`` runs here when the guest says ``@host TAG``. A panic resets
    the machine (RAM, and so ramoops, survives); the guest powering off ends the run.

    ``own_kernel``: boot the kernel the image has installed (Debian's, with its
    initramfs; see cloud_image) instead, the root an ext4 disk on virtio-blk (Debian's
    kernels have no 9p), read back with debugfs afterwards."""
    d = CACHE / "runs" / f"systemd-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    d.mkdir(parents=True)
    root = unpack(tar, d / "root")
    units = root / "etc/systemd/system"
    for unit, text in UNITS.items():
        if "early" in unit and not any(s.get("early") for s in steps):
            continue  # its python start would hold sysinit.target for nothing
        (units / unit).write_text(text)
        wants = units / ("sysinit.target.wants" if "early" in unit else "multi-user.target.wants")
        wants.mkdir(exist_ok=True)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    for script, installed in ((DRIVER, "khod-e2e"), (VMM, "khod-e2e-vmm")):
        shutil.copy(script, root / "usr/local/sbin" / installed)
        (root / "usr/local/sbin" / installed).chmod(0o755)
    (root / OUT).mkdir()
    (root / OUT / "plan.json").write_text(json.dumps({"steps": steps}, indent=1))
    (root / "boot/khod-e2e").mkdir(parents=True)
    for k in KERNELS:
        shutil.copy(kernel_dir / f"bzImage-{k}", root / f"boot/khod-e2e/bzImage-{k}")
        if not own_kernel:  # installed as a distribution installs a kernel
            release = (kernel_dir / f"release-{k}").read_text().strip()
            (root / f"boot/vmlinuz-{release}").symlink_to(f"khod-e2e/bzImage-{k}")
    nic = ["-nic", "none"]
    if forward is not None:
        (root / "etc/systemd/network/50-khod-e2e.network").write_text(NETWORK)
        wants = units / "multi-user.target.wants"
        (wants / "systemd-networkd.service").symlink_to(
            "/usr/lib/systemd/system/systemd-networkd.service"
        )
        nic = [
            "-nic",
            f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{forward}-{GUEST_IP}:9733",
        ]
    for rel, text in (files or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("@"):
            p.unlink(missing_ok=True)
            p.symlink_to(text[1:])
        else:
            p.write_text(text)
    ctl = d / "ctl.sock"
    if own_kernel:
        (vmlinuz,) = sorted((root / "boot").glob("vmlinuz-*"))
        (initrd,) = sorted((root / "boot").glob("initrd.img-*"))
        shutil.copy(vmlinuz, d / "vmlinuz")
        shutil.copy(initrd, d / "initrd.img")
        disk = d / "root.ext4"
        r = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(disk), "3G"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        shutil.rmtree(root)
        boot = [
            *qemu_machine(d / "serial.log", d / "vmlinuz"),
            "-initrd",
            str(d / "initrd.img"),
            "-drive",
            f"file={disk},format=raw,if=virtio,cache=unsafe",
            "-append",
            f"{append} root=/dev/vda rw init=/lib/systemd/systemd",
        ]
    else:
        boot = [
            *qemu_machine(d / "serial.log", kernel_dir / f"bzImage-{first}"),
            "-append",
            f"{append} root=groot rootfstype=9p "
            "rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose rw "
            "init=/lib/systemd/systemd",
            "-virtfs",
            f"local,path={root},mount_tag=groot,security_model=passthrough,multidevs=remap",
        ]
    argv = [
        *boot,
        *nic,
        "-device",
        "virtio-serial-pci",
        "-chardev",
        f"socket,id=ctl,path={ctl},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=ctl,name={PORT_NAME}",
    ]
    errors: list[str] = []
    t0 = time.monotonic()
    log = d / "serial.log"
    with open(d / "qemu.stderr", "wb") as err:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        rc = _follow(qemu, log, ctl, host or {}, errors, t0, timeout)
    seconds = time.monotonic() - t0
    serial = log.read_text(errors="replace") if log.exists() else ""
    if own_kernel:  # what the guest wrote and its store, out of the disk
        _debugfs(disk, f"rdump /{OUT} {d}")
        for f in ("khod.db", "khod.db-wal"):
            _debugfs(disk, f"dump /var/lib/khod/{f} {d / f}")
        disk.unlink()
    else:  # keep what the guest wrote and its store, not the image
        if (root / OUT).is_dir():
            shutil.copytree(root / OUT, d / OUT)
        for f in ("khod.db", "khod.db-wal"):
            if (root / "var/lib/khod" / f).exists():
                shutil.copy(root / "var/lib/khod" / f, d / f)
        shutil.rmtree(root)
    kernels = _kho_lines(serial)
    boots = []
    for n in range(len(list((d / OUT).glob("boot-*")))):
        # the driver's "boot n=N" line follows the kernel's own; take that kernel's lines
        idx = _kernel_of(serial, n)
        boots.append(Boot(n, d / OUT / f"boot-{n}", kernels[idx] if idx is not None else []))
    return Run(name, d, serial, rc, seconds, boots, errors)


def _debugfs(disk: Path, request: str) -> None:
    """Read out of the guest's ext4 disk without mounting it (e2fsprogs' debugfs)."""
    subprocess.run(
        ["debugfs", "-R", request, str(disk)], capture_output=True, check=False, timeout=300
    )


def cloud_image(tar: Path) -> tuple[Path, float]:
    """``tar`` with Debian's own kernel added: ``linux-image-cloud-amd64`` from
    trixie-backports (no KHO; pstore backends, ramoops among them, as modules) and the
    initramfs initramfs-tools makes for it. Cached beside ``tar``."""
    key = hashlib.sha256(f"{tar.name} {CLOUD_KERNEL} v1".encode()).hexdigest()[:16]
    out = tar.parent / f"trixie-systemd-cloud-{key}.tar"
    with locked(out.with_suffix(".lock")):
        return (out, 0.0) if out.exists() else (out, _build_cloud_image(tar, out, key))


def _build_cloud_image(tar: Path, out: Path, key: str) -> float:
    t0 = time.monotonic()
    work = tar.parent / f"cloud-{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    root = unpack(tar, work)
    (root / "etc/apt/sources.list.d/khod-e2e-backports.list").write_text(
        "deb http://deb.debian.org/debian trixie-backports main\n"
    )
    r = in_chroot(
        root,
        "apt-get update -q && apt-get install -y -q --no-install-recommends "
        f"-t trixie-backports {CLOUD_KERNEL} && apt-get clean",
        timeout=3600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pack(root, out)
    shutil.rmtree(work, ignore_errors=True)
    return time.monotonic() - t0


def _kernel_of(serial: str, n: int) -> int | None:
    """Which kernel start (0, 1, ...) the driver's boot n ran under."""
    before, runs = split_kernels(serial)
    for k, run in enumerate([before, *runs], start=-1):
        if any(re.search(rf"khod-e2e: boot n={n} boot_id=", line) for line in run):
            return k if k >= 0 else None
    return None


def _follow(
    p: subprocess.Popen[bytes],
    log: Path,
    ctl: Path,
    host: dict[str, Callable[[], None]],
    errors: list[str],
    t0: float,
    timeout: float,
) -> int:
    """Wait for qemu, doing the host's part of each ``@host TAG`` the guest announces."""
    done: set[str] = set()
    sock: socket.socket | None = None

    def act(text: str) -> bool:
        nonlocal sock
        acted = False
        for tag in re.findall(r"khod-e2e: host (\S+)", text):
            if tag in done:
                continue
            done.add(tag)
            try:
                host[tag]()
            except Exception as e:  # the test reports it
                errors.append(f"{tag}: {type(e).__name__}: {e}")
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(ctl))
            sock.sendall(f"go {tag}\n".encode())
            acted = True
        return acted

    try:
        return watch(p, log, t0=t0, timeout=timeout, stall=STALL_SECONDS, on_output=act)
    finally:
        if sock is not None:
            sock.close()
