"""Journal entries: received on journald's own socket path (bound by the test where no
journald runs), and the catalog checked by systemd's own parser."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from khod.adapters import sd
from khod.cli import khoctl, khod_main
from khod.cli.common import run_main
from khod.parse import pstore
from tests import variants
from tests.conftest import FIXTURES, REPO, SysrootFactory
from tests.daemon_helpers import BIN, running_daemon

CATALOG = REPO / "systemd" / "khod.catalog"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")


def test_catalog_parses_and_covers_every_message_id(tmp_path: Path) -> None:
    d = tmp_path / "usr/lib/systemd/catalog"
    d.mkdir(parents=True)
    shutil.copy(CATALOG, d)
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True)
    listed = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--list-catalog"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ids = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert ids == set(sd.MESSAGE_IDS.values())


def test_catalog_names_every_kind_and_its_man_pages() -> None:
    from khod.records import BootKind

    text = CATALOG.read_text()
    for kind in BootKind:
        assert f'"{kind.value}"' in text, kind
    entries = text.split("\n-- ")[1:]
    assert len(entries) == len(sd.MESSAGE_IDS)
    assert all("\nDocumentation: man:khod(8)" in e for e in entries)


def parse_native(datagram: bytes) -> dict[str, str]:
    """The journal native protocol: KEY=value lines (binary form for values with \\n)."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            fields[k.decode()] = v.decode()
            i = nl + 1
        else:
            size = int.from_bytes(datagram[nl + 1 : nl + 9], "little")
            fields[line.decode()] = datagram[nl + 9 : nl + 9 + size].decode()
            i = nl + 9 + size + 1
    return fields


@dataclass
class Journal:
    """A socket standing in for journald's, and the prefix that runs a command in a
    private mount namespace where it sits at /run/systemd/journal/socket (whether or not
    a journald runs on this host: its socket is left alone)."""

    sock: socket.socket
    prefix: list[str]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    d = tmp_path / "journal"
    d.mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(d / "socket"))
    JOURNAL_SOCKET.parent.mkdir(parents=True, exist_ok=True)  # the mount point
    prefix = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind "{d}" {JOURNAL_SOCKET.parent} && exec "$0" "$@"',
    ]
    try:
        yield Journal(s, prefix)
    finally:
        s.close()


def receive_all(s: socket.socket) -> list[dict[str, str]]:
    out = []
    s.settimeout(1)
    try:
        while True:
            out.append(parse_native(s.recv(1 << 20)))
    except TimeoutError:
        pass
    return out


