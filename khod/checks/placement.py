"""Where the kernel would put each kexec segment, and whether they fit beside the KHO
scratch areas (KERNEL-INTERFACES.md section 10)."""

from __future__ import annotations

from dataclasses import dataclass

from khod.checks.base import WARNING, Check, fail, ok
from khod.checks.target import Target
from khod.observation import BootObservation

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
    top_down: bool = True
    above_kernel: bool = False  # arm64: "not allocate anything below the kernel"
    within_32g: bool = False  # arm64 initrd: a 1 GiB-aligned 32 GiB window from the kernel


# arch/arm64/kernel/kexec_image.c, machine_kexec_file.c: the kernel bottom-up at 2 MiB
# (MIN_KIMG_ALIGN), then the initrd bottom-up above it, then the DTB top-down at 2 MiB
# above it (the running kernel's FDT with the new command line; its size when unknown)
ARM64_KERNEL_ALIGN = 2 * MiB
ARM64_DTB_ALIGN = 2 * MiB
ARM64_DTB_DEFAULT = 64 << 10
GiB = 1 << 30


def arm64_segments(
    target: Target | None, initrd_size: int | None, cmdline_len: int, dtb_size: int | None
) -> list[Segment]:
    segs = []
    img = target.image if target else None
    if target is not None and img is not None:
        size = img.init_size or target.size
        what = f"image_size {_size(size)}" if img.init_size else f"file size {_size(size)}"
        segs.append(Segment(f"kernel ({what})", size, ARM64_KERNEL_ALIGN, 0, top_down=False))
    if initrd_size is not None:
        segs.append(
            Segment(
                f"initrd ({_size(initrd_size)})",
                initrd_size,
                PAGE,
                0,
                top_down=False,
                above_kernel=True,
                within_32g=True,
            )
        )
    dtb = (dtb_size or ARM64_DTB_DEFAULT) + cmdline_len
    segs.append(Segment(f"DTB ({_size(dtb)})", dtb, ARM64_DTB_ALIGN, 0, above_kernel=True))
    return segs


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


def _bottom_up(
    start: int,
    end: int,
    memsz: int,
    align: int,
    *,
    buf_min: int,
    buf_max: int,
    placed: list[tuple[int, int]],
) -> int | None:
    """``locate_mem_hole_bottom_up``: the lowest aligned start in [start, end]."""
    cand = max(start, buf_min)
    while True:
        cand = -(-cand // align) * align
        last = cand + memsz - 1
        if last > end or last > buf_max:
            return None
        clash = [e for s, e in placed if s <= last and cand <= e]
        if not clash:
            return cand
        cand = max(clash) + 1


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
    kernel: tuple[int, int] | None = None  # arm64: where the kernel went
    for seg in segs:
        memsz = -(-seg.memsz // PAGE) * PAGE  # kexec_add_buffer: ALIGN(memsz, PAGE_SIZE)
        align = max(seg.align, PAGE)  # and buf_align at least PAGE_SIZE
        buf_min, buf_max = seg.buf_min, (1 << 64) - 1
        if seg.above_kernel and kernel is not None:
            buf_min = kernel[0] + kernel[1]
            if seg.within_32g:
                buf_max = kernel[0] - kernel[0] % GiB + 32 * GiB
        for i, (phys, size) in enumerate(areas):
            end = phys + size - 1
            # locate_mem_hole_callback: the whole area must hold it, above buf_min
            if size < memsz or end < buf_min:
                continue
            if seg.top_down:
                mem = _top_down(phys, end, memsz, align, buf_min=buf_min, placed=taken)
            else:
                mem = _bottom_up(
                    phys, end, memsz, align, buf_min=buf_min, buf_max=buf_max, placed=taken
                )
            if mem is not None:
                if seg.label.startswith("kernel"):
                    kernel = (mem, memsz)
                placed.append((seg, i, mem))
                taken.append((mem, mem + memsz - 1))
                break
        else:
            return placed, seg
    return placed, None


def check_scratch(
    obs: BootObservation,
    target: Target | None,
    initrd_size: int | None,
    cmdline: str,
    dtb_size: int | None = None,
) -> Check:
    total = sum(n for _, n in obs.scratch)
    if not obs.scratch or total == 0:
        return fail(
            "scratch",
            "no KHO scratch areas (scratch_len/bootmem_len missing or "
            "zero): the next kernel has no memory to boot in",
        )
    areas = ", ".join(_size(n) for _, n in obs.scratch)
    cmdline_len = len(cmdline.encode()) + 1  # kexec-tools passes the NUL too
    segs = kexec_segments(target, initrd_size, cmdline_len, len(obs.scratch))
    kind = target.image.kind if target is not None and target.image else None
    if kind == "arm64-Image":  # arm64's image_load, not x86's bzImage64_load
        segs = segs[:1] + arm64_segments(target, initrd_size, cmdline_len, dtb_size)
    placed, misfit = place_segments(obs.scratch, segs)
    where = "; ".join(f"{s.label} in area {i} at 0x{mem:x}" for s, i, mem in placed)
    if misfit is not None:
        if kind is not None and kind not in ("bzImage", "arm64-Image"):
            # an EFI zboot image: its loader unpacks it first, its size is not known here
            return fail(
                "scratch",
                f"{misfit.label} may fit in no scratch area ({areas}), placed as x86's "
                f"bzImage loader would; this {kind} loader places its segments otherwise",
                WARNING,
            )
        return fail(
            "scratch",
            f"{misfit.label} fits in no scratch area ({areas}"
            + (f"; placed before it: {where}" if where else "")
            + "): with KHO on every kexec segment must lie in one scratch area and the "
            "load fails with -EADDRNOTAVAIL; raise kho_scratch= (7.4: kho_bootmem=)",
        )
    unplaced = "" if target is not None else "; the kernel not placed (no readable --kernel)"
    return ok("scratch", f"{len(obs.scratch)} areas: {areas}; {where}{unplaced}")
