"""Rows a reader cannot show: refused at import and sync (shape, range, time), and
skipped (and said) by the readers when they got into a store some other way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from khod.store.db import open_store
from khod.store.schema import boots, events, pstore_records
from tests.builders import boot_row, pstore_row, write_export
from tests.conftest import SysrootFactory
from tests.fleet.test_fleet import ctl, host_store

H = "a" * 32


def _bad_boots() -> list[tuple[str, dict[str, Any]]]:
    """(field named in the refusal, object) for each shape a reader cannot show."""
    return [
        ("subtrees", boot_row(H, "bad-1", "7.3.4", None, 1000) | {"subtrees": [1]}),
        ("scratch", boot_row(H, "bad-2", "7.3.4", None, 1000) | {"scratch": [[1]]}),
        ("out_subtrees", boot_row(H, "bad-3", "7.3.4", None, 1000) | {"out_subtrees": [None]}),
        ("subtrees", boot_row(H, "bad-4", "7.3.4", None, 1000) | {"subtrees": {"name": "x"}}),
        ("scratch", boot_row(H, "bad-5", "7.3.4", None, 1000) | {"scratch": [[1, 2**70]]}),
        ("booted_at", boot_row(H, "bad-6", "7.3.4", None, 10**15)),
        ("booted_at", boot_row(H, "bad-7", "7.3.4", None, -5)),
        ("ingested_at", boot_row(H, "bad-8", "7.3.4", None, 1000) | {"ingested_at": 1e300}),
    ]


def test_import_refuses_rows_of_the_wrong_shape_or_time_naming_line_and_field(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _bad_boots()
    good = boot_row(H, "good-1", "7.3.4", None, 1000)
    late = pstore_row(H, "good-1", None, "Panic") | {"record_time": 1e15}
    f = write_export(
        tmp_path / "x.jsonl",
        [good, *(o for _, o in bad), boot_row(H, "good-2", "7.3.5", "7.3.4", 2000), late],
    )
    rc, out, err = ctl(capsys, "import", str(f), "--db", db_url)
    assert rc == 1
    lines = err.splitlines()
    for i, (field, _) in enumerate(bad):
        assert any(x.startswith(f"khoctl: warning: {f}:{i + 3}: {field}: ") for x in lines), (
            i,
            err,
        )
    n = len(bad) + 4
    assert any(x.startswith(f"khoctl: warning: {f}:{n}: record_time: ") for x in lines), err
    assert "Traceback" not in err and f"{len(bad) + 1} bad lines skipped" in out
    store = open_store(db_url)
    with store.engine.connect() as conn:
        got = set(conn.execute(select(boots.c.boot_id)).scalars())
        refused = list(
            conn.execute(
                select(events.c.message).where(events.c.kind == "import-refused")
            ).scalars()
        )
    store.dispose()
    assert got == {"good-1", "good-2"}  # the rest imports
    assert len(refused) == len(bad) + 1 and all(str(f) in m for m in refused), refused
    rc, out, err = ctl(capsys, "history", "--all", "--db", db_url, "--sysroot", str(tmp_path))
    assert rc == 0 and err == "" and "good-2" in out


def _poison(url: str) -> None:
    """Rows as a host's own role could insert them into a fleet database, bypassing
    import: a boot of each bad shape, a boot time and a pstore record time far out."""
    store = open_store(url)
    with store.writer.begin() as conn:
        pk = conn.execute(select(boots.c.id).limit(1)).scalar_one()
        row = dict(conn.execute(select(boots).where(boots.c.id == pk)).mappings().one())
        del row["id"]
        for i, (field, obj) in enumerate(_bad_boots()):
            conn.execute(
                insert(boots).values(row | {"boot_id": f"bad-{i}", "seq": None, field: obj[field]})
            )
        conn.execute(update(boots).where(boots.c.id == pk).values(booted_at=10**15))
        conn.execute(update(pstore_records).values(record_time=1e15))
    store.dispose()


def test_readers_skip_a_row_they_cannot_show_and_say_so(
    sysroot: SysrootFactory, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host_store(sysroot, sqlite_url, ["pstore-kho/step0", "pstore-kho/step1"])
    root = tmp_path / "roots" / "pstore-kho-step1"  # made by host_store
    _poison(sqlite_url)
    db = ("--db", sqlite_url, "--sysroot", str(root))
    rc, out, err = ctl(capsys, "history", "--all", *db)
    assert rc == 0, err
    assert err.count("\n") == 1 and err.startswith("khoctl: warning: 4 boots not shown: boot ")
    assert "Traceback" not in err and "internal error" not in err
    assert "7.3.4" in out
    rc, out, err = ctl(capsys, "history", "--all", "--json", *db)
    rows = json.loads(out)
    assert rc == 0 and err.count("\n") == 1
    # the boot time no one can show is unknown, not an error
    assert len(rows) >= 2 and any(r["booted_at"] is None for r in rows)
    rc, out, err = ctl(capsys, "chain", *db)
    assert rc == 0 and "internal error" not in err
    rc, out, err = ctl(capsys, "dmesg", "--json", *db)
    assert rc == 0, err
    d = json.loads(out)
    assert d["dumps"] and all(x["record_time"] is None for x in d["dumps"])
    assert d["skipped_boots"] == 4
    rc, out, err = ctl(capsys, "dmesg", *db)
    assert rc == 0 and "internal error" not in err
    rc, out, err = ctl(capsys, "status", "--json", *db)
    assert rc == 0 and "internal error" not in err


def test_sync_sends_the_rest_when_a_local_row_is_refused(
    sysroot: SysrootFactory, sqlite_url: str, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host_store(sysroot, sqlite_url, ["pstore-kho/step0", "pstore-kho/step1"])
    _poison(sqlite_url)
    rc, out, err = ctl(capsys, "sync", "--db", sqlite_url, "--to", db_url)
    assert "Traceback" not in err and "internal error" not in err
    assert rc == 1, (out, err)
    assert "bad-0" in err and "subtrees" in err
    fleet = open_store(db_url)
    with fleet.engine.connect() as conn:
        sent = set(conn.execute(select(boots.c.boot_id)).scalars())
    fleet.dispose()
    assert sent and not any(b.startswith("bad-") for b in sent)
    local = open_store(sqlite_url)
    with local.engine.connect() as conn:
        refused = list(
            conn.execute(select(events.c.message).where(events.c.kind == "sync-refused")).scalars()
        )
    local.dispose()
    for i in range(len(_bad_boots())):
        assert any(f"bad-{i}" in m for m in refused), refused
