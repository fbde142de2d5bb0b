"""The whole observation of every real fixture step, against its golden JSON (STYLE.md
rule 7): a field that changes, or a new one, shows here as a diff to read.

The files are tests/golden/observation/<scenario>-<step>.json. After a change that is
meant to alter them: ``KHOD_UPDATE_GOLDEN=1 python -m pytest tests/collect/test_golden.py``,
then read ``git diff tests/golden`` before committing it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from typing import Any

import pytest

from khod.collect.boot import collect
from khod.paths import HostPaths
from tests.conftest import FIXTURES, SysrootFactory
from tests.conftest import GOLDEN as GOLDEN_DIR

GOLDEN = GOLDEN_DIR / "observation"
STEPS = sorted(
    f"{p.parent.name}/{p.name}" for p in FIXTURES.glob("*/step*") if (p / "proc").is_dir()
)
LONG = 200  # longer text is kept as its length and hash, the first line shown


def plain(v: Any) -> Any:
    """The observation as JSON: bytes as their length and hash, long text likewise."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        out = {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        for prop in ("sha256", "fingerprint"):  # what the store keys on, derived
            if hasattr(type(v), prop):
                out[prop] = getattr(v, prop)
        return out
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, bytes):
        return {"bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()}
    if isinstance(v, str) and len(v) > LONG:
        first = v.splitlines()[0][:LONG] if v.strip() else ""
        digest = hashlib.sha256(v.encode()).hexdigest()
        return {"chars": len(v), "first_line": first, "sha256": digest}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    return v


@pytest.mark.parametrize("step", STEPS)
def test_the_observation_of_a_real_step_is_its_golden_one(
    step: str, sysroot: SysrootFactory
) -> None:
    got = plain(collect(HostPaths(sysroot(step))))
    golden = GOLDEN / f"{step.replace('/', '-')}.json"
    if os.environ.get("KHOD_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(golden.read_text())


def test_every_fixture_step_has_a_golden_file() -> None:
    names = {f"{s.replace('/', '-')}.json" for s in STEPS}
    assert len(STEPS) >= 12, STEPS
    assert {p.name for p in GOLDEN.glob("*.json")} == names
