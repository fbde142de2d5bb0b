"""The fuzzing campaign: 10,000 mutants of a real input per parser, from a fixed seed
(a failure names its seed and index, so it replays), and the end-to-end form: `khod
--once` on a sysroot holding a mutant still records the boot.

Each parser may raise its own error type and nothing else: ParseError for the kernel
formats, ConfigError for the configuration file, BadObject for an export line.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from khod.cli.common import run_main
from khod.config import ConfigError, load_config
from khod.errors import ParseError
from khod.fleet.format import BadObject, parse_line
from khod.fleet.importer import Importer
from khod.parse.kimage import decompress_payload, parse_kernel_image
from khod.store.db import open_store
from khod.store.schema import boots
from tests import kimagebuild
from tests.builders import Host
from tests.conftest import FIXTURES, REPO, restore_pstore_mtimes
from tests.parse.test_fuzz import PARSERS, SEEDS

pytestmark = pytest.mark.slow

N = 10_000
SEED = 20261124


def mutate(rnd: random.Random, seed: bytes) -> bytes:
    """1-8 edits: bit flips, byte sets, cuts, inserts, and u32 fields set to edge values
    (lengths, offsets, tokens), as in tests/parse/test_fuzz.py, without hypothesis's cost."""
    data = bytearray(seed)
    for _ in range(rnd.randint(1, 8)):
        if not data:
            break
        i = rnd.randrange(len(data))
        op = rnd.randrange(5)
        if op == 0:
            data[i] ^= 1 << rnd.randrange(8)
        elif op == 1:
            data[i] = rnd.randrange(256)
        elif op == 2:
            del data[i : i + rnd.randint(1, 64)]
        elif op == 3:
            data[i:i] = rnd.randbytes(rnd.randint(1, 16))
        else:
            j = i & ~3
            v = rnd.choice([0, 1, 2, 3, 9, 0xFFFFFFFF, 0x7FFFFFFF, len(seed), len(seed) + 4])
            data[j : j + 4] = v.to_bytes(4, rnd.choice(["big", "little"]))
    return bytes(data)


def campaign(
    name: str,
    seed: bytes,
    parse: Callable[[bytes], object],
    allowed: tuple[type[Exception], ...],
) -> dict[str, int]:
    rnd = random.Random(f"{SEED}:{name}")
    tally = {"ok": 0, "refused": 0}
    for i in range(N):
        blob = mutate(rnd, seed)
        try:
            parse(blob)
            tally["ok"] += 1
        except allowed:
            tally["refused"] += 1
        except Exception as e:
            raise AssertionError(
                f"{name} mutant #{i} (seed {SEED}): {type(e).__name__}: {e}"
            ) from e
    return tally


def report(name: str, tally: dict[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nfuzz {name}: {N} mutants, {tally['ok']} parsed, {tally['refused']} refused")
    assert sum(tally.values()) == N


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_kernel_format_parsers(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    def parse(blob: bytes) -> object:
        out = []
        for p in PARSERS[name]:
            with contextlib.suppress(ParseError):
                out.append(p(blob, name))
        if not out:  # every parser of this input refused it
            raise ParseError(name, None, "refused")
        return out

    report(name, campaign(name, SEEDS[name], parse, (ParseError,)), capsys)


def test_kernel_image_header(capsys: pytest.CaptureFixture[str]) -> None:
    seed = kimagebuild.bzimage("7.3.4-fuzz")[:8192]

    def parse(blob: bytes) -> object:
        img = parse_kernel_image(blob, "bzImage")
        return decompress_payload(img, "bzImage", 1 << 20)

    report("bzImage", campaign("bzImage", seed, parse, (ParseError,)), capsys)


def test_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = (REPO / "packaging" / "khod.toml").read_text()
    seed = "\n".join(
        line[1:] if line.startswith("#") and "=" in line else line for line in shipped.splitlines()
    ).encode()
    path = tmp_path / "khod.toml"

    def parse(blob: bytes) -> object:
        path.write_bytes(blob)
        return load_config(path, required=True)

    report("config", campaign("config", seed, parse, (ConfigError,)), capsys)


def test_export_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Mutated export lines through the import path, valid survivors written to a real
    store: only BadObject (a bad line) may come out, and the store takes the rest."""
    src = f"sqlite:///{tmp_path / 'src.db'}"
    for step in ("pstore-kho/step0", "pstore-kho/step1"):
        root = tmp_path / step.replace("/", "-")
        shutil.copytree(FIXTURES / step, root)
        restore_pstore_mtimes(root)
        assert Host(root, src).once().rc == 0
    dump = tmp_path / "x.jsonl"
    assert Host(root, src).once().rc == 0
    from khod.cli import khoctl

    assert run_main("khoctl", khoctl.main, ["export", "--db", src, "-o", str(dump)]) == 0
    lines = dump.read_bytes().splitlines()[1:]
    store = open_store(f"sqlite:///{tmp_path / 'dst.db'}")
    importer = Importer(store, chunk_rows=500)
    rnd = random.Random(f"{SEED}:export")
    tally = {"ok": 0, "refused": 0}
    for i in range(N):
        blob = mutate(rnd, rnd.choice(lines))
        try:
            kind, values = parse_line(blob)  # the import's own per-line path
            importer.add(kind, values)
            tally["ok"] += 1
        except BadObject:
            tally["refused"] += 1
        except Exception as e:
            raise AssertionError(f"export mutant #{i}: {type(e).__name__}: {e}; {blob!r}") from e
    importer.flush()
    store.dispose()
    report("export line", tally, capsys)


# --- end to end: the mutant in a sysroot, khod --once, the boot recorded ---------

KHO = "sys/kernel/debug/kho"
E2E = {
    # what is mutated, in which captured step
    "in-fdt": ("pstore-kho/step1", f"{KHO}/in/fdt"),
    "metadata": ("kexec1/step1", f"{KHO}/in/sub_fdts/kexec-metadata"),
    "pstore-kho": ("pstore-kho/step1", f"{KHO}/in/sub_fdts/pstore-kho"),
    "dmesg-record": ("pstore/step0-boot2", "sys/fs/pstore/dmesg-ramoops-0"),
    "kmsg": ("kexec1/step1", "dev/kmsg"),
}
E2E_N = 200


@pytest.mark.parametrize("name", sorted(E2E))
def test_khod_records_the_boot_whatever_the_mutant(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    step, rel = E2E[name]
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / step, root)
    restore_pstore_mtimes(root)
    original = (root / rel).read_bytes()
    rnd = random.Random(f"{SEED}:e2e:{name}")
    for i in range(E2E_N):
        (root / rel).write_bytes(mutate(rnd, original))
        db = f"sqlite:///{tmp_path / f'{i}.db'}"
        capsys.readouterr()
        rc = Host(root, db).once().rc
        err = capsys.readouterr().err
        assert rc == 0, f"{name} mutant #{i}: exit {rc}: {err}"
        assert "Traceback" not in err and "internal error" not in err, (name, i, err)
        store = open_store(db)
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(boots)).scalar_one() == 1
        store.dispose()
        (tmp_path / f"{i}.db").unlink()
    with capsys.disabled():
        print(f"\nfuzz end to end {name}: {E2E_N} sysroots, each boot recorded")
