"""pstore: the real ramoops and pstore_kho records, systemd-pstore's archive, dedupe,
compression (bounded), bad input, unlinking, and the late-backend rescan."""

from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from khod.collect.boot import collect
from khod.collect.pstore import collect_pstore
from khod.errors import ParseError
from khod.parse.pstore import InflateStatus, inflate, parse_dmesg_header, parse_pstore_name
from khod.parse.pstore_kho import parse_pstore_kho
from khod.paths import HostPaths
from khod.store.db import open_store
from khod.store.reads import load_boots, load_events
from khod.store.schema import pstore_records
from tests import variants
from tests.builders import Host
from tests.conftest import FIXTURES, HostFactory, SysrootFactory

PSTORE = "sys/fs/pstore"
ARCHIVE = "var/lib/systemd/pstore"


def mtimes(step: str) -> dict[str, int]:
    out = {}
    for line in (FIXTURES / step / "PSTORE-MTIMES.txt").read_text().splitlines():
        ns, _, _, name = line.split()
        out[name] = int(ns)
    return out


# --- names and headers ---


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dmesg-ramoops-0", ("dmesg", "ramoops", 0, False)),
        ("dmesg-kho-0", ("dmesg", "kho", 0, False)),
        ("dmesg-efi_pstore-155741337601001.enc.z", ("dmesg", "efi_pstore", 155741337601001, True)),
        ("powerpc-ofw-nvram-3", ("powerpc-ofw", "nvram", 3, False)),
        ("console-ramoops-0", ("console", "ramoops", 0, False)),
        ("newtype-ramoops-7", ("newtype", "ramoops", 7, False)),  # a newer kernel's type
    ],
)
def test_names(name: str, expected: tuple[str, str, int, bool]) -> None:
    n = parse_pstore_name(name)
    assert (n.type, n.backend, n.id, n.compressed) == expected


@pytest.mark.parametrize(
    "name",
    [
        "garbage",
        "dmesg-ramoops",
        "dmesg--1",
        "-x-1",
        "a b-c-1",
        "dmesg-ramoops-x",
        "dmesg-ramoops-1.enc.gz",
    ],
)
def test_garbage_names(name: str) -> None:
    with pytest.raises(ParseError):
        parse_pstore_name(name)


def test_dmesg_header() -> None:
    h = parse_dmesg_header(b"Panic#12 Part3\n<0>...")
    assert h is not None and (h.reason, h.count, h.part, h.length) == ("Panic", 12, 3, 15)
    assert parse_dmesg_header(b"<0>no header") is None


# --- the real records ---


def test_real_ramoops_records_after_a_kexec(sysroot: SysrootFactory) -> None:
    root = sysroot("pstore/step1")
    obs = collect(HostPaths(root))
    got = {(r.name, r.type, r.backend, r.reason, r.count, r.part, r.release) for r in obs.pstore}
    assert got == {
        ("dmesg-ramoops-0", "dmesg", "ramoops", "Shutdown", 1, 1, "7.3.4-khlab-a"),
        ("console-ramoops-0", "console", "ramoops", None, None, None, "7.3.4-khlab-a"),
        ("pmsg-ramoops-0", "pmsg", "ramoops", None, None, None, None),
    }
    times = mtimes("pstore/step1")
    for r in obs.pstore:
        assert r.record_time == times[r.name] / 1e9
        raw = (root / PSTORE / r.name).read_bytes()
        assert r.raw == raw
    pmsg = next(r for r in obs.pstore if r.type == "pmsg")
    assert pmsg.text == "khlab pmsg: step 0 release 7.3.4-khlab-a uptime 5.90\n"
    dmesg = next(r for r in obs.pstore if r.type == "dmesg")
    assert dmesg.text is not None and not dmesg.text.startswith("Shutdown#1")
    assert dmesg.text.rstrip().endswith("kexec_core: Starting new kernel")


