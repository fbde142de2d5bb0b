"""The target kernel image: what it says about itself, and will it take the handover?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from khod.checks.base import WARNING, Check, fail, ok
from khod.errors import ParseError, SourceError
from khod.parse import kimage
from khod.parse.compat import same_abi, split_compat
from khod.paths import HostPaths
from khod.sources.files import read_bytes, read_optional

IMAGE_LIMIT = 512 << 20


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


def running_image_abi(paths: HostPaths, release: str) -> tuple[str, str] | None:
    """The KHO ABI the running kernel's own installed image speaks (its embedded
    KHO_FDT_COMPATIBLE), where the image is found and says: better than the release
    table, which knows only stock kernels."""
    for image in paths.boot_image(release):
        if not image.is_file():
            continue
        try:
            found = inspect_target(paths, image)
        except (SourceError, ParseError):
            continue
        if found.abi_source == "image" and found.abi and found.release == release:
            return found.abi, paths.rel(image)
    return None


def check_target(target: Target, running: str | None, running_src: str) -> list[Check]:
    out = []
    img = target.image
    assert img is not None
    out.append(
        ok(
            "image",
            f"{img.kind}"
            + (f" (boot protocol {img.protocol})" if img.protocol else "")
            + f", release {target.release or 'unknown'}",
        )
    )
    if target.config is None:
        out.append(
            fail(
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
                fail(
                    "image-config",
                    f"the target lacks {', '.join(missing)} "
                    f"({target.config_source}): it cannot take a handover",
                )
            )
        else:
            out.append(
                ok(
                    "image-config",
                    f"CONFIG_KEXEC_HANDOVER=y, CONFIG_KEXEC_FILE=y ({target.config_source})",
                )
            )
    if target.abi is None or running is None:
        out.append(
            fail(
                "abi",
                f"cannot tell the KHO ABI of the target ({target.abi}) or of "
                f"this kernel ({running})",
                WARNING,
            )
        )
    elif not same_abi(running, target.abi):  # the kernel matches the whole compatible
        ours, theirs = split_compat(running), split_compat(target.abi)
        tags = ""
        if ours.base == theirs.base:
            tags = (
                f" (same base {ours.base!r}, feature tags "
                f"{';'.join(ours.tags) or 'none'} vs {';'.join(theirs.tags) or 'none'}: "
                "the kernel compares the whole string)"
            )
        out.append(
            fail(
                "abi",
                f"this kernel speaks {running!r} ({running_src}), the target "
                f"{target.abi!r} ({target.abi_source}){tags}: the target would refuse the "
                "handover, lose all handover data and reset the count",
            )
        )
    else:
        out.append(ok("abi", f"both speak {running!r} (target: {target.abi_source})"))
    return out
