"""The nometa captures (tests/data/nometa-chain): a real 7.3.4 x86 kernel with the
kexec-metadata subtree left out, the stand-in for a KHO kernel from before 7.1, in a
chain with stock kernels (tests/vm/test_e2e_nometa.py made them; see its README.txt):

    0 a cold -> 1 nometa -> 2 nometa -> 3 a (plain kexec -s) -> 4 b

What each boot shows is checked against what its kernel logged, and khod's chain over
the five boots (khoctl's attempts at 0, 1 and 3, as in the run) against the kernels."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from khod.cli import khoctl, khod_main
from khod.cli.common import run_main
from khod.collect.boot import collect
from khod.observation import BootKind
from khod.parse.kmsg import KhoLog, parse_kho_log, parse_kmsg
from khod.parse.metadata import KexecMetadata, parse_kexec_metadata
from khod.paths import HostPaths
from tests.conftest import DATA, restore_pstore_mtimes
from tests.kimagebuild import bzimage

BASE = DATA / "nometa-chain"
KHO = "sys/kernel/debug/kho"
FAKE_KEXEC = """#!{python}
import sys
if sys.argv[1:] == ["--version"]:
    print("kexec-tools 2.0.25")
"""


def roots() -> list[Path]:
    return [BASE / f"step{n}" for n in range(5)]


def release(root: Path) -> str:
    return (root / "proc/sys/kernel/osrelease").read_text().strip()


def kho_log(root: Path) -> KhoLog:
    return parse_kho_log(parse_kmsg((root / "dev/kmsg").read_bytes()))


def metadata(root: Path, direction: str) -> KexecMetadata | None:
    p = root / KHO / direction / "sub_fdts/kexec-metadata"
    return parse_kexec_metadata(p.read_bytes(), str(p)) if p.exists() else None


def test_capture_files_match_their_manifest() -> None:
    manifest: dict[str, str] = {}
    for line in (BASE / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        manifest[rel] = digest
    present = {str(p.relative_to(BASE)) for p in BASE.rglob("*") if p.is_file()}
    assert present - {"SHA256SUMS"} == set(manifest)
    for rel, digest in manifest.items():
        assert hashlib.sha256((BASE / rel).read_bytes()).hexdigest() == digest, rel


def test_the_boots_are_the_chain_of_the_readme() -> None:
    readme = (BASE / "README.txt").read_text()
    tags = []
    for n, root in enumerate(roots()):
        assert (root / "proc/cmdline").read_text().split()[-1] == f"khod.step={n}"
        assert "kho=on" in (root / "proc/cmdline").read_text()
        assert f"kernel:          {release(root)}" in readme
        tags.append(release(root).rsplit("-", 1)[1])
    assert tags == ["a", "nometa", "nometa", "a", "b"]
    # the boot protocol's loader: QEMU's (0xB0) cold, kexec (0xD0) after
    loaders = [int((r / "proc/sys/kernel/bootloader_type").read_text()) for r in roots()]
    assert loaders == [0xB0] + [0xD0] * 4


def test_the_nometa_kernel_neither_reads_nor_hands_on_a_subtree() -> None:
    r = roots()
    # "KHO: found kexec handover data.": every handover was taken
    assert [kho_log(root).found_handover for root in r] == [False] + [True] * 4
    # no "exec from" line but on the stock kernel after a stock kernel
    said = [kho_log(root) for root in r]
    assert [(s.exec_from_release, s.exec_from_count) for s in said] == [(None, None)] * 4 + [
        (release(r[3]), 1)
    ]
    # boot 1 was handed a's subtree and did not read it; debugfs shows it all the same
    meta1 = metadata(r[1], "in")
    assert meta1 is not None and (meta1.previous_release, meta1.kexec_count) == (release(r[0]), 1)
    for root in r[1:3]:  # the nometa boots hand nothing on
        assert metadata(root, "out") is None
        assert (root / KHO / "out").is_dir()
    assert metadata(r[2], "in") is None and metadata(r[3], "in") is None
    # a, entered from nometa, counts from 0 again: it hands on count 1
    out3 = metadata(r[3], "out")
    assert out3 is not None and (out3.previous_release, out3.kexec_count) == (release(r[3]), 1)
    meta4 = metadata(r[4], "in")
    assert meta4 is not None
    assert (meta4.previous_release, meta4.kexec_count) == (
        said[4].exec_from_release,
        said[4].exec_from_count,
    )


@pytest.mark.parametrize("n", range(5))
def test_khod_collects_each_boot_as_its_kernel_shows_it(n: int, tmp_path: Path) -> None:
    root = tmp_path / f"step{n}"
    shutil.copytree(BASE / f"step{n}", root)
    restore_pstore_mtimes(root)
    obs = collect(HostPaths(root))
    assert obs.boot_id == (root / "proc/sys/kernel/random/boot_id").read_text().strip()
    meta = metadata(root, "in")
    if n == 0:
        assert (obs.kind, obs.previous_release, obs.kexec_count) == (BootKind.COLD, None, 0)
        return
    assert obs.kind is BootKind.KEXEC and obs.kho_abi == "kho-v4"
    if meta is None:  # the kernel gave no figures: none until the store derives them
        assert (obs.previous_release, obs.kexec_count, obs.metadata_source) == (None, None, None)
    else:
        assert (obs.previous_release, obs.kexec_count, obs.metadata_source) == (
            meta.previous_release,
            meta.kexec_count,
            "kho",
        )


@pytest.fixture
def fake_kexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("kexec", "systemctl"):
        p = d / name
        p.write_text(FAKE_KEXEC.format(python=os.path.realpath(sys.executable)))
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")


def test_the_chain_over_the_five_boots(
    tmp_path: Path, fake_kexec: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """As in the run: khoctl kexec at 0, 1 (--force: a kho-v4 kernel without outgoing
    metadata fails its check) and 3; a plain kexec at 2."""
    db = f"sqlite:///{tmp_path / 'k.db'}"
    r = []
    for src in roots():
        r.append(tmp_path / src.name)
        shutil.copytree(src, r[-1])
        restore_pstore_mtimes(r[-1])
    for n, root in enumerate(r):
        argv = ["--once", "--sysroot", str(root), "--db", db, "--state-dir", str(tmp_path / "st")]
        assert run_main("khod", khod_main.main, argv) == 0
        if n in (0, 1, 3):
            img = tmp_path / f"vmlinuz-{n + 1}"
            img.write_bytes(bzimage(release(r[n + 1])))
            force = ["--force"] if n == 1 else []
            argv = ["kexec", "--sysroot", str(root), "--kernel", str(img), "--db", db, *force]
            assert run_main("khoctl", khoctl.main, argv) == 0, capsys.readouterr()
    capsys.readouterr()
    argv = ["history", "--all", "--json", "--sysroot", str(r[4]), "--db", db]
    assert run_main("khoctl", khoctl.main, argv) == 0
    got: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    rows = {row["boot_id"]: row for row in got}
    chain = [
        (
            rows[b]["kind"],
            rows[b]["previous_release"],
            rows[b]["kexec_count"],
            rows[b]["metadata_source"],
            rows[b].get("verdict"),
        )
        for b in ((root / "proc/sys/kernel/random/boot_id").read_text().strip() for root in r)
    ]
    a, nometa = release(r[0]), release(r[1])
    assert chain == [
        ("cold", None, 0, None, None),
        ("kexec", a, 1, "kho", "landed"),  # a's subtree, which the nometa kernel did not read
        # nothing from the kernel: the chain from khoctl's attempt, which landed
        ("kexec", nometa, 2, "attempt", "landed"),
        ("kexec", None, None, None, None),  # a plain kexec, no journal: unknown, not guessed
        ("kexec", a, 1, "kho", "landed"),  # the kernel's figures win over the attempt's
    ]
