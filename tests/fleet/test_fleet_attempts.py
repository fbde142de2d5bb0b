"""`khoctl import` of kexec attempts: inserted in bulk, a later verdict fills an open
attempt (and only an open one), a re-import changes nothing, a bad attempt line is
refused on its own. Every test runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from khod.cli import khoctl
from khod.cli.common import run_main
from khod.store.db import open_store
from khod.store.schema import boots, counters, events, kexec_attempts
from tests.builders import boot_row as boot_obj

HOST = "c" * 32
HEADER = {"object": "header", "format": "khod-export", "version": 1}


def attempt_obj(
    n: int, frm: str, verdict: str | None, judged_by: str | None = None, **kw: Any
) -> dict[str, Any]:
    return {
        "object": "attempt",
        "uid": f"{n:08x}-0000-4000-8000-{n:012x}",
        "machine_id": HOST,
        "from_boot": frm,
        "created_at": 1_780_000_000.5 + n,
        "source": "khoctl",
        "target_image": "/boot/vmlinuz-7.3.4",
        "target_release": "7.3.4",
        "target_abi": "kho-v4",
        "initrd": None,
        "cmdline": None,
        "checks": [{"name": "abi", "ok": True}],
        "forced": False,
        "argv": [["kexec", "-l", "/boot/vmlinuz-7.3.4"]],
        "expected_previous_release": "7.3.3",
        "expected_kexec_count": 1,
        "verdict": verdict,
        "verdict_boot": judged_by,
        "verdict_detail": None if verdict is None else f"detail {n}",
    } | kw


def write(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in [HEADER, *objs]))
    return path


def run_import(
    capsys: pytest.CaptureFixture[str], url: str, *files: Path, rc: int = 0
) -> dict[str, Any]:
    capsys.readouterr()
    got = run_main("khoctl", khoctl.main, ["import", *map(str, files), "--db", url, "--json"])
    out, err = capsys.readouterr()
    assert got == rc, err
    res: dict[str, Any] = json.loads(out)
    res["stderr"] = err
    return res


def attempts(url: str) -> dict[str, tuple[Any, ...]]:
    """uid -> (from boot id, verdict, judging boot id, detail, target release)."""
    store = open_store(url)
    with store.engine.connect() as conn:
        ids: dict[int, str] = {pk: b for pk, b in conn.execute(select(boots.c.id, boots.c.boot_id))}
        out = {
            r.uid: (
                ids[r.from_boot],
                r.verdict,
                ids.get(r.verdict_boot),
                r.verdict_detail,
                r.target_release,
            )
            for r in conn.execute(select(kexec_attempts))
        }
    store.dispose()
    return out


def attempt_counters(url: str) -> dict[str, int]:
    store = open_store(url)
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(counters.c.label, counters.c.value).where(counters.c.name == "kexec_attempts")
        )
        out = {label: int(value) for label, value in rows}
    store.dispose()
    return out


def uid(n: int) -> str:
    return str(attempt_obj(n, "", None)["uid"])


def test_a_later_import_fills_open_attempts_and_only_those(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boots_ = [boot_obj(HOST, f"b-{i}", "7.3.4", None, 1_780_000_000 + i) for i in range(300)]
    # 250 attempts (a bulk chunk's worth): the even ones open, the odd ones landed;
    # number 1000 from a boot neither file nor store has; 1001 judged by an unknown boot
    first = [
        attempt_obj(i, f"b-{i}", "landed", f"b-{i + 1}")
        if i % 2
        else attempt_obj(i, f"b-{i}", None)
        for i in range(250)
    ]
    first += [
        attempt_obj(1000, "b-x", "landed", "b-1"),
        attempt_obj(1001, "b-7", "cold-boot", "b-nowhere"),
    ]
    res = run_import(capsys, db_url, write(tmp_path / "1.jsonl", boots_ + first))
    assert res["new"]["attempt"] == 251 and res["unknown_boot"] == 1, res
    got = attempts(db_url)
    assert len(got) == 251 and uid(1000) not in got
    assert got[uid(4)] == ("b-4", None, None, None, "7.3.4")
    assert got[uid(5)] == ("b-5", "landed", "b-6", "detail 5", "7.3.4")
    assert got[uid(1001)] == ("b-7", "cold-boot", None, "detail 1001", "7.3.4")
    assert attempt_counters(db_url) == {"landed": 125, "cold-boot": 1}

    # later: every attempt judged; the odd ones (already judged) say something else
    later = [
        attempt_obj(i, f"b-{i}", "cold-boot" if i % 2 else "mismatch", f"b-{i + 2}")
        for i in range(250)
    ]
    res = run_import(capsys, db_url, write(tmp_path / "2.jsonl", later))
    assert res["new"].get("attempt", 0) == 0 and res["read"]["attempt"] == 250, res
    got = attempts(db_url)
    assert got[uid(4)] == ("b-4", "mismatch", "b-6", "detail 4", "7.3.4")  # filled in
    assert got[uid(5)] == ("b-5", "landed", "b-6", "detail 5", "7.3.4")  # kept
    assert attempt_counters(db_url) == {"landed": 125, "cold-boot": 1, "mismatch": 125}

    # both files again: nothing new, nothing changed, nothing counted twice
    before = attempts(db_url)
    res = run_import(capsys, db_url, tmp_path / "1.jsonl", tmp_path / "2.jsonl")
    assert res["new"].get("attempt", 0) == 0 and res["new"].get("boot", 0) == 0, res
    assert attempts(db_url) == before
    assert attempt_counters(db_url) == {"landed": 125, "cold-boot": 1, "mismatch": 125}
    if "postgresql" in db_url:
        assert res["chunks"]["line_by_line"] == 0, res  # all of it in bulk


def test_an_attempt_twice_in_one_file_is_one_attempt(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first copy is the attempt (as when its chunk is imported alone), counted once."""
    boots_ = [boot_obj(HOST, f"b-{i}", "7.3.4", None, 1_780_000_000 + i) for i in range(3)]
    objs = [
        attempt_obj(1, "b-0", "landed", "b-1"),
        attempt_obj(2, "b-1", None),
        attempt_obj(1, "b-0", "cold-boot", "b-2", target_release="other"),
        attempt_obj(2, "b-1", None, target_release="other"),
    ]
    res = run_import(capsys, db_url, write(tmp_path / "x.jsonl", boots_ + objs))
    assert res["read"]["attempt"] == 4 and res["new"]["attempt"] == 2, res
    got = attempts(db_url)
    assert got == {
        uid(1): ("b-0", "landed", "b-1", "detail 1", "7.3.4"),
        uid(2): ("b-1", None, None, None, "7.3.4"),
    }
    assert attempt_counters(db_url) == {"landed": 1}