def test_real_records_after_a_panic(sysroot: SysrootFactory) -> None:
    obs = collect(HostPaths(sysroot("pstore/step0-boot2")))
    dumps = sorted((r.name, r.reason, r.count) for r in obs.pstore if r.type == "dmesg")
    assert dumps == [("dmesg-ramoops-0", "Panic", 1), ("dmesg-ramoops-1", "Emergency", 2)]
    panic = next(r for r in obs.pstore if r.reason == "Panic")
    assert panic.text is not None and "Kernel panic - not syncing: sysrq triggered crash" in (
        panic.text
    )
    assert panic.release == "7.3.4-khlab-b"  # the kernel that panicked, not this one


@pytest.mark.parametrize("step", ["pstore-kho/step1", "pstore-kho/step2", "pstore-kho/step3"])
def test_real_pstore_kho_record_and_its_subtree_agree(sysroot: SysrootFactory, step: str) -> None:
    root = sysroot(step)
    obs = collect(HostPaths(root))
    (rec,) = obs.pstore
    assert (rec.name, rec.backend, rec.reason, rec.count, rec.part, rec.location) == (
        "dmesg-kho-0",
        "kho",
        "Shutdown",
        1,
        1,
        "pstore",
    )
    sub = parse_pstore_kho((root / "sys/kernel/debug/kho/in/sub_fdts/pstore-kho").read_bytes(), "s")
    assert sub is not None and sub.data == rec.raw
    assert sub.time_sec * 1_000_000_000 + sub.time_nsec == mtimes(step)["dmesg-kho-0"]
    assert not [e for e in obs.events if e.kind == "pstore-kho-mismatch"]


def test_outgoing_pstore_kho_buffer_is_empty_until_the_dump() -> None:
    blob = FIXTURES / "pstore-kho/step1/sys/kernel/debug/kho/out/sub_fdts/pstore-kho"
    assert parse_pstore_kho(blob.read_bytes(), "out") is None


def test_pstore_kho_record_survives_systemd_pstore_moving_the_file(
    sysroot: SysrootFactory,
) -> None:
    # systemd-pstore ran first and, with Storage=journal, kept no copy: the record
    # still comes from the KHO subtree
    root = sysroot("pstore-kho/step2")
    variants.remove(root, PSTORE)
    obs = collect(HostPaths(root))
    (rec,) = obs.pstore
    assert (rec.location, rec.name, rec.reason) == ("kho", "dmesg-kho-0", "Shutdown")
    assert rec.raw == (FIXTURES / "pstore-kho/step2" / PSTORE / "dmesg-kho-0").read_bytes()


# --- systemd-pstore's archive ---


def archive_like_systemd(root: Path, unlink: bool) -> None:
    """What systemd-pstore does with ramoops/kho records: a flat byte-for-byte copy."""
    (root / ARCHIVE).mkdir(parents=True)
    for f in sorted((root / PSTORE).iterdir()):
        shutil.copyfile(f, root / ARCHIVE / f.name)
        if unlink:
            f.unlink()


def test_same_records_in_pstore_and_archive_are_stored_once(host: HostFactory, db_url: str) -> None:
    h = host("pstore/step1", db_url, ingest=False)
    root = h.root
    archive_like_systemd(root, unlink=False)
    obs = collect(HostPaths(root))
    assert len(obs.pstore) == 3 and {r.location for r in obs.pstore} == {"pstore"}
    assert h.ingest().new_pstore == 3
    store = open_store(db_url)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pstore_records)).scalar() == 3


def test_records_moved_to_the_archive_are_found_there(sysroot: SysrootFactory) -> None:
    root = sysroot("pstore/step0-boot2")
    archive_like_systemd(root, unlink=True)
    obs = collect(HostPaths(root))
    assert {(r.location, r.name) for r in obs.pstore} == {
        ("archive", n)
        for n in ("console-ramoops-0", "dmesg-ramoops-0", "dmesg-ramoops-1", "pmsg-ramoops-0")
    }
    assert all(r.record_time is None for r in obs.pstore)  # a copy's mtime is no record time


def efi_parts(text: bytes, reason: str, count: int, chunk: int) -> list[tuple[int, bytes]]:
    """Split a log the way pstore_dump does for a small backend: Part1 is the newest."""
    chunks = [text[max(0, i - chunk) : i] for i in range(len(text), 0, -chunk)]
    return [(n, f"{reason}#{count} Part{n}\n".encode() + c) for n, c in enumerate(chunks, 1)]


