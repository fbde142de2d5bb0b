"""``khoctl check``, ``khoctl kexec`` and ``khoctl record-kexec`` (the kexec.target hook).

Every command runs as an argv list, never through a shell. A kexec is destructive: it
is refused when an error-severity check fails, unless ``--force``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from khod.cli.common import Cmd, host_paths, print_json, print_text
from khod.errors import KhodError

if TYPE_CHECKING:  # annotations only
    from khod.checks.base import Check
    from khod.observation import BootObservation
    from khod.paths import HostPaths


def add_parsers(cmd: Cmd) -> None:
    c = cmd("check", "check the outgoing KHO state (and a target kernel) before a kexec", cmd_check)
    c.add_argument("--kernel", type=Path, metavar="IMAGE", help="also check this kernel image")
    c.add_argument("--initrd", type=Path, metavar="FILE", help="... and this initramfs")
    c.add_argument("--json", action="store_true", help="print JSON (see khoctl(8))")
    c = cmd("kexec", "check, record the attempt, load with kexec -s -l, then kexec", cmd_kexec)
    c.add_argument(
        "--kernel", type=Path, metavar="IMAGE", required=True, help="the kernel to kexec"
    )
    c.add_argument("--initrd", type=Path, metavar="FILE", help="its initramfs")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--append", metavar="CMDLINE", help="the new kernel's command line")
    g.add_argument(
        "--reuse-cmdline",
        action="store_true",
        help="the running kernel's command line (the default)",
    )
    c.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    c.add_argument("--force", action="store_true", help="go on despite failed error checks")
    c.add_argument(
        "--now",
        action="store_true",
        help="kexec -e at once instead of systemctl kexec (no clean shutdown)",
    )
    c.add_argument("--json", action="store_true", help="print JSON (see khoctl(8))")
    c = cmd(
        "record-kexec",
        "record a kexec attempt made without khoctl (kexec.target hook)",
        cmd_record_kexec,
    )


def _collect(args: argparse.Namespace) -> tuple[HostPaths, BootObservation]:
    from khod.collect.boot import collect  # noqa: PLC0415

    paths = host_paths(args)
    return paths, collect(paths)


def _print_checks(checks: Sequence[Check], ok: bool) -> None:
    mark = {True: "ok  ", False: "FAIL"}
    for c in checks:
        sev = "" if c.ok else f" [{c.severity}]"
        print_text(f"{mark[c.ok]} {c.name:<18} {c.detail}{sev}")
    print("ok" if ok else "not ok: an error-severity check failed")


def _fleet(args: argparse.Namespace, checks: list[Check], running: str, target: str | None) -> None:
    """The fleet's verdict on running -> target, from the report [fleet] verdicts names."""
    from khod.checks.fleet import check_fleet  # noqa: PLC0415
    from khod.config import load_config  # noqa: PLC0415

    config = getattr(args, "config", None)
    source = load_config(config, required=config is not None).fleet_verdicts
    c = check_fleet(source, running, target)
    if c is not None:
        checks.append(c)


def cmd_check(args: argparse.Namespace) -> int:
    from khod.checks.run import checks_json, run_checks, verdict  # noqa: PLC0415

    paths, obs = _collect(args)
    checks, target, _ = run_checks(paths, obs, args.kernel, args.initrd)
    _fleet(args, checks, obs.release, target.release if target else None)
    ok = verdict(checks)
    if args.json:
        print_json(checks_json(checks), "check")
    else:
        _print_checks(checks, ok)
    return 0 if ok else 1


def plan_argv(args: argparse.Namespace, kexec: str) -> list[list[str]]:
    load = [kexec, "-s", "-l", str(args.kernel)]
    if args.initrd is not None:
        load.append(f"--initrd={args.initrd}")
    load.append(f"--append={args.append}" if args.append is not None else "--reuse-cmdline")
    if args.now:
        return [load, [kexec, "-e"]]
    return [load, [shutil.which("systemctl") or "systemctl", "kexec"]]


