"""The outgoing KHO state of the running kernel: is it sound (KERNEL-INTERFACES.md
sections 3, 6, 8)?"""

from __future__ import annotations

from khod.checks.base import INFO, WARNING, Check, fail, ok
from khod.errors import ParseError, SourceError
from khod.observation import BootObservation, EventSource, Severity
from khod.parse import kimage
from khod.parse.kho import parse_kho_fdt
from khod.paths import HostPaths
from khod.records import Direction
from khod.sources.files import is_dir


def outgoing(obs: BootObservation, name: str) -> bytes | None:
    """The bytes of ``out/<name>`` as collection read them (the observation keeps every
    KHO file it read: the checks read nothing of KHO again)."""
    for b in obs.blobs:
        if b.direction == Direction.OUT and b.name == name:
            return b.data
    return None


def read_failure(obs: BootObservation, shown: str) -> str | None:
    """Why collection could not read ``shown``, if it could not."""
    for ev in obs.events:
        if ev.kind == "read-error" and ev.source == shown:
            return ev.message
    return None


def running_abi(obs: BootObservation) -> tuple[str | None, str]:
    """The KHO ABI this kernel speaks: its incoming or outgoing root compatible, else the
    release table."""
    if obs.kho_abi:
        return obs.kho_abi, "in/fdt"
    data = outgoing(obs, "fdt")
    if data:
        try:
            return parse_kho_fdt(data, "out/fdt").compatible, "out/fdt"
        except ParseError:
            pass
    return kimage.kho_abi_for_release(obs.release), "release table"


def check_kho(paths: HostPaths, obs: BootObservation) -> list[Check]:
    out: list[Check] = []
    if not obs.kho_enabled:
        out.append(
            fail(
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
        ok(
            "kho-enabled",
            f"{paths.rel(paths.kho)} is present"
            if present
            else "KHO is on (told by the kernel command line and log)",
        )
    )
    try:
        readable = is_dir(paths.kho_out, paths.rel(paths.kho_out))
    except SourceError as e:  # debugfs is 0700 root: a user, or root without CAP_DAC_OVERRIDE
        out.append(fail("debugfs", f"{e}; khoctl check reads debugfs: run it as root"))
        return out
    if not readable:
        out.append(
            fail(
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
            out.append(fail("debugfs", f"{ev.message}; khoctl check reads debugfs: run it as root"))
            return out
    out.append(ok("debugfs", f"{paths.rel(paths.kho_out)} is readable"))
    return out


def check_out_fdt(paths: HostPaths, obs: BootObservation) -> Check:
    data = outgoing(obs, "fdt")
    failure = read_failure(obs, paths.rel(paths.kho_out_fdt))
    if failure is not None:
        return fail("out-fdt", failure, WARNING)
    if data is None:
        return ok(
            "out-fdt",
            "no out/fdt: a kernel entered by a KHO kexec does not show "
            "it (7.3), the handover still works",
            INFO,
        )
    try:
        root = parse_kho_fdt(data, paths.rel(paths.kho_out_fdt))
    except ParseError as e:
        sev = INFO if "truncated" in e.why else WARNING
        return fail(
            "out-fdt",
            f"{e} (debugfs sizes it at boot; later subtrees grow the FDT)"
            if sev == INFO
            else str(e),
            sev,
        )
    if not root.known:
        return fail("out-fdt", f"unknown KHO ABI {root.compatible!r}")
    return ok("out-fdt", f"valid, compatible {root.compatible!r}")


def check_metadata(obs: BootObservation, abi: str | None) -> Check:
    expected = (obs.kexec_count or 0) + 1
    if obs.out_kexec_count is None:
        if abi == "kho-v1":
            return ok("outgoing-metadata", "kho-v1 kernels (6.16-7.0) have no kexec-metadata", INFO)
        return fail(  # the handover is whole; only the kernel's word on the chain is gone
            "outgoing-metadata",
            "no out/sub_fdts/kexec-metadata: the next kernel will not say where it came "
            "from; khod takes it from khoctl kexec's attempt record",
            WARNING,
        )
    if (obs.out_release, obs.out_kexec_count) != (obs.release, expected):
        return fail(
            "outgoing-metadata",
            f"out/sub_fdts/kexec-metadata says {obs.out_release} "
            f"count {obs.out_kexec_count}, expected {obs.release} count {expected}",
        )
    return ok("outgoing-metadata", f"{obs.out_release} count {obs.out_kexec_count}")


def finalize_needed(paths: HostPaths, obs: BootObservation) -> bool:
    """Whether the running kernel needs ``out/finalize`` written before a KHO kexec and
    it is not yet: 6.16-7.0 (the file is there and reads 0) without LUO (LUO finalizes
    at its own reboot). Else the next kernel logs ``disabling KHO revival: -2``."""
    raw = outgoing(obs, "finalize")
    v = kimage.release_version(obs.release)
    if raw is None or (v is not None and v > (7, 0)) or paths.liveupdate.exists():
        return False
    return raw.decode("ascii", "replace").strip() == "0"


def check_finalize(paths: HostPaths, obs: BootObservation) -> Check:
    failure = read_failure(obs, paths.rel(paths.kho_out_finalize))
    if failure is not None:
        return fail("finalize", failure)
    raw = outgoing(obs, "finalize")
    release = obs.release
    v = kimage.release_version(release)
    if raw is None:
        if v is not None and v <= (7, 0):
            return fail(
                "finalize",
                f"{release} should have out/finalize (6.16-7.0) and it is missing",
                WARNING,
            )
        return ok("finalize", "no finalize step (7.1+)", INFO)
    state = raw.decode("ascii", "replace").strip()
    if state != "1":
        return fail(
            "finalize",
            f"out/finalize reads {state!r}: finalize KHO (echo 1 > "
            "out/finalize) before loading the kernel (6.17/6.18 need it before "
            "kexec -s -l)",
        )
    return ok("finalize", "finalized")
