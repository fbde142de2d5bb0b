"""The installed package in a Debian 13 guest that systemd boots (issue 14, scenario 1,
the cold boot): khod.service starts by itself and records the boot, nothing fails,
and the journal shows no denial from a khod unit.

The guest (tests/vm/guestimage.py): the .deb built from this checkout installed with
apt in a trixie image, root on virtio-9p, the suite's kernel ``a`` with KHO on.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from tests.debian import build_deb
from tests.vm import guestimage, harness, kernel

pytestmark = pytest.mark.vm
KHO_APPEND = f"{harness.BASE_APPEND} kho=on"
DENIALS = ("SIGSYS", "EPERM", "Permission denied", "Traceback")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> guestimage.Boot:
    deb, _ = build_deb(tmp_path_factory.mktemp("deb"))
    tar, built = guestimage.image(deb)
    b = guestimage.boot(tar, kernel.kernels() / "bzImage-a", KHO_APPEND)
    report = "\n".join(
        [
            f"== systemd guest: cold boot to poweroff in {b.seconds:.0f}s (qemu rc {b.rc}); "
            + (f"image built in {built:.0f}s" if built else f"image cached ({tar.name})"),
            "-- journalctl -b -u khod",
            b.out("journal-khod").rstrip(),
            "-- systemd-analyze time",
            b.out("analyze-time").rstrip(),
            "-- systemd-analyze blame | head",
            b.out("analyze-blame").rstrip(),
            f"(run directory: {b.dir})",
        ]
    )
    guestimage.TABLES.append(report)
    print(f"\n{report}", file=sys.stderr)
    return b


def khod_lines(b: guestimage.Boot) -> list[str]:
    """The journal's lines from khod's own units (the test's khod-e2e.service aside)."""
    unit = re.compile(r"\bkhod(-pstore|-kexec|-fleet-report)?(\.service|\.timer|\[\d+\])")
    journal = b.out("journal").splitlines()  # the whole boot's: khod.service's and the rest
    return [line for line in journal if unit.search(line) and "khod-e2e" not in line]


def test_khod_records_the_cold_boot_by_itself(guest: guestimage.Boot) -> None:
    assert guest.rc == 0 and guest.out("done"), guest.serial[-5000:]
    said = re.findall(r"khod-e2e: boot_id=(\S+)", guest.serial)
    assert len(said) == 1, guest.serial[-5000:]
    assert guest.out("is-active").strip() == "active", guest.out("journal-khod")
    status = json.loads(guest.out("status.json") or "{}")
    assert (status.get("boot_id"), status.get("kind"), status.get("recorded")) == (
        said[0],
        "cold",
        True,
    ), (status, guest.out("status.err"))


def test_nothing_failed_and_no_denials(guest: guestimage.Boot) -> None:
    assert guest.out("done"), guest.serial[-5000:]
    assert guest.out("failed").strip() == "", guest.out("failed")
    denied = [line for line in khod_lines(guest) if any(d in line for d in DENIALS)]
    assert denied == [], "\n".join(denied)