def cmd_kexec(args: argparse.Namespace) -> int:
    from dataclasses import asdict  # noqa: PLC0415

    from khod.checks.run import run_checks, verdict  # noqa: PLC0415

    paths, obs = _collect(args)
    checks, target, exe = run_checks(paths, obs, args.kernel, args.initrd, args.append)
    _fleet(args, checks, obs.release, target.release if target else None)
    ok = verdict(checks)
    argv = plan_argv(args, exe or "kexec")
    expect = {"previous_release": obs.release, "kexec_count": (obs.kexec_count or 0) + 1}
    failed = [c.name for c in checks if not c.ok and c.severity == "error"]
    plan = {
        "ok": ok,
        "checks": [asdict(c) for c in checks],
        "expect": expect,
        "argv": argv,
        "forced": bool(failed) and args.force,
        "dry_run": args.dry_run,
    }
    if args.json:
        print_json(plan, "kexec")
    else:
        _print_checks(checks, ok)
        print_text(
            f"the next boot must show: previous_release {expect['previous_release']}, "
            f"kexec_count {expect['kexec_count']}"
        )
        for a in argv:
            print_text(("would run: " if args.dry_run else "run: ") + " ".join(a))
    if failed and not args.force:
        raise KhodError(f"refusing to kexec: {', '.join(failed)} failed (--force to go on)")
    if args.dry_run:
        return 0
    if exe is None:
        raise KhodError("kexec not found on PATH (install kexec-tools)")
    from khod.store.attempts import fail_attempt, save_attempt  # noqa: PLC0415
    from khod.store.boots import save_observation  # noqa: PLC0415
    from khod.store.db import open_store  # noqa: PLC0415

    store = open_store(args.db)
    try:
        boot_pk = save_observation(store, obs).boot_pk
        attempt = save_attempt(
            store,
            {
                "machine_id": obs.machine_id,
                "from_boot": boot_pk,
                "source": "khoctl",
                "target_image": str(args.kernel),
                "target_release": target.release if target else None,
                "target_abi": target.abi if target else None,
                "initrd": str(args.initrd) if args.initrd else None,
                "cmdline": args.append,
                "checks": plan["checks"],
                "forced": plan["forced"],
                "argv": argv,
                "expected_previous_release": expect["previous_release"],
                "expected_kexec_count": expect["kexec_count"],
            },
        )
        for step in argv:
            r = subprocess.run(
                step, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
            )
            if r.returncode != 0:
                msg = (r.stderr or r.stdout).strip().splitlines()
                why = msg[-1] if msg else f"exit status {r.returncode}"
                fail_attempt(store, attempt, f"{step[0]} {step[1]}: {why}")
                raise KhodError(f"{' '.join(step[:3])} failed: {why}")
    finally:
        store.dispose()
    if not args.json:
        print(f"kexec attempt #{attempt} recorded; the next boot will give its verdict")
    return 0


def cmd_record_kexec(args: argparse.Namespace) -> int:
    """Run from kexec.target: record what is about to happen, unless khoctl kexec did."""
    from dataclasses import asdict  # noqa: PLC0415

    from khod.checks.host import check_loaded  # noqa: PLC0415
    from khod.checks.run import run_checks  # noqa: PLC0415
    from khod.store.attempts import has_open_attempt, save_attempt  # noqa: PLC0415
    from khod.store.boots import save_observation  # noqa: PLC0415
    from khod.store.db import open_store  # noqa: PLC0415

    paths, obs = _collect(args)
    store = open_store(args.db)
    try:
        boot_pk = save_observation(store, obs).boot_pk
        if has_open_attempt(store, obs.machine_id, boot_pk):
            print("khoctl: this kexec was recorded by khoctl kexec")
            return 0
        checks, _, _ = run_checks(paths, obs, None, None)
        attempt = save_attempt(
            store,
            {
                "machine_id": obs.machine_id,
                "from_boot": boot_pk,
                "source": "hook",
                "target_image": None,
                "target_release": None,
                "target_abi": None,
                "initrd": None,
                "cmdline": None,
                "checks": [asdict(c) for c in checks],
                "forced": False,
                "argv": [],
                "expected_previous_release": obs.release,
                "expected_kexec_count": (obs.kexec_count or 0) + 1,
            },
        )
    finally:
        store.dispose()
    loaded = check_loaded(paths)
    print(f"khoctl: kexec attempt #{attempt} recorded (not through khoctl kexec)")
    if not loaded.ok:
        print(
            "khoctl: warning: the image was loaded without khoctl: a plain `kexec -l` (or "
            "systemctl kexec's own load) may have used the classic loader, which carries no "
            "KHO; the next boot will tell",
            file=sys.stderr,
        )
    return 0
