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
from khod.observation import BootObservation, EventSource, Severity
from khod.parse import kimage
from khod.parse.kho import parse_kho_fdt
from khod.paths import HostPaths
from khod.sources.files import is_dir, read_bytes, read_optional

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
    try:
        present = is_dir(paths.kho, paths.rel(paths.kho))
    except SourceError:
        present = False
    out.append(
        _ok(
            "kho-enabled",
            f"{paths.rel(paths.kho)} is present"
            if present
            else "KHO is on (told by the kernel command line and log)",
        )
    )
    try:
        readable = is_dir(paths.kho_out, paths.rel(paths.kho_out))
    except SourceError as e:  # debugfs is 0700 root: a user, or root without CAP_DAC_OVERRIDE
        out.append(_fail("debugfs", f"{e}; khoctl check reads debugfs: run it as root"))
        return out
    if not readable:
        out.append(
            _fail(
                "debugfs",
                f"{paths.rel(paths.kho_out)} is not readable; mount "
                "debugfs (mount -t debugfs none /sys/kernel/debug)",
            )
        )
        return out
    # the directories open but the files did not (debugfs mounted mode=755, 0400 files):
    # collection said so in one event, and took what it could from the kernel log
    for ev in obs.events:
        if (
            ev.kind == "read-error"
            and ev.origin == EventSource.KHO
            and ev.severity is Severity.INFO
        ):
            out.append(
                _fail("debugfs", f"{ev.message}; khoctl check reads debugfs: run it as root")
            )
            return out
    out.append(_ok("debugfs", f"{paths.rel(paths.kho_out)} is readable"))
    return out


# --- where the kernel would put each kexec segment (KERNEL-INTERFACES.md section 10) ---

PAGE = 4096
MiB = 1 << 20
# arch/x86/kernel/kexec-bzimage64.c: the lowest address of each segment
MIN_PURGATORY_ADDR = 0x3000
MIN_BOOTPARAM_ADDR = 0x3000
MIN_KERNEL_LOAD_ADDR = 0x100000
MIN_INITRD_LOAD_ADDR = 0x1000000
# arch/x86/purgatory's purgatory.ro (SHF_ALLOC sections, 4 KiB stack included): not
# readable from user space; about 20 KiB on x86-64
PURGATORY_MEMSZ = 0x5000
# bzImage64_load's boot params segment: sizeof(struct boot_params) + command line +
# MAX_ELFCOREHDR_STR_LEN, aligned to 16, then setup_data headers (16 bytes each) for
# EFI (efi_setup_data, 96), the RNG seed (32), IMA (16) and KHO (kho_data, 32). The EFI
# runtime map (efi_get_runtime_map_size) is not known here and counted as 0.
BOOT_PARAMS = 4096
MAX_ELFCOREHDR_STR_LEN = 30
SETUP_DATA_TAIL = (16 + 96) + (16 + 32) + (16 + 16) + (16 + 32)
KHO_SCRATCH_ENTRY = 16  # struct kho_scratch {phys_addr_t addr; phys_addr_t size;}


@dataclass(frozen=True)
class Segment:
    """A ``struct kexec_buf`` as the loader fills it in."""

    label: str
    memsz: int
    align: int
    buf_min: int


def _size(n: int) -> str:
    if n % MiB == 0 and n:
        return f"{n >> 20} MiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n >> 10} KiB" if n % 1024 == 0 else f"{n} bytes"


def _align_down(x: int, a: int) -> int:
    return x - x % a