def test_a_bad_attempt_is_refused_alone(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line naming its fault, an import-refused event; its neighbours imported."""
    boots_ = [boot_obj(HOST, f"b-{i}", "7.3.4", None, 1_780_000_000 + i) for i in range(3)]
    objs = [attempt_obj(i, "b-0", "landed", "b-1") for i in range(300)]
    objs[100]["argv"] = [["kexec", 1]]
    objs[200]["uid"] = "u" * 37
    res = run_import(capsys, db_url, write(tmp_path / "x.jsonl", boots_ + objs), rc=1)
    assert res["new"]["attempt"] == 298 and res["bad"] == 2, res
    name = tmp_path / "x.jsonl"
    assert res["stderr"].splitlines() == [
        f"khoctl: warning: {name}:105: argv: expected an array of argv lists of strings",
        f"khoctl: warning: {name}:205: uid: longer than 36 characters",
    ]
    store = open_store(db_url)
    with store.engine.connect() as conn:
        refused = (
            conn.execute(select(events.c.message).where(events.c.kind == "import-refused"))
            .scalars()
            .all()
        )
    store.dispose()
    assert sorted(refused) == [
        f"{name}:105: argv: expected an array of argv lists of strings",
        f"{name}:205: uid: longer than 36 characters",
    ]
    assert len(attempts(db_url)) == 298
