"""The golden inputs are the real kernel's bytes: any change to them is a test failure."""

from __future__ import annotations

import hashlib

from tests.conftest import FIXTURES


def test_fixture_files_match_their_manifest() -> None:
    manifest = {}
    for line in (FIXTURES / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        manifest[name.removeprefix("./")] = digest
    present = {
        str(p.relative_to(FIXTURES))
        for p in FIXTURES.rglob("*")
        if p.is_file() and p.name != "SHA256SUMS"
    }
    assert present == set(manifest), "files added to or removed from tests/data/fixtures"
    for name, digest in manifest.items():
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest, name
