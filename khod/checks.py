"""Pre-kexec checks: is the outgoing KHO state sound, and will the target kernel take it?

Each check is version-aware (KERNEL-INTERFACES.md sections 3, 6, 8): ``finalize`` exists
only in 6.16-7.0, ``out/fdt`` only after a cold boot (7.3 seen), the scratch files are
``bootmem_*`` from 7.4, kexec-metadata exists from 7.1.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from khod.errors import ParseError, SourceError
from khod.observation import BootObservation
from khod.parse import kimage
from khod.parse.kho import parse_kho_fdt
from khod.paths import HostPaths
from khod.sources.files import read_bytes, read_optional

ERROR, WARNING, INFO = "error", "warning", "info"
IMAGE_LIMIT = 512 << 20


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    severity: str  # of a failure: error (blocks a kexec unless --force), warning, info
    detail: str


@dataclass(frozen=True)
class Target:
    """What the target image says about itself."""

    path: Path
    size: int
    image: kimage.KernelImage | None
    release: str | None
    abi: str | None
    abi_source: str  # "image" (its own KHO_FDT_COMPATIBLE) or "release table"
    config: str | None
    config_source: str | None


def _ok(name: str, detail: str, severity: str = ERROR) -> Check:
    return Check(name, True, severity, detail)


def _fail(name: str, detail: str, severity: str = ERROR) -> Check:
    return Check(name, False, severity, detail)


def running_abi(paths: HostPaths, obs: BootObservation) -> tuple[str | None, str]:
    """The KHO ABI this kernel speaks: its incoming or outgoing root compatible, else the
    release table."""
    if obs.kho_abi:
        return obs.kho_abi, "in/fdt"
    data = None
    with contextlib.suppress(SourceError):
        data = read_optional(paths.kho_out_fdt, "out/fdt")
    if data:
        try:
            return parse_kho_fdt(data, "out/fdt").compatible, "out/fdt"
        except ParseError:
            pass
    return kimage.kho_abi_for_release(obs.release), "release table"


def inspect_target(paths: HostPaths, image: Path) -> Target:
    shown = str(image)
    data = read_bytes(image, shown, IMAGE_LIMIT)
    img = kimage.parse_kernel_image(data, shown)
    vmlinux = kimage.decompress_payload(img, shown)
    release = img.release
    abi = None
    abi_source = "release table"
    config = config_source = None
    if vmlinux is not None:
        release = release or kimage.release_of_vmlinux(vmlinux)
        abis = kimage.kho_abis_in(vmlinux)
        if len(abis) == 1:
            abi, abi_source = abis[0], "image"
        config = kimage.ikconfig_in(vmlinux)
        config_source = "embedded (IKCONFIG)" if config else None
    if release and abi is None:
        abi = kimage.kho_abi_for_release(release)
    if release and config is None:
        for p in paths.boot_config(release):
            text = read_optional(p, paths.rel(p))
            if text is not None:
                config, config_source = text.decode("utf-8", "replace"), paths.rel(p)
                break
    return Target(image, len(data), img, release, abi, abi_source, config, config_source)


def check_kho(paths: HostPaths, obs: BootObservation) -> list[Check]:
    out: list[Check] = []
    if not obs.kho_enabled:
        out.append(
            _fail(
                "kho-enabled",
                "KHO is off in the running kernel (no "
                f"{paths.rel(paths.kho)}; boot with kho=on): a kexec hands nothing "
                "over and the next boot counts as cold",
            )
        )
        return out
    out.append(_ok("kho-enabled", f"{paths.rel(paths.kho)} is present"))
    if not paths.kho_out.is_dir():
        out.append(
            _fail(
                "debugfs",
                f"{paths.rel(paths.kho_out)} is not readable; mount "
                "debugfs (mount -t debugfs none /sys/kernel/debug)",
            )
        )
        return out
    out.append(_ok("debugfs", f"{paths.rel(paths.kho_out)} is readable"))
    return out


def check_scratch(obs: BootObservation, target: Target | None, initrd_size: int) -> Check:
    total = sum(n for _, n in obs.scratch)
    if not obs.scratch or total == 0:
        return _fail(
            "scratch",
            "no KHO scratch areas (scratch_len/bootmem_len missing or "
            "zero): the next kernel has no memory to boot in",
        )
    need = (target.size if target else 0) + initrd_size
    areas = ", ".join(f"{n >> 20} MiB" for _, n in obs.scratch)
    if need and total < need:
        return _fail(
            "scratch",
            f"scratch areas ({areas}, {total >> 20} MiB in all) are "
            f"smaller than the image and initrd ({need >> 20} MiB); raise "
            "kho_scratch= (7.4: kho_bootmem=)",
            WARNING,
        )
    return _ok("scratch", f"{len(obs.scratch)} areas: {areas}")


def check_out_fdt(paths: HostPaths, obs: BootObservation) -> Check:
    try:
        data = read_optional(paths.kho_out_fdt, paths.rel(paths.kho_out_fdt))
    except SourceError as e:
        return _fail("out-fdt", str(e), WARNING)
    if data is None:
        return _ok(
            "out-fdt",
            "no out/fdt: a kernel entered by a KHO kexec does not show "
            "it (7.3), the handover still works",
            INFO,
        )
    try:
        root = parse_kho_fdt(data, paths.rel(paths.kho_out_fdt))
    except ParseError as e:
        sev = INFO if "truncated" in e.why else WARNING
        return _fail(
            "out-fdt",
            f"{e} (debugfs sizes it at boot; later subtrees grow the FDT)"
            if sev == INFO
            else str(e),
            sev,
        )
    if not root.known:
        return _fail("out-fdt", f"unknown KHO ABI {root.compatible!r}")
    return _ok("out-fdt", f"valid, compatible {root.compatible!r}")


def check_metadata(obs: BootObservation, abi: str | None) -> Check:
    expected = (obs.kexec_count or 0) + 1
    if obs.out_kexec_count is None:
        if abi == "kho-v1":
            return _ok(
                "outgoing-metadata", "kho-v1 kernels (6.16-7.0) have no kexec-metadata", INFO
            )
        return _fail(
            "outgoing-metadata",
            "no out/sub_fdts/kexec-metadata: the next boot will not know where it came from",
        )
    if (obs.out_release, obs.out_kexec_count) != (obs.release, expected):
        return _fail(
            "outgoing-metadata",
            f"out/sub_fdts/kexec-metadata says {obs.out_release} "
            f"count {obs.out_kexec_count}, expected {obs.release} count {expected}",
        )
    return _ok("outgoing-metadata", f"{obs.out_release} count {obs.out_kexec_count}")


def check_finalize(paths: HostPaths, release: str) -> Check:
    try:
        raw = read_optional(paths.kho_out_finalize, "out/finalize")
    except SourceError as e:
        return _fail("finalize", str(e))
    v = kimage.release_version(release)
    if raw is None:
        if v is not None and v <= (7, 0):
            return _fail(
                "finalize",
                f"{release} should have out/finalize (6.16-7.0) and it is missing",
                WARNING,
            )
        return _ok("finalize", "no finalize step (7.1+)", INFO)
    state = raw.decode("ascii", "replace").strip()
    if state != "1":
        return _fail(
            "finalize",
            f"out/finalize reads {state!r}: finalize KHO (echo 1 > "
            "out/finalize) before loading the kernel (6.17/6.18 need it before "
            "kexec -s -l)",
        )
    return _ok("finalize", "finalized")


def check_target(target: Target, running: str | None, running_src: str) -> list[Check]:
    out = []
    img = target.image
    assert img is not None
    out.append(
        _ok(
            "image",
            f"{img.kind}"
            + (f" (boot protocol {img.protocol})" if img.protocol else "")
            + f", release {target.release or 'unknown'}",
        )
    )
    if target.config is None:
        out.append(
            _fail(
                "image-config",
                "no config for the target (no embedded IKCONFIG, no "
                f"boot/config-{target.release}): cannot tell if it has "
                "CONFIG_KEXEC_HANDOVER",
                WARNING,
            )
        )
    else:
        missing = [
            k
            for k in ("CONFIG_KEXEC_HANDOVER", "CONFIG_KEXEC_FILE")
            if kimage.config_value(target.config, k) != "y"
        ]
        if missing:
            out.append(
                _fail(
                    "image-config",
                    f"the target lacks {', '.join(missing)} "
                    f"({target.config_source}): it cannot take a handover",
                )
            )
        else:
            out.append(
                _ok(
                    "image-config",
                    f"CONFIG_KEXEC_HANDOVER=y, CONFIG_KEXEC_FILE=y ({target.config_source})",
                )
            )
    if target.abi is None or running is None:
        out.append(
            _fail(
                "abi",
                f"cannot tell the KHO ABI of the target ({target.abi}) or of "
                f"this kernel ({running})",
                WARNING,
            )
        )
    elif target.abi != running:  # the kernel matches the root compatible exactly
        out.append(
            _fail(
                "abi",
                f"this kernel speaks {running!r} ({running_src}), the target "
                f"{target.abi!r} ({target.abi_source}): the target would refuse the "
                "handover, lose all handover data and reset the count",
            )
        )
    else:
        out.append(_ok("abi", f"both speak {running!r} (target: {target.abi_source})"))
    return out


def check_kexec_tools() -> tuple[Check, str | None]:
    exe = shutil.which("kexec")
    if exe is None:
        return _fail("kexec-tools", "kexec not found on PATH (install kexec-tools)"), None
    try:
        r = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return _fail("kexec-tools", f"{exe} --version failed: {e}"), exe
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", r.stdout + r.stderr)
    if not m:
        return _fail("kexec-tools", f"{exe}: cannot tell its version", WARNING), exe
    ver = tuple(int(x) for x in m.groups())
    if ver < (2, 0, 10):
        return _fail("kexec-tools", f"{exe} {m.group(0)} predates the file loader (-s)"), exe
    return _ok(
        "kexec-tools",
        f"{exe} {m.group(0)}; loads with -s (kexec_file_load, the only loader that carries KHO)",
    ), exe


def check_lockdown(paths: HostPaths) -> Check:
    try:
        raw = read_optional(paths.lockdown, paths.rel(paths.lockdown))
    except SourceError:
        raw = None
    if raw is None:
        return _ok("lockdown", "no lockdown state exposed", INFO)
    m = re.search(r"\[(\w+)\]", raw.decode("ascii", "replace"))
    mode = m.group(1) if m else "unknown"
    if mode != "none":
        return _fail(
            "lockdown",
            f"lockdown is {mode!r}: the target must be signed with a key the kernel trusts",
            WARNING,
        )
    return _ok("lockdown", "lockdown none", INFO)


def check_loaded(paths: HostPaths) -> Check:
    for p in paths.kexec_loaded:
        try:
            raw = read_optional(p, paths.rel(p))
        except SourceError:
            continue
        if raw is not None:
            if raw.strip() == b"1":
                return _fail(
                    "kexec-loaded",
                    f"an image is already loaded ({paths.rel(p)}); "
                    "it may lack KHO: khoctl kexec replaces it with kexec -s -l",
                    WARNING,
                )
            return _ok("kexec-loaded", "no image loaded", INFO)
    return _ok("kexec-loaded", "kexec_loaded not exposed", INFO)


def check_liveupdate(paths: HostPaths) -> Check:
    if paths.liveupdate.exists():
        return _ok(
            "liveupdate",
            f"{paths.rel(paths.liveupdate)} present (LUO is on; not opened: it has one holder)",
            INFO,
        )
    return _ok("liveupdate", "no /dev/liveupdate", INFO)


def run_checks(
    paths: HostPaths, obs: BootObservation, kernel: Path | None, initrd: Path | None
) -> tuple[list[Check], Target | None, str | None]:
    checks = check_kho(paths, obs)
    running, running_src = running_abi(paths, obs)
    target: Target | None = None
    initrd_size = 0
    if initrd is not None:
        try:
            initrd_size = initrd.stat().st_size
            checks.append(_ok("initrd", f"{initrd} ({initrd_size >> 10} KiB)"))
        except OSError as e:
            checks.append(_fail("initrd", f"{initrd}: {e.strerror}"))
    if kernel is not None:
        try:
            target = inspect_target(paths, kernel)
        except (SourceError, ParseError) as e:
            checks.append(_fail("image", str(e)))
    if obs.kho_enabled and paths.kho_out.is_dir():
        checks.append(check_scratch(obs, target, initrd_size))
        checks.append(check_out_fdt(paths, obs))
        checks.append(check_metadata(obs, running))
        checks.append(check_finalize(paths, obs.release))
    if target is not None:
        checks += check_target(target, running, running_src)
    kt, exe = check_kexec_tools()
    checks += [kt, check_lockdown(paths), check_loaded(paths), check_liveupdate(paths)]
    return checks, target, exe


def verdict(checks: list[Check]) -> bool:
    return not any(not c.ok and c.severity == ERROR for c in checks)


def checks_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": verdict(checks), "checks": [asdict(c) for c in checks]}
