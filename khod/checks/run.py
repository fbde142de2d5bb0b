"""All the pre-kexec checks in order, and their verdict."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from khod.checks.base import ERROR, Check, fail, ok
from khod.checks.host import check_kexec_tools, check_liveupdate, check_loaded, check_lockdown
from khod.checks.placement import check_scratch
from khod.checks.state import check_finalize, check_kho, check_metadata, check_out_fdt, running_abi
from khod.checks.target import Target, check_target, inspect_target, running_image_abi
from khod.errors import ParseError, SourceError
from khod.observation import BootObservation
from khod.paths import HostPaths


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
    running, running_src = running_abi(obs)
    if running_src == "release table":  # this kernel's own state did not say
        running, running_src = running_image_abi(paths, obs.release) or (running, running_src)
    target: Target | None = None
    initrd_size: int | None = None
    if initrd is not None:
        try:
            initrd_size = initrd.stat().st_size
            checks.append(ok("initrd", f"{initrd} ({initrd_size >> 10} KiB)"))
        except OSError as e:
            checks.append(fail("initrd", f"{initrd}: {e.strerror}"))
    if kernel is not None:
        try:
            target = inspect_target(paths, kernel)
        except (SourceError, ParseError) as e:
            checks.append(fail("image", str(e)))
    if obs.kho_enabled and all(c.ok for c in checks if c.name == "debugfs"):
        checks.append(
            check_scratch(
                obs,
                target,
                initrd_size,
                obs.cmdline if cmdline is None else cmdline,
                _fdt_size(paths),
            )
        )
        checks.append(check_out_fdt(paths, obs))
        checks.append(check_metadata(obs, running))
        checks.append(check_finalize(paths, obs))
    if target is not None:
        checks += check_target(target, running, running_src)
    kt, exe = check_kexec_tools()
    checks += [kt, check_lockdown(paths), check_loaded(paths), check_liveupdate(paths)]
    return checks, target, exe


def verdict(checks: list[Check]) -> bool:
    return not any(not c.ok and c.severity == ERROR for c in checks)


def checks_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": verdict(checks), "checks": [asdict(c) for c in checks]}


def _fdt_size(paths: HostPaths) -> int | None:
    """The running kernel's FDT (the new DTB is made from it): its size, where readable."""
    try:
        return paths.firmware_fdt.stat().st_size or None
    except OSError:
        return None