def kexec_segments(
    target: Target | None, initrd_size: int | None, cmdline_len: int, areas: int
) -> list[Segment]:
    """The segments ``kexec_file_load`` adds, in the order it adds them
    (``kimage_file_prepare_segments``): KHO's own first, then the image loader's."""
    # kho_fill_kimage (kernel/liveupdate/kexec_handover.c): the scratch table, 64K-aligned
    segs = [Segment("KHO scratch table", KHO_SCRATCH_ENTRY * areas, 64 << 10, 0)]
    img = target.image if target else None
    if img is None or img.kind == "bzImage":
        # bzImage64_load (arch/x86/kernel/kexec-bzimage64.c): purgatory, boot params with
        # the command line, the kernel, the initrd
        boot = -(-(BOOT_PARAMS + cmdline_len + MAX_ELFCOREHDR_STR_LEN) // 16) * 16
        segs += [
            Segment("purgatory", PURGATORY_MEMSZ, PAGE, MIN_PURGATORY_ADDR),
            Segment(
                f"boot params and command line ({_size(boot + SETUP_DATA_TAIL)})",
                boot + SETUP_DATA_TAIL,
                16,
                MIN_BOOTPARAM_ADDR,
            ),
        ]
    if target is not None and img is not None:
        if img.init_size:  # kbuf.memsz = PAGE_ALIGN(header->init_size)
            size, what = img.init_size, f"init_size {_size(img.init_size)}"
        else:
            size, what = target.size, f"file size {_size(target.size)}"
        pref = img.pref_address or 0
        buf_min = pref if pref >= MIN_KERNEL_LOAD_ADDR else MIN_KERNEL_LOAD_ADDR
        segs.append(Segment(f"kernel ({what})", size, img.kernel_alignment or PAGE, buf_min))
    if initrd_size is not None:  # "Load initrd high": page-aligned, above 16 MiB
        segs.append(
            Segment(f"initrd ({_size(initrd_size)})", initrd_size, PAGE, MIN_INITRD_LOAD_ADDR)
        )
    return segs


def _top_down(
    start: int, end: int, memsz: int, align: int, *, buf_min: int, placed: list[tuple[int, int]]
) -> int | None:
    """``locate_mem_hole_top_down`` (kernel/kexec_file.c): the highest aligned start in
    [start, end] whose range overlaps no segment placed before
    (``kimage_is_destination_range``). The kernel steps down a page at a time past a
    clash; jumping to just below the clashing segment lands on the same address."""
    cand = end - memsz + 1
    while True:
        cand = _align_down(cand, align)
        if cand < start or cand < buf_min:
            return None
        last = cand + memsz - 1
        clash = [s for s, e in placed if s <= last and cand <= e]
        if not clash:
            return cand
        cand = min(clash) - memsz


def place_segments(
    areas: tuple[tuple[int, int], ...], segs: list[Segment]
) -> tuple[list[tuple[Segment, int, int]], Segment | None]:
    """Each segment in one scratch area, as ``kexec_add_buffer`` -> ``kho_locate_mem_hole``
    does: the areas are walked in their order (``kho_walk_scratch``: lowmem, global, per
    node), the first that holds the segment takes it; the segments already placed stay
    taken. Returns (segment, area index, address) for each placed one, and the first
    segment that fits nowhere (the load fails with -EADDRNOTAVAIL), or None."""
    placed: list[tuple[Segment, int, int]] = []
    taken: list[tuple[int, int]] = []
    for seg in segs:
        memsz = -(-seg.memsz // PAGE) * PAGE  # kexec_add_buffer: ALIGN(memsz, PAGE_SIZE)
        align = max(seg.align, PAGE)  # and buf_align at least PAGE_SIZE
        for i, (phys, size) in enumerate(areas):
            end = phys + size - 1
            # locate_mem_hole_callback: the whole area must hold it, above buf_min
            if size < memsz or end < seg.buf_min:
                continue
            mem = _top_down(phys, end, memsz, align, buf_min=seg.buf_min, placed=taken)
            if mem is not None:
                placed.append((seg, i, mem))
                taken.append((mem, mem + memsz - 1))
                break
        else:
            return placed, seg
    return placed, None


def check_scratch(
    obs: BootObservation, target: Target | None, initrd_size: int | None, cmdline: str
) -> Check:
    total = sum(n for _, n in obs.scratch)
    if not obs.scratch or total == 0:
        return _fail(
            "scratch",
            "no KHO scratch areas (scratch_len/bootmem_len missing or "
            "zero): the next kernel has no memory to boot in",
        )
    areas = ", ".join(_size(n) for _, n in obs.scratch)
    cmdline_len = len(cmdline.encode()) + 1  # kexec-tools passes the NUL too
    segs = kexec_segments(target, initrd_size, cmdline_len, len(obs.scratch))
    placed, misfit = place_segments(obs.scratch, segs)
    where = "; ".join(f"{s.label} in area {i} at 0x{mem:x}" for s, i, mem in placed)
    if misfit is not None:
        kind = target.image.kind if target is not None and target.image else None
        if kind is not None and kind != "bzImage":
            # modelled on x86's bzImage64_load; arm64's image_load places bottom-up and adds
            # a DTB segment: told, not a refusal made on another architecture's rules
            return _fail(
                "scratch",
                f"{misfit.label} may fit in no scratch area ({areas}), placed as x86's "
                f"bzImage loader would; this {kind} loader places its segments otherwise",
                WARNING,
            )
        return _fail(
            "scratch",
            f"{misfit.label} fits in no scratch area ({areas}"
            + (f"; placed before it: {where}" if where else "")
            + "): with KHO on every kexec segment must lie in one scratch area and the "
            "load fails with -EADDRNOTAVAIL; raise kho_scratch= (7.4: kho_bootmem=)",
        )
    unplaced = "" if target is not None else "; the kernel not placed (no readable --kernel)"
    return _ok("scratch", f"{len(obs.scratch)} areas: {areas}; {where}{unplaced}")


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
    paths: HostPaths,
    obs: BootObservation,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str | None = None,
) -> tuple[list[Check], Target | None, str | None]:
    """``cmdline``: the new kernel's command line (``--append``); the running one's
    when None (``--reuse-cmdline``)."""
    checks = check_kho(paths, obs)
    running, running_src = running_abi(paths, obs)
    target: Target | None = None
    initrd_size: int | None = None
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
    if obs.kho_enabled and all(c.ok for c in checks if c.name == "debugfs"):
        checks.append(
            check_scratch(obs, target, initrd_size, obs.cmdline if cmdline is None else cmdline)
        )
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
