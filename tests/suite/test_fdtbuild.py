"""The test FDT builder must produce trees that dtc (a second implementation) reads."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.fdtbuild import kho_root, v1_subtree, v3_subtree


def dts(blob: bytes, tmp_path: Path) -> str:
    f = tmp_path / "t.dtb"
    f.write_bytes(blob)
    return subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", str(f)], check=True, capture_output=True, text=True
    ).stdout


def test_dtc_reads_a_built_kho_v1_tree(tmp_path: Path) -> None:
    out = dts(kho_root("kho-v1", 0x1000, [v1_subtree("memblock", 0x2000)]), tmp_path)
    assert 'compatible = "kho-v1";' in out
    assert "memblock {" in out
    assert "fdt = <0x200000 0x00>;" in out  # little-endian u64 inside BE cells


def test_builder_matches_the_real_kernel_layout(tmp_path: Path) -> None:
    # the real 7.3.4 in/fdt prints blob-size 73 as <0x49000000 0x00>; so must ours
    out = dts(kho_root("kho-v4", 0x1, [v3_subtree("kexec-metadata", 0x1, 73)]), tmp_path)
    assert "blob-size = <0x49000000 0x00>;" in out