def test_multi_part_efi_dump_in_the_archive_is_joined_in_order(
    host: HostFactory, db_url: str
) -> None:
    h = host("pstore/step0-boot2", db_url, ingest=False)
    root = h.root
    log = (root / PSTORE / "dmesg-ramoops-0").read_bytes().split(b"\n", 1)[1]
    variants.remove(root, PSTORE)
    d = root / ARCHIVE / "155741337"
    d.mkdir(parents=True)
    for n, data in efi_parts(log, "Panic", 1, 4096):
        (d / f"dmesg-efi_pstore-155741337{n:02d}1001").write_bytes(data)
    (d / "dmesg.txt").write_bytes(b"reassembled by systemd-pstore")
    h.ingest()
    out = h.khoctl_json("dmesg")
    (dump,) = [x for x in out["dumps"] if x["type"] == "dmesg"]
    assert (dump["backend"], dump["reason"], dump["count"]) == ("efi_pstore", "Panic", 1)
    assert [r["part"] for r in dump["records"]] == list(range(len(dump["records"]), 0, -1))
    assert dump["text"] == log.decode()


# --- compression ---


def test_enc_z_is_inflated(sysroot: SysrootFactory) -> None:
    root = sysroot("pstore/step1")
    src = root / PSTORE / "dmesg-ramoops-0"
    original = src.read_bytes()
    c = zlib.compressobj(wbits=-15)  # 6.6+: raw deflate
    (root / PSTORE / "dmesg-ramoops-0.enc.z").write_bytes(c.compress(original) + c.flush())
    src.unlink()
    obs = collect(HostPaths(root))
    rec = next(r for r in obs.pstore if r.type == "dmesg")
    assert (rec.compressed, rec.inflate_status, rec.reason) == (True, "inflated", "Shutdown")
    assert rec.text == original.split(b"\n", 1)[1].decode()


def test_zlib_framing_of_older_kernels() -> None:
    assert inflate(zlib.compress(b"hello")) == (b"hello", InflateStatus.INFLATED)


def test_zlib_bomb_is_stored_raw_never_expanded(sysroot: SysrootFactory) -> None:
    root = sysroot("pstore/step1")
    c = zlib.compressobj(wbits=-15)
    bomb = c.compress(b"\0" * (64 << 20)) + c.flush()  # 64 MiB of zeros in ~64 KiB
    variants.replace(root, f"{PSTORE}/dmesg-ramoops-9.enc.z", bomb)
    obs = collect(HostPaths(root), inflate_limit=1 << 20)
    rec = next(r for r in obs.pstore if r.name.endswith(".enc.z"))
    assert (rec.inflate_status, rec.text, rec.raw) == ("too-large", None, bomb)
    assert any(e.kind == "pstore-too-large" for e in obs.events)
    assert len(obs.pstore) == 4  # nothing else lost


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x78\x9c\x01\x02", "undecodable"),  # truncated zlib
        (b"not compressed at all", "undecodable"),  # lzo/lz4/zstd from 4.19-6.5 look like this
    ],
)
def test_corrupt_enc_z(sysroot: SysrootFactory, data: bytes, status: str) -> None:
    root = sysroot("pstore/step1")
    variants.replace(root, f"{PSTORE}/dmesg-ramoops-5.enc.z", data)
    obs = collect(HostPaths(root))
    rec = next(r for r in obs.pstore if r.name == "dmesg-ramoops-5.enc.z")
    assert (rec.inflate_status, rec.raw) == (status, data)
    assert any(e.kind == "pstore-undecodable" for e in obs.events)


# --- bad input: one line and an event each, nothing else lost ---


