"""The host's side of a kexec: kexec-tools, lockdown, an image already loaded, LUO."""

from __future__ import annotations

import re
import shutil
import subprocess

from khod.checks.base import INFO, WARNING, Check, fail, ok
from khod.errors import SourceError
from khod.paths import HostPaths
from khod.sources.files import read_optional


def check_kexec_tools() -> tuple[Check, str | None]:
    exe = shutil.which("kexec")
    if exe is None:
        return fail("kexec-tools", "kexec not found on PATH (install kexec-tools)"), None
    try:
        r = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return fail("kexec-tools", f"{exe} --version failed: {e}"), exe
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", r.stdout + r.stderr)
    if not m:
        return fail("kexec-tools", f"{exe}: cannot tell its version", WARNING), exe
    ver = tuple(int(x) for x in m.groups())
    if ver < (2, 0, 10):
        return fail("kexec-tools", f"{exe} {m.group(0)} predates the file loader (-s)"), exe
    return ok(
        "kexec-tools",
        f"{exe} {m.group(0)}; loads with -s (kexec_file_load, the only loader that carries KHO)",
    ), exe


def check_lockdown(paths: HostPaths) -> Check:
    try:
        raw = read_optional(paths.lockdown, paths.rel(paths.lockdown))
    except SourceError:
        raw = None
    if raw is None:
        return ok("lockdown", "no lockdown state exposed", INFO)
    m = re.search(r"\[(\w+)\]", raw.decode("ascii", "replace"))
    mode = m.group(1) if m else "unknown"
    if mode != "none":
        return fail(
            "lockdown",
            f"lockdown is {mode!r}: the target must be signed with a key the kernel trusts",
            WARNING,
        )
    return ok("lockdown", "lockdown none", INFO)


def check_loaded(paths: HostPaths) -> Check:
    for p in paths.kexec_loaded:
        try:
            raw = read_optional(p, paths.rel(p))
        except SourceError:
            continue
        if raw is not None:
            if raw.strip() == b"1":
                return fail(
                    "kexec-loaded",
                    f"an image is already loaded ({paths.rel(p)}); "
                    "it may lack KHO: khoctl kexec replaces it with kexec -s -l",
                    WARNING,
                )
            return ok("kexec-loaded", "no image loaded", INFO)
    return ok("kexec-loaded", "kexec_loaded not exposed", INFO)


def check_liveupdate(paths: HostPaths) -> Check:
    if paths.liveupdate.exists():
        return ok(
            "liveupdate",
            f"{paths.rel(paths.liveupdate)} present (LUO is on; not opened: it has one holder)",
            INFO,
        )
    return ok("liveupdate", "no /dev/liveupdate", INFO)
