"""The store: migrations as a contract, idempotent ingest, concurrent writers."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import func, inspect, select, text

from khod.collect.boot import collect
from khod.errors import StoreError
from khod.observation import Blob
from khod.paths import HostPaths
from khod.records import Direction
from khod.store import migrate
from khod.store.boots import save_observation
from khod.store.db import current_revision, open_store
from khod.store.reads import load_boots, load_events, load_pstore
from khod.store.schema import HEAD_REVISION, blobs, boots, events
from tests import variants
from tests.conftest import FIXTURES, SysrootFactory


def test_head_constant_matches_the_migrations() -> None:
    assert migrate.script_head() == HEAD_REVISION


def test_a_boot_is_one_shape_from_collection_to_the_table() -> None:
    """A field added to the observation, the record or the table alone is seen here, not
    as a column that is never written or a field that is never read back."""
    from dataclasses import fields

    from khod.observation import BOOT_FIELDS, BootObservation
    from khod.store.boots import STORE_ONLY, BootRecord
    from khod.store.schema import boots as table

    observed = set(BOOT_FIELDS)
    # journal_previous_boot: what the store derives a chain from, not kept itself
    carried = {"blobs", "events", "pstore", "journal_previous_boot"}
    assert {f.name for f in fields(BootObservation)} == observed | carried
    assert {f.name for f in fields(BootRecord)} == observed | STORE_ONLY
    assert {c.name for c in table.columns} - {"seq"} == observed | STORE_ONLY


def test_migrations_up_check_down_up(db_url: str) -> None:
    store = open_store(db_url)
    assert current_revision(store) == HEAD_REVISION
    cfg = migrate.alembic_config(store)
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.check(cfg)  # models and migrations agree
    migrate.downgrade(store, "base")
    assert set(inspect(store.engine).get_table_names()) == {"alembic_version"}
    store = open_store(db_url)
    assert current_revision(store) == HEAD_REVISION


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_db_file_is_private(tmp_path: Path) -> None:
    open_store(f"sqlite:///{tmp_path / 'new' / 'k.db'}")
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new" / "k.db").stat().st_mode & 0o777 == 0o600


def counts(db_url: str) -> tuple[int, int, int]:
    store = open_store(db_url)
    with store.engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (boots, blobs, events)
        )  # type: ignore[return-value]


def test_ingest_is_idempotent(db_url: str) -> None:
    obs = collect(HostPaths(FIXTURES / "pstore/step0"))  # has an info event (truncated out/fdt)
    store = open_store(db_url)
    first = save_observation(store, obs)
    second = save_observation(store, obs)
    assert first.created and not second.created
    assert (second.new_blobs, second.new_events) == (0, 0)
    assert counts(db_url) == (1, len(obs.blobs), len(obs.events))


@pytest.mark.parametrize("step", ["pstore-kho/step1", "kexec1/step1", "cold/step0"])
def test_a_boot_reads_back_as_it_was_observed(db_url: str, step: str) -> None:
    """``khoctl status`` renders the live boot, ``history`` the stored one: the same
    facts, the same types (subtrees, scratch areas, the kind), whichever was read."""
    from khod.observation import boot_facts
    from khod.store.boots import live_record, load_boot

    obs = collect(HostPaths(FIXTURES / step))
    store = open_store(db_url)
    save_observation(store, obs)
    stored = load_boot(store, obs.machine_id, obs.boot_id)
    assert stored is not None
    assert boot_facts(stored) == boot_facts(live_record(obs)) == boot_facts(obs)
    assert [type(v) for v in boot_facts(stored).values()] == [
        type(v) for v in boot_facts(obs).values()
    ]


def test_raw_blobs_are_stored_byte_for_byte(db_url: str) -> None:
    step = FIXTURES / "pstore-kho/step1"
    store = open_store(db_url)
    save_observation(store, collect(HostPaths(step)))
    with store.engine.connect() as conn:
        data = conn.execute(
            select(blobs.c.data).where(
                blobs.c.direction == "in", blobs.c.name == "sub_fdts/pstore-kho"
            )
        ).scalar_one()
    assert data == (step / "sys/kernel/debug/kho/in/sub_fdts/pstore-kho").read_bytes()


def test_events_of_a_bad_blob_are_stored_with_the_boot(
    sysroot: SysrootFactory, db_url: str
) -> None:
    root = sysroot("kexec1/step1")
    variants.replace(root, "sys/kernel/debug/kho/in/fdt", b"\xd0\x0d\xfe\xed" + bytes(10))
    store = open_store(db_url)
    res = save_observation(store, collect(HostPaths(root)))
    (boot,) = load_boots(store)
    assert boot.kexec_count == 1
    assert any("in/fdt" in e["message"] for e in load_events(store, res.boot_pk))


def _ingest(args: tuple[str, str]) -> bool:
    url, step = args
    return save_observation(open_store(url), collect(HostPaths(FIXTURES / step))).created


def test_concurrent_writers_record_each_boot_once(db_url: str) -> None:
    steps = ["kexec1/step0", "kexec1/step1", "pstore-kho/step1", "pstore-kho/step2"] * 4
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        created = pool.map(_ingest, [(db_url, s) for s in steps])
    assert sum(created) == 4
    assert counts(db_url)[0] == 4


def test_corrupt_database_is_one_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"k\.db is unusable: file is not a database"):
        open_store(f"sqlite:///{db}")
    assert db.read_bytes().startswith(b"this is not a database")  # nothing destroyed


def test_database_from_a_newer_khod_is_refused(db_url: str) -> None:
    store = open_store(db_url)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num='9999'"))
    newer = r"schema 9999 is newer than this khod \(head .*\): upgrade khod"
    with pytest.raises(StoreError, match=newer):
        open_store(db_url)


def test_db_directory_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(StoreError, match="not a directory"):
        open_store(f"sqlite:///{tmp_path / 'f' / 'k.db'}")


def test_sqlite_file_is_a_real_sqlite_database(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    save_observation(store, collect(HostPaths(FIXTURES / "cold/step0")))
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT kind, kexec_count FROM boots").fetchall() == [("cold", 0)]


def test_hostile_strings_are_stored_alike_on_every_backend(db_url: str) -> None:
    """PostgreSQL enforces VARCHAR lengths and refuses NUL in text; SQLite does neither.
    Names and text from a hostile kernel or file store the same on both."""
    obs = collect(HostPaths(FIXTURES / "pstore/step1"))
    rec = obs.pstore[0]
    long_name = "sub_fdts/" + "n" * 400
    obs = dataclasses.replace(
        obs,
        previous_release="7.3.4\x00evil",
        blobs=(*obs.blobs, Blob(Direction.IN, long_name, b"\x00" * 8)),
        pstore=(
            dataclasses.replace(
                rec,
                backend="b" * 300,
                type="t" * 100,
                reason="R" * 100,
                text="before\x00after",
                raw=rec.raw + b"\x00",
            ),
            *obs.pstore[1:],
        ),
    )
    store = open_store(db_url)
    save_observation(store, obs)
    (boot,) = load_boots(store)
    assert boot.previous_release == "7.3.4\\x00evil"
    assert boot.id is not None
    with store.engine.connect() as conn:
        assert conn.execute(select(blobs.c.size).where(blobs.c.name == long_name)).scalar() == 8
    (row,) = [r for r in load_pstore(store, boot.id) if r["raw"] == rec.raw + b"\x00"]
    assert (row["backend"], row["type"], row["reason"]) == ("b" * 300, "t" * 100, "R" * 100)
    assert row["text"] == "before\\x00after"


def test_upgrade_from_0003_keeps_rows_and_gives_attempts_uids(db_url: str) -> None:
    store = open_store(db_url, migrate=False)
    migrate.upgrade(store, None, "0003")
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO boots (id, machine_id, boot_id, release, cmdline, kind, "
                "kho_enabled, subtrees, out_subtrees, scratch, ingested_at, khod_version) "
                "VALUES (1, 'm', 'b', '7.3.4', '', 'cold', false, '[]', '[]', '[]', 0, 'x')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO blobs (boot_pk, direction, name, size, sha256, data) "
                "VALUES (1, 'in', 'fdt', 1, 'h', :d)"
            ),
            {"d": b"\x01"},
        )
        for _ in range(2):
            conn.execute(
                text(
                    "INSERT INTO kexec_attempts (machine_id, from_boot, created_at, source, "
                    "checks, forced, argv, expected_previous_release, expected_kexec_count) "
                    "VALUES ('m', 1, 0, 'khoctl', '[]', false, '[]', '7.3.4', 1)"
                )
            )
    assert migrate.upgrade(store, "0003") == HEAD_REVISION
    with store.engine.connect() as conn:
        uids = conn.execute(text("SELECT uid FROM kexec_attempts")).scalars().all()
        data = conn.execute(text("SELECT data FROM blobs WHERE name = 'fdt'")).scalar_one()
    assert len(uids) == 2 and len(set(uids)) == 2 and all(len(u) == 36 for u in uids)
    assert bytes(data) == b"\x01"


def test_upgrade_from_0005_remembers_the_pstore_hashes(db_url: str) -> None:
    store = open_store(db_url, migrate=False)
    migrate.upgrade(store, None, "0005")
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO boots (id, machine_id, boot_id, release, cmdline, kind, "
                "kho_enabled, subtrees, out_subtrees, scratch, ingested_at, khod_version) "
                "VALUES (1, 'm', 'b', '7.3.4', '', 'cold', false, '[]', '[]', '[]', 0, 'x')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO pstore_records (machine_id, sha256, collected_by, location, path, "
                "name, type, backend, compressed, inflate_status, size, raw, dump_key, "
                "collected_at) VALUES ('m', 'h1', 1, 'pstore', 'p', 'n', 'dmesg', 'ramoops', "
                "false, 'plain', 1, :d, 'k', 5)"
            ),
            {"d": b"\x01"},
        )
    assert migrate.upgrade(store, "0005") == HEAD_REVISION
    with store.engine.connect() as conn:
        seen = conn.execute(text("SELECT machine_id, sha256, first_seen FROM pstore_seen")).all()
    assert [tuple(r) for r in seen] == [("m", "h1", 5.0)]
    migrate.downgrade(store, "0005")
    assert "pstore_seen" not in inspect(store.engine).get_table_names()


def test_upgrade_from_0006_numbers_each_machines_boots_in_recorded_order(db_url: str) -> None:
    store = open_store(db_url, migrate=False)
    migrate.upgrade(store, None, "0006")
    with store.engine.begin() as conn:
        for pk, machine, btime in ((1, "m", 300), (2, "n", 100), (3, "m", 200), (4, "m", 200)):
            conn.execute(
                text(
                    "INSERT INTO boots (id, machine_id, boot_id, booted_at, release, cmdline, "
                    "kind, kho_enabled, subtrees, out_subtrees, scratch, ingested_at, "
                    "khod_version) VALUES (:pk, :m, :b, :t, '7.3.4', '', 'cold', false, "
                    "'[]', '[]', '[]', 0, 'x')"
                ),
                {"pk": pk, "m": machine, "b": f"b{pk}", "t": btime},
            )
    assert migrate.upgrade(store, "0006") == HEAD_REVISION
    with store.engine.connect() as conn:
        got = conn.execute(text("SELECT id, seq FROM boots ORDER BY id")).all()
    assert [tuple(r) for r in got] == [(1, 1), (2, 1), (3, 2), (4, 3)]
    migrate.downgrade(store, "0006")
    assert "seq" not in {c["name"] for c in inspect(store.engine).get_columns("boots")}


def test_upgrade_from_0007_adds_the_luo_columns_and_room_for_longer_verdicts(
    db_url: str,
) -> None:
    store = open_store(db_url, migrate=False)
    migrate.upgrade(store, None, "0007")
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO boots (id, machine_id, boot_id, release, cmdline, kind, "
                "kho_enabled, subtrees, out_subtrees, scratch, ingested_at, khod_version) "
                "VALUES (1, 'm', 'b1', '7.3.4', '', 'cold', false, '[]', '[]', '[]', 0, 'x')"
            )
        )
    assert migrate.upgrade(store, "0007") == HEAD_REVISION
    with store.engine.begin() as conn:
        row = conn.execute(
            text("SELECT bootloader_type, luo_compatible, liveupdate_num, luo_sessions FROM boots")
        ).one()
        assert tuple(row) == (None, None, None, None)
        conn.execute(
            text(
                "INSERT INTO kexec_attempts (uid, machine_id, from_boot, created_at, source, "
                "checks, forced, argv, expected_previous_release, expected_kexec_count, "
                "verdict) VALUES ('u', 'm', 1, 0, 'khoctl', '[]', true, '[]', '7.3.4', 1, "
                "'landed-without-handover')"
            )
        )
        conn.execute(text("UPDATE boots SET liveupdate_num = :n"), {"n": (1 << 63) - 1})
    migrate.downgrade(store, "0007")
    cols = {c["name"] for c in inspect(store.engine).get_columns("boots")}
    assert not cols & {"bootloader_type", "luo_compatible", "liveupdate_num", "luo_sessions"}
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT verdict FROM kexec_attempts")).scalar() is None