def test_bad_pstore_entries(host: HostFactory, db_url: str) -> None:
    h = host("pstore/step1", db_url, ingest=False)
    root = h.root
    variants.replace(root, f"{PSTORE}/garbage name", b"?")
    variants.replace(root, f"{PSTORE}/mystery-ramoops-3", b"new type")
    variants.replace(root, f"{PSTORE}/dmesg-ramoops-4", b"")
    variants.replace(root, f"{PSTORE}/dmesg-ramoops-6", b"Oops#1 Part1\n\xff\xfe bad utf8\n")
    variants.make_dir_in_place_of(root, f"{PSTORE}/dmesg-ramoops-7")
    os.symlink("/etc/passwd", root / PSTORE / "dmesg-ramoops-8")
    err = h.ingest().err.splitlines()
    for needle in (
        "garbage name: not a pstore record name",
        "unknown pstore type 'mystery'",
        "dmesg-ramoops-4: empty pstore record",
        "dmesg-ramoops-7: is a directory",
        "dmesg-ramoops-8: is a symbolic link",
    ):
        assert sum(needle in line for line in err) == 1, (needle, err)
    store = open_store(db_url)
    (boot,) = load_boots(store)
    assert boot.id is not None
    kinds = {e["kind"] for e in load_events(store, boot.id)}
    assert {"pstore-bad-name", "pstore-unknown-type", "pstore-empty", "read-error"} <= kinds
    with store.engine.connect() as conn:
        names = set(conn.execute(select(pstore_records.c.name)).scalars())
        text = conn.execute(
            select(pstore_records.c.text).where(pstore_records.c.name == "dmesg-ramoops-6")
        ).scalar_one()
    assert names == {
        "console-ramoops-0",
        "dmesg-ramoops-0",
        "pmsg-ramoops-0",
        "garbage name",
        "mystery-ramoops-3",
        "dmesg-ramoops-6",
    }
    assert text == "\\xff\\xfe bad utf8\n"


def test_a_100_mib_record_is_refused_with_an_event(sysroot: SysrootFactory) -> None:
    root = sysroot("pstore/step1")
    with open(root / PSTORE / "dmesg-ramoops-3", "wb") as f:
        f.truncate(100 << 20)
    obs = collect(HostPaths(root))
    assert len(obs.pstore) == 3
    assert any("dmesg-ramoops-3: larger than" in e.message for e in obs.events)


# --- dedupe across boots, the chain of replaced dmesg-kho-0, links ---


def test_the_chain_links_each_record_to_the_boot_it_describes(
    host: HostFactory, db_url: str
) -> None:
    for step in ("pstore/step0", "pstore/step1", "pstore/step0-boot2"):
        h = host(step, db_url)
    out = h.khoctl_json("dmesg", "c8be1a8f", "--type", "dmesg")
    assert out["previous_boot_id"] == "6d78f400-1dc1-4700-bc93-f8729f18a17b"
    assert [(d["reason"], d["count"], d["release"]) for d in out["dumps"]] == [
        ("Panic", 1, "7.3.4-khlab-b"),
        ("Emergency", 2, "7.3.4-khlab-b"),
    ]
    rows = h.khoctl_json("history", "--all")
    assert [(r["boot_id"][:8], r["pstore_records"]) for r in rows] == [
        ("c8be1a8f", 4),
        ("6d78f400", 3),
        ("e7da0b67", 0),
    ]


def test_ten_boots_of_a_replaced_dmesg_kho_0_give_ten_records(
    host: HostFactory, db_url: str
) -> None:
    """Each kexec replaces the one dmesg-kho-0; each boot's record is new."""
    h = host("pstore-kho/step1", db_url, ingest=False)
    base = h.root
    original = (base / PSTORE / "dmesg-kho-0").read_bytes()
    variants.remove(base, "sys/kernel/debug/kho/in/sub_fdts/pstore-kho")
    for n in range(10):
        root = base.parent / f"boot{n}"
        shutil.copytree(base, root)
        variants.replace(
            root, "proc/sys/kernel/random/boot_id", f"00000000-0000-4000-8000-{n:012d}\n".encode()
        )
        variants.replace(root, "proc/stat", f"btime {1795481000 + n}\n".encode())
        variants.replace(
            root, f"{PSTORE}/dmesg-kho-0", original + f"<6>[ {n}.0] boot {n}\n".encode()
        )
        assert h.at(root).ingest().new_pstore == 1
        assert h.at(root).ingest().new_pstore == 0  # seen again: not twice
    store = open_store(db_url)
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(pstore_records.c.collected_by, pstore_records.c.describes).order_by(
                pstore_records.c.id
            )
        ).all()
    assert len(rows) == 10
    assert [d for _, d in rows[1:]] == [c for c, _ in rows[:-1]]  # each describes the last