def ingest_journaled(journal: Journal, tmp_path: Path, step: str, root: Path | None = None) -> None:
    """khod --once --journal on a fixture (or a copy of one, root), inside the
    journal's mount namespace."""
    r = subprocess.run(
        [
            *journal.prefix,
            str(BIN / "khod"),
            "--once",
            "--journal",
            "--sysroot",
            str(root or FIXTURES / step),
            "--db",
            f"sqlite:///{tmp_path / 'k.db'}",
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr


def test_journal_entries_of_a_kexec_boot_with_a_crash_record(
    journal: Journal, tmp_path: Path
) -> None:
    ingest_journaled(journal, tmp_path, "pstore/step0-boot2")
    entries = receive_all(journal.sock)
    by_id: dict[str, list[dict[str, str]]] = {}
    for e in entries:
        by_id.setdefault(e["MESSAGE_ID"], []).append(e)
    (boot,) = by_id[sd.MESSAGE_IDS["boot-recorded"]]
    assert boot["KHOD_BOOT_ID"] == "c8be1a8f-766f-4cb8-8a3b-fc30c50a300f"
    assert (boot["KHOD_KIND"], boot["KHOD_KEXEC_COUNT"]) == ("cold", "0")
    assert boot["SYSLOG_IDENTIFIER"] == "khod" and boot["PRIORITY"] == "6"
    crashes = by_id[sd.MESSAGE_IDS["pstore-crash"]]
    # the Emergency record is the restart that followed the panic: a record, not a crash
    assert sorted(e["KHOD_PSTORE_REASON"] for e in crashes) == ["Panic"]
    assert all(e["PRIORITY"] == "3" for e in crashes)
    records = by_id[sd.MESSAGE_IDS["pstore-record"]]
    assert "Emergency" in {e["KHOD_PSTORE_REASON"] for e in records}


def test_journal_entry_of_a_kexec(journal: Journal, tmp_path: Path) -> None:
    ingest_journaled(journal, tmp_path, "kexec1/step1")
    (boot,) = [
        e for e in receive_all(journal.sock) if e["MESSAGE_ID"] == sd.MESSAGE_IDS["boot-recorded"]
    ]
    assert (boot["KHOD_PREVIOUS_RELEASE"], boot["KHOD_KEXEC_COUNT"]) == ("7.3.4-khlab-a", "1")
    assert boot["MESSAGE"].endswith("kexec from 7.3.4-khlab-a (count 1)")
    assert boot["KHOD_METADATA_SOURCE"] == "kho"


@pytest.mark.parametrize(
    "drop", [(), ("dmesg-ramoops-0",), ("dmesg-ramoops-1",)], ids=["both", "emergency", "panic"]
)
def test_the_report_the_journal_and_the_parser_agree_on_what_a_crash_is(
    journal: Journal,
    sysroot: SysrootFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    drop: tuple[str, ...],
) -> None:
    """The real capture of a kexec'd kernel that panicked (panic=-1: a Panic record,
    then the Emergency record of the restart), and variants keeping one of the two."""
    db = f"sqlite:///{tmp_path / 'k.db'}"
    for step in ("pstore/step0", "pstore/step1"):
        argv = ["--once", "--sysroot", str(sysroot(step)), "--db", db]
        assert run_main("khod", khod_main.main, argv) == 0
    root = sysroot("pstore/step0-boot2")
    for name in drop:
        variants.remove(root, f"sys/fs/pstore/{name}")

    parser = set()
    for f in (root / "sys/fs/pstore").iterdir():
        head = pstore.parse_dmesg_header(f.read_bytes())
        if head is not None and head.crash:
            parser.add(f.name)

    ingest_journaled(journal, tmp_path, "", root)
    crash_id = sd.MESSAGE_IDS["pstore-crash"]
    entries = receive_all(journal.sock)
    journaled = {e["KHOD_PSTORE_NAME"] for e in entries if e["MESSAGE_ID"] == crash_id}

    capsys.readouterr()
    assert run_main("khoctl", khoctl.main, ["report", "transitions", "--json", "--db", db]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["previous_release"], row["release"]) == ("7.3.4-khlab-a", "7.3.4-khlab-b")

    assert journaled == parser
    assert row["crashes"] == (1 if parser else 0)


def test_each_pstore_record_is_journaled_once_across_boots(
    journal: Journal, sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """Beside systemd-pstore: the records the previous kernel left are journaled at the
    boot that found them; at the next boot its archive still holds them (14 days), and
    khod, finding them stored already, must not journal them again."""
    from tests.store.test_retention import ARCHIVE, PSTORE, next_boot

    for step in ("pstore/step0", "pstore/step1"):
        ingest_journaled(journal, tmp_path, "", sysroot(step))
    receive_all(journal.sock)
    crashed = sysroot("pstore/step0-boot2")  # systemd-pstore moved the Panic to its archive
    (crashed / ARCHIVE).mkdir(parents=True)
    for f in sorted((crashed / PSTORE).iterdir()):
        shutil.move(f, crashed / ARCHIVE / f.name)
    pstore_ids = {sd.MESSAGE_IDS["pstore-crash"], sd.MESSAGE_IDS["pstore-record"]}

    def journaled(root: Path) -> list[str]:
        ingest_journaled(journal, tmp_path, "", root)
        entries = receive_all(journal.sock)
        assert [e["MESSAGE_ID"] for e in entries].count(sd.MESSAGE_IDS["boot-recorded"]) == 1
        return sorted(e["KHOD_PSTORE_NAME"] for e in entries if e["MESSAGE_ID"] in pstore_ids)

    first = journaled(crashed)
    assert len(first) == 4  # every record of the panicked boot, once
    assert journaled(next_boot(crashed, 4)) == []  # the archive's copies: not new


def test_where_khod_owns_pstore_each_record_is_journaled_once(
    journal: Journal, sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """khod-pstore.service ingests first and unlinks; khod.service's ingest then finds the
    boot and its records stored. The records, and the boot, are journaled once: by the
    unit that found them (its ExecStart as shipped), not never."""
    import shlex

    unit = (REPO / "systemd" / "khod-pstore.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    argv = shlex.split(line.split("=", 1)[1])
    assert argv[0] == "/usr/bin/khod"
    root = sysroot("pstore/step0-boot2")
    store = ["--sysroot", str(root), "--db", f"sqlite:///{tmp_path / 'k.db'}"]
    r = subprocess.run(
        [*journal.prefix, str(BIN / "khod"), *argv[1:], *store, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert not any((root / "sys/fs/pstore").iterdir())  # owned: unlinked once committed
    ingest_journaled(journal, tmp_path, "", root)  # khod.service's ingest after it
    entries = receive_all(journal.sock)
    ids = [e["MESSAGE_ID"] for e in entries]
    assert ids.count(sd.MESSAGE_IDS["boot-recorded"]) == 1, entries
    names = sorted(
        e["KHOD_PSTORE_NAME"]
        for e in entries
        if e["MESSAGE_ID"] in {sd.MESSAGE_IDS["pstore-crash"], sd.MESSAGE_IDS["pstore-record"]}
    )
    assert len(names) == 4 and len(set(names)) == 4, names


def test_records_a_late_backend_brings_are_journaled(
    journal: Journal, sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """The daemon's rescan after a module uevent (a pstore backend registered after khod
    started: ``modprobe ramoops``) stores the records it finds and journals each once."""
    from tests.store.test_retention import PSTORE

    root = sysroot("pstore/step0-boot2")
    late = tmp_path / "late"
    shutil.move(root / PSTORE, late)  # the backend is not registered yet
    (root / PSTORE).mkdir()
    pstore_ids = {sd.MESSAGE_IDS["pstore-crash"], sd.MESSAGE_IDS["pstore-record"]}
    ingest_journaled(journal, tmp_path, "", root)
    assert not [e for e in receive_all(journal.sock) if e["MESSAGE_ID"] in pstore_ids]
    for f in sorted(late.iterdir()):  # modprobe ramoops: its records appear
        shutil.move(f, root / PSTORE / f.name)
    db = f"sqlite:///{tmp_path / 'k.db'}"
    r = subprocess.run(
        [
            *journal.prefix,
            str(BIN / "khod"),
            *("--once", "--pstore-rescan", "--journal", "--sysroot", str(root)),
            *("--db", db, "--state-dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "pstore rescan: 4 new records" in r.stdout
    entries = receive_all(journal.sock)
    crashes = [e for e in entries if e["MESSAGE_ID"] == sd.MESSAGE_IDS["pstore-crash"]]
    assert [e["KHOD_PSTORE_REASON"] for e in crashes] == ["Panic"], entries
    assert crashes[0]["KHOD_BOOT_ID"] == "c8be1a8f-766f-4cb8-8a3b-fc30c50a300f"
    names = [e["KHOD_PSTORE_NAME"] for e in entries if e["MESSAGE_ID"] in pstore_ids]
    assert len(names) == 4 == len(set(names)), entries


def test_journal_entry_of_a_live_update_loaded_by_kexec(
    journal: Journal, tmp_path: Path, sysroot: SysrootFactory
) -> None:
    from tests.parse.test_parse_luo import luo_ser

    root = sysroot("kexec1/step1")
    variants.replace(root, "sys/kernel/debug/kho/in/sub_fdts/LUO", luo_ser("luo-v5", 6))
    variants.replace(root, "proc/sys/kernel/bootloader_type", b"208\n")
    ingest_journaled(journal, tmp_path, "", root)
    (boot,) = [
        e for e in receive_all(journal.sock) if e["MESSAGE_ID"] == sd.MESSAGE_IDS["boot-recorded"]
    ]
    assert (boot["KHOD_LIVEUPDATE_NUM"], boot["KHOD_BOOTLOADER_TYPE"]) == ("6", "208")


def test_a_snapshot_the_daemon_cannot_read_is_journaled(
    journal: Journal, sysroot: SysrootFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    snap = state / "metrics.json"
    snap.write_text('{"version": 2, "machine_id": "m"}')  # a newer khod's
    with running_daemon(sysroot("kexec1/step1"), tmp_path, prefix=journal.prefix) as d:
        d.wait_for("READY=1")
        assert "khod_kexecs_since_cold_boot 1.0" in d.scrape()
    (entry,) = [e for e in receive_all(journal.sock) if e.get("KHOD_EVENT") == "record-refused"]
    assert entry["KHOD_SOURCE"] == str(snap)
    assert entry["MESSAGE"] == (f"metrics snapshot {snap}: version 2, this khod reads version 1")
    assert entry["MESSAGE_ID"] in sd.MESSAGE_IDS.values() and entry["PRIORITY"] == "3"


@pytest.mark.parametrize("sent", ["another version", "pickled"])
def test_an_ingest_job_of_another_khod_is_one_line_and_journaled(
    journal: Journal, tmp_path: Path, sent: str
) -> None:
    """The daemon started before an upgrade sends its job to the upgraded worker: an
    older shape (a pickle, as khod sent it before) or another version is refused."""
    from khod.config import Config
    from khod.contracts import IngestJob, encode
    from khod.paths import HostPaths

    job = IngestJob(Config(db=f"sqlite:///{tmp_path / 'k.db'}"), HostPaths(FIXTURES / "cold/step0"))
    data = {
        "another version": encode(job).replace(b'"version": 1', b'"version": 2', 1),
        "pickled": pickle.dumps(job),
    }[sent]
    r = subprocess.run(
        [*journal.prefix, str(BIN / "python"), "-m", "khod.ingest.worker"],
        input=data,
        capture_output=True,
        check=False,
    )
    why = "version 2, this khod reads version 1" if sent == "another version" else "not JSON"
    assert (r.returncode, r.stderr.decode()) == (1, f"khod: error: ingest job on stdin: {why}\n")
    assert not (tmp_path / "k.db").exists()  # nothing done with a job it cannot read
    (entry,) = [e for e in receive_all(journal.sock) if e.get("KHOD_EVENT") == "record-refused"]
    assert entry["MESSAGE"] == f"ingest job on stdin: {why}"
