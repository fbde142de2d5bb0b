"""Build the end-to-end suite's guest kernels from Debian's kernel source package.

    python -m tests.vm.kernel        # build (or find in the cache) and print the paths

Source: ``linux-source-7.3`` from trixie-backports, fetched with a private apt
configuration under the cache (the host's apt setup is not touched). Kernels:

- ``a`` and ``b``: the same tree, different LOCALVERSION (a chain alternates them);
- ``v3abi``: ``KHO_FDT_COMPATIBLE`` set to ``kho-v3``, a stand-in for a kernel of the
  previous KHO ABI (kernels of different ABIs refuse each other's handover);
- ``composite``: ``KHO_FDT_COMPATIBLE`` set to ``kho-v4;radix-v1;vmalloc-v1``, the root
  string a proposed series builds from a base ABI and feature tags: it accepts its own
  handover and a stock ``kho-v4`` kernel refuses it (the kernel compares whole strings);
- ``nometa``: ``kho_init`` skips the ``kexec-metadata`` subtree (neither reads the
  incoming one, so no ``KHO: exec from`` line, nor hands one on), a stand-in for a KHO
  kernel from before 7.1 (such as Ubuntu's 7.0); KHO, LUO and pstore are untouched.

All of them have the Live Update Orchestrator built in (``CONFIG_LIVEUPDATE``, with
memfd preservation); it stays off unless a boot says ``liveupdate=on``.

Cached under ``~/.cache/khod-e2e/<key>/`` (key: this file, the config fragment and the
source package version); ``KHOD_E2E_KERNEL_DIR`` points at prebuilt ones instead.
A cold build takes about 15 minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRAGMENT = HERE / "kho.config"
CACHE = Path(os.environ.get("KHOD_E2E_CACHE", Path.home() / ".cache" / "khod-e2e"))
PACKAGE = "linux-source-7.3"
SOURCES = (
    "deb http://deb.debian.org/debian trixie-backports main\n"
    "deb http://deb.debian.org/debian sid main\n"
)
KERNELS = {
    "a": "-khod-a",
    "b": "-khod-b",
    "v3abi": "-khod-v3abi",
    "composite": "-khod-comp",
    "nometa": "-khod-nometa",
}
ABIS = {"v3abi": "kho-v3", "composite": "kho-v4;radix-v1;vmalloc-v1"}  # others: kho-v4
REQUIRED = (
    "KEXEC_FILE",
    "KEXEC_HANDOVER",
    "KEXEC_HANDOVER_DEBUGFS",
    "DEBUG_FS",
    "PSTORE_RAM",
    "DEVTMPFS_MOUNT",
    "BLK_DEV_INITRD",
    "9P_FS",
    "NET_9P_VIRTIO",
    "OVERLAY_FS",
    "IKCONFIG",
    "BPF_SYSCALL",
    "CGROUP_BPF",
    "MEMCG",
    "USER_NS",
    "SECCOMP_FILTER",
    "LIVEUPDATE",
    "LIVEUPDATE_MEMFD",
)


def log(msg: str) -> None:
    print(f"[kernel] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def apt_opts(apt: Path) -> list[str]:
    return [
        "-o",
        f"Dir::Etc::sourcelist={apt / 'sources.list'}",
        "-o",
        "Dir::Etc::sourceparts=-",
        "-o",
        f"Dir::State::Lists={apt / 'lists'}",
        "-o",
        f"Dir::Cache::Archives={apt / 'archives'}",
    ]


def fetch_source_deb() -> Path:
    apt = CACHE / "apt"
    debs = sorted(apt.glob(f"{PACKAGE}_*_all.deb"))
    if debs:
        return debs[-1]
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(SOURCES)
    log("apt-get update (private lists)")
    subprocess.run(["apt-get", *apt_opts(apt), "update"], check=True, stdout=subprocess.DEVNULL)
    log(f"apt-get download {PACKAGE}")
    subprocess.run(["apt-get", *apt_opts(apt), "download", PACKAGE], cwd=apt, check=True)
    return sorted(apt.glob(f"{PACKAGE}_*_all.deb"))[-1]


def cache_key(deb: Path) -> str:
    h = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), FRAGMENT.read_bytes(), deb.name.encode()):
        h.update(part)
    return h.hexdigest()[:16]


def unpack(deb: Path) -> Path:
    src = CACHE / "src" / PACKAGE
    if (src / "Makefile").exists():
        return src
    log(f"unpacking {deb.name}")
    tmp = CACHE / "debsrc"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    (CACHE / "src").mkdir(parents=True, exist_ok=True)
    tarball = next((tmp / "usr" / "src").glob(f"{PACKAGE}.tar.*"))
    subprocess.run(["tar", "-C", str(CACHE / "src"), "-xf", str(tarball)], check=True)
    shutil.rmtree(tmp)
    return src


def set_abi(src: Path, abi: str) -> None:
    """Point KHO_FDT_COMPATIBLE at ``abi`` (where the source defines it)."""
    hits = subprocess.run(
        ["grep", "-rl", "define KHO_FDT_COMPATIBLE", "include", "kernel"],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if not hits:
        raise RuntimeError("KHO_FDT_COMPATIBLE is not defined in this source")
    for rel in hits:
        p = src / rel
        text = p.read_text()
        new = re.sub(r'(#define KHO_FDT_COMPATIBLE\s+)"kho-v[^"]*"', rf'\1"{abi}"', text)
        if new != text:
            p.write_text(new)


# kho_init's one call that adds the kexec-metadata subtree (and reads the incoming one)
METADATA_CALL = "err = kho_kexec_metadata_init(fdt);"
# the nometa kernel's: the call stays referenced (no unused-function warning), never made
METADATA_SKIPPED = "err = 0 ? kho_kexec_metadata_init(fdt) : 0; /* khod e2e: nometa */"
KHO_SOURCE = "kernel/liveupdate/kexec_handover.c"


def set_metadata(src: Path, on: bool) -> None:
    """Put kho_init's kexec-metadata call in (``on``) or leave it out. The source tree is
    shared by every kernel built from it: each build sets it, and :func:`build` puts it
    back after the nometa kernel."""
    p = src / KHO_SOURCE
    text = p.read_text()
    old, new = (METADATA_SKIPPED, METADATA_CALL) if on else (METADATA_CALL, METADATA_SKIPPED)
    if new in text:
        return
    if text.count(old) != 1:
        raise RuntimeError(f"{KHO_SOURCE}: expected one '{old}'")
    p.write_text(text.replace(old, new))


def build(src: Path, tag: str, out: Path) -> None:
    set_metadata(src, tag != "nometa")
    try:
        _build(src, tag, out)
    finally:
        set_metadata(src, True)  # a tree left without it would build kernels without it


def _build(src: Path, tag: str, out: Path) -> None:
    jobs = str(os.cpu_count() or 2)
    t0 = time.monotonic()
    set_abi(src, ABIS.get(tag, "kho-v4"))
    make = ["make", "-s"]
    subprocess.run([*make, "x86_64_defconfig"], cwd=src, check=True)
    subprocess.run([*make, "kvm_guest.config"], cwd=src, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["./scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)],
        cwd=src,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        ["./scripts/config", "--set-str", "LOCALVERSION", KERNELS[tag]], cwd=src, check=True
    )
    subprocess.run([*make, "olddefconfig"], cwd=src, check=True)
    config = (src / ".config").read_text()
    missing = [o for o in REQUIRED if f"CONFIG_{o}=y" not in config]
    if missing:
        raise RuntimeError(f"the config lost {missing}")
    log(f"building bzImage-{tag} with -j{jobs}")
    subprocess.run(["make", f"-j{jobs}", "bzImage"], cwd=src, check=True, stdout=subprocess.DEVNULL)
    release = subprocess.run(
        [*make, "kernelrelease"], cwd=src, check=True, capture_output=True, text=True
    ).stdout.strip()
    shutil.copy(src / "arch/x86/boot/bzImage", out / f"bzImage-{tag}")
    shutil.copy(src / ".config", out / f"config-{tag}")
    (out / f"release-{tag}").write_text(release + "\n")
    log(f"{release} built in {time.monotonic() - t0:.0f}s")


def kernels() -> Path:
    """The directory holding bzImage-{a,b,v3abi,composite,nometa}, building what is missing."""
    pre = os.environ.get("KHOD_E2E_KERNEL_DIR")
    if pre:
        return Path(pre)
    deb = fetch_source_deb()
    out = CACHE / "kernels" / cache_key(deb)
    if all((out / f"bzImage-{t}").exists() for t in KERNELS):
        return out
    out.mkdir(parents=True, exist_ok=True)
    src = unpack(deb)
    t0 = time.monotonic()
    for tag in KERNELS:
        if not (out / f"bzImage-{tag}").exists():
            build(src, tag, out)
    (out / "source").write_text(deb.name + "\n")
    log(f"kernels ready in {time.monotonic() - t0:.0f}s: {out}")
    return out


if __name__ == "__main__":
    d = kernels()
    for t in KERNELS:
        print(d / f"bzImage-{t}", (d / f"release-{t}").read_text().strip())