# --- owning pstore: unlink only after commit; EPERM expected ---


def test_own_pstore_unlinks_after_commit(host: HostFactory, db_url: str) -> None:
    h = host("pstore/step1", db_url, ingest=False)
    root = h.root
    assert h.ingest("--own-pstore").new_pstore == 3 and list((root / PSTORE).iterdir()) == []
    unlinked = [e for e in h.khoctl_json("show")["events"] if e["kind"] == "pstore-unlinked"]
    assert len(unlinked) == 3
    store = open_store(db_url)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pstore_records)).scalar() == 3


def test_pstore_is_left_alone_by_default(host: HostFactory, db_url: str) -> None:
    h = host("pstore/step1", db_url)
    assert len(list((h.root / PSTORE).iterdir())) == 3


def test_nothing_is_unlinked_when_the_commit_fails(host: HostFactory, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    h = host("pstore/step1", db, ingest=False)
    store = open_store(db)
    with store.engine.begin() as conn:  # make every insert into boots fail
        conn.exec_driver_sql(
            "CREATE TRIGGER no BEFORE INSERT ON boots "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    r = h.once("--own-pstore")
    assert r.rc != 0 and "disk on fire" in r.err
    assert len(list((h.root / PSTORE).iterdir())) == 3


# --- a backend that registers late ---


def test_rescan_adds_a_late_backends_records(host: HostFactory, db_url: str) -> None:
    h = host("pstore/step1", db_url, ingest=False)
    root = h.root
    late = root.parent / "late"
    (root / PSTORE).rename(late)  # the backend has not registered yet
    assert h.ingest().new_pstore == 0
    late.rename(root / PSTORE)  # module loaded: its records appear
    assert "pstore rescan: 3 new records" in h.ingest("--pstore-rescan").out
    assert "pstore rescan: 0 new records" in h.ingest("--pstore-rescan").out


def test_collect_pstore_without_any_pstore(tmp_path: Path) -> None:
    assert collect_pstore(HostPaths(tmp_path), None) == ([], [])


def test_a_full_archive_keeps_the_newest_dumps_and_says_how_many_were_left(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """More entries in systemd-pstore's archive than khod reads (4096): the newest are
    kept (by mtime), not the first by name (with ids that grow with time, the oldest);
    one warning line and an event say how many were left out."""
    root = sysroot("pstore-kho/step1")
    archive = root / ARCHIVE
    archive.mkdir(parents=True)
    total = 4100
    base = 1_750_000_000 * 10**9
    for i in range(total):  # ids and mtimes grow together, as the dumps came
        f = archive / f"dmesg-efi_pstore-{1000000 + i}"
        f.write_bytes(f"Oops#{i + 1} Part1\n<4>[ 1.0] dump {i}\n".encode())
        os.utime(f, ns=(base + i * 10**9, base + i * 10**9))
    db = tmp_path / "k.db"
    err = Host(root, f"sqlite:///{db}", tmp_path / "state", capsys).ingest().err
    store = open_store(f"sqlite:///{db}")
    with store.engine.connect() as conn:
        names = set(conn.execute(select(pstore_records.c.name)).scalars())
    archived = {n for n in names if n.startswith("dmesg-efi_pstore-")}
    newest = {f"dmesg-efi_pstore-{1000000 + i}" for i in range(total - 4096, total)}
    assert archived == newest, sorted(newest - archived)[:5]
    warnings = [line for line in err.splitlines() if "left out" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("khod: warning: ") and " 4 " in warnings[0], warnings
    (boot,) = load_boots(store)
    assert boot.id is not None
    (event,) = [e for e in load_events(store, boot.id) if "left out" in e["message"]]
    assert event["severity"] == "warning" and ARCHIVE in event["source"]
    store.dispose()
