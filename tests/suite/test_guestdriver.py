"""The systemd guest's driver (tests/vm/guestdriver.py) on this host, with the guest's
systemctl, journalctl and khoctl stood in by scripts: a report is written only once the
journal holds what khod journaled for the boot (khod says READY=1 first)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from khod.adapters import sd
from tests.vm import guestdriver

RECORDED = sd.MESSAGE_IDS["boot-recorded"]
# journald has the entry from the 8th journalctl call on (any later one would do)
JOURNALCTL = f"""#!/bin/sh
n=$(cat "$STUBS/calls" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$STUBS/calls"
echo "$*" >> "$STUBS/journalctl.log"
[ $n -ge 8 ] || exit 0
case "$*" in
  *-x*) echo "Dec 05 vm khod[149]: khod recorded boot B: 7.3.4-khod-a, cold"
        echo "-- Subject: khod recorded boot B: cold" ;;
  *MESSAGE_ID={RECORDED}*) echo "khod recorded boot B: 7.3.4-khod-a, cold" ;;
esac
"""


@pytest.fixture
def stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "stubs"
    d.mkdir()
    scripts = {
        "journalctl": JOURNALCTL,
        "systemctl": '#!/bin/sh\ncase "$*" in *is-active*) cat "$STUBS/state" ;; esac\n',
        "khoctl": "#!/bin/sh\necho '{}'\n",
        "systemd-analyze": "#!/bin/sh\n",
    }
    for name, text in scripts.items():
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    monkeypatch.setenv("STUBS", str(d))
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}/usr/bin{os.pathsep}/bin")
    # the guest's kernel log and /metrics: not this host's (/dev/kmsg is not written)
    monkeypatch.setattr(guestdriver, "kmsg", lambda msg: None)
    monkeypatch.setattr(guestdriver, "metrics", lambda d, name: None)
    return d


def test_the_report_waits_for_khods_journal_entry(stubs: Path, tmp_path: Path) -> None:
    (stubs / "state").write_text("active\n")
    guestdriver.report(tmp_path / "boot-0")
    assert "Subject: khod recorded boot B: cold" in (tmp_path / "boot-0" / "journal-x").read_text()


def test_no_wait_when_khod_is_not_running(stubs: Path, tmp_path: Path) -> None:
    (stubs / "state").write_text("inactive\n")  # masked: nothing will be journaled
    guestdriver.report(tmp_path / "boot-0")
    polls = [c for c in (stubs / "journalctl.log").read_text().splitlines() if RECORDED in c]
    assert len(polls) <= 1, polls


def test_the_guest_driver_looks_for_khods_own_message_ids() -> None:
    """The driver runs in the guest, apart from khod: its MESSAGE_IDs are copies, held
    here to khod's (a regenerated id once left every pstore entry unseen in the guest)."""
    from tests.vm import guestdriver

    assert sd.MESSAGE_IDS["boot-recorded"] == guestdriver.RECORDED_ID
    for name, mid in guestdriver.MESSAGE_IDS.items():
        assert mid == sd.MESSAGE_IDS[name], name
