"""The systemd units: systemd-analyze verify (no output at all: it exits 0 even on an
ordering cycle) and the offline security exposure, reported and held at <= 2.5."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNITS = REPO / "systemd"
KHOD = str(Path(sys.executable).parent / "khod")
KHOCTL = str(Path(sys.executable).parent / "khoctl")
SERVICES = (
    "khod.service",
    "khod-pstore.service",
    "khod-kexec.service",
    "khod-fleet-report.service",
    "khod-fleet-retain.service",
    "khod-once.service",
)
TIMERS = ("khod-fleet-report.timer", "khod-fleet-retain.timer")


def installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at this checkout's scripts (verify checks it)."""
    text = (
        (UNITS / name).read_text().replace("/usr/bin/khoctl", KHOCTL).replace("/usr/bin/khod", KHOD)
    )
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_units_verify_cleanly(tmp_path: Path) -> None:
    units = [str(installed_copy(tmp_path, n)) for n in (*SERVICES, *TIMERS)]
    # verify runs man(1) on each Documentation=man:...: the pages the package installs
    from khod.cli import docgen

    man = tmp_path / "man"
    for page in docgen.write_man(tmp_path / "pages"):
        (man / f"man{page.suffix[1:]}").mkdir(parents=True, exist_ok=True)
        page.rename(man / f"man{page.suffix[1:]}" / page.name)
    r = subprocess.run(
        ["systemd-analyze", "verify", *units],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MANPATH": str(man)},
    )
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(installed_copy(tmp_path, name))],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    with capsys.disabled():
        print(f"\n{name}: systemd-analyze security exposure {m.group(1)}")
    assert float(m.group(1)) <= 2.5


def test_khod_service_keeps_the_contract() -> None:
    text = (UNITS / "khod.service").read_text()
    for line in (
        "Type=notify",
        "StateDirectory=khod",
        "After=sys-kernel-debug.mount systemd-pstore.service khod-pstore.service",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "IPAddressAllow=localhost",
    ):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    # a configuration that does not parse (exit status 78, EX_CONFIG) is not restarted
    # every RestartSec: it stays failed, with its one line, until the operator acts
    assert re.search(r"^RestartPreventExitStatus=78$", text, re.M)
    # not an early unit: its imports and database must not hold sysinit.target
    assert "DefaultDependencies=no" not in text
    assert not re.search(r"^Before=.*(sysinit|systemd-pstore)", text, re.M)


def test_kexec_hook_runs_at_kexec_target_before_the_kexec() -> None:
    text = (UNITS / "khod-kexec.service").read_text()
    assert "WantedBy=kexec.target" in text
    assert re.search(r"^Before=.*systemd-kexec.service", text, re.M)
    assert "ExecStart=/usr/bin/khoctl record-kexec" in text


def test_once_mode_is_the_alternative_to_the_daemon() -> None:
    """khod-once.service: khod --once writing node_exporter's textfile, instead of
    khod.service; the udev rule runs it again when a pstore backend module loads, on
    hosts where it is the enabled one."""
    text = (UNITS / "khod-once.service").read_text()
    assert "Type=oneshot" in text and "Conflicts=khod.service" in text
    (start,) = re.findall(r"^ExecStart=(.*)$", text, re.M)
    assert start.split()[:2] == ["/usr/bin/khod", "--once"] and "--textfile" in start
    assert "WantedBy=multi-user.target" in text
    rule = (UNITS / "60-khod-once.rules").read_text().replace("\\\n", "")
    (line,) = [ln for ln in rule.splitlines() if ln and not ln.startswith("#")]
    keys = {}
    for part in line.split(","):
        m = re.match(r'\s*([A-Z_]+(?:\{\w+\})?)\s*(?:==|\+=|=)\s*"([^"]*)"', part)
        assert m, part
        keys[m.group(1)] = m.group(2)
    assert keys["SUBSYSTEM"] == "module" and keys["ACTION"] == "add"
    assert {"ramoops", "efi_pstore", "pstore_blk"} <= set(keys["KERNEL"].split("|"))
    assert keys["TAG"] == "systemd" and keys["ENV{SYSTEMD_WANTS}"] == "khod-once.service"
    assert keys["TEST"].endswith("multi-user.target.wants/khod-once.service")


def test_the_packages_install_every_unit_and_rule() -> None:
    repo = UNITS.parent
    rules = (repo / "packaging/debian/rules").read_text()
    deb = rules + (repo / "packaging/debian/khod.install").read_text()
    spec = (repo / "packaging/rpm/khod.spec").read_text()
    (units,) = re.findall(r"^UNITS = (.*)$", rules, re.M)
    for f in sorted(UNITS.iterdir()):
        if f.suffix in (".service", ".timer"):
            assert f.stem in units.split() or f"cp systemd/{f.name}" in rules, f.name
            assert f"--name={f.stem}" in rules, f.name
        else:
            assert f"systemd/{f.name}" in deb, f.name
        assert f"systemd/{f.name}" in spec, f.name
        if f.suffix == ".rules":
            assert f"%{{_udevrulesdir}}/{f.name}" in spec, f.name
        elif f.suffix in (".service", ".timer"):
            assert f"%{{_unitdir}}/{f.name}" in spec, f.name
