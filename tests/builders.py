"""What many tests build, in one place: a host made from a captured fixture step, khod
and khoctl run in-process on it with their argv built once (``--sysroot``, ``--db``,
``--state-dir``; JSON parsed), and the rows of a khod export (tests and
bench/fleet.py)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from khod.fleet.format import VERSION as EXPORT_VERSION

if TYPE_CHECKING:
    import pytest


@dataclass(frozen=True)
class Out:
    """What a command did: its exit code and what it printed."""

    rc: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def new_pstore(self) -> int:
        """The pstore records khod --once said it recorded new."""
        m = re.search(r"; (\d+) new pstore records? in ", self.out)
        return int(m.group(1)) if m else 0


@dataclass(frozen=True)
class Host:
    """One host as khod and khoctl see it: the tree they read (a copy of a fixture
    step, or a real-shaped tree a test made), the store URL, khod's state directory.
    Each command is run in-process (``run_main``, as the installed scripts do), its
    output read from ``capsys``."""

    root: Path
    db: str | None = None
    state_dir: Path | None = None
    capsys: pytest.CaptureFixture[str] | None = None

    def at(self, root: Path) -> Host:
        """The same store, another boot's tree."""
        return dataclasses.replace(self, root=root)

    def common(self) -> list[str]:
        argv = ["--sysroot", str(self.root)]
        return argv if self.db is None else [*argv, "--db", self.db]

    def khod_argv(self, *argv: str) -> list[str]:
        state = [] if self.state_dir is None else ["--state-dir", str(self.state_dir)]
        return [*argv, *self.common(), *state]

    def khoctl_argv(self, *argv: str) -> list[str]:
        return [*self.common(), *argv]  # before the command: every command takes them

    def khod(self, *argv: str) -> Out:
        from khod.cli import khod_main

        return self._run("khod", khod_main.main, self.khod_argv(*argv))

    def once(self, *argv: str) -> Out:
        """khod --once: ingest this boot."""
        return self.khod("--once", *argv)

    def ingest(self, *argv: str) -> Out:
        """khod --once that must succeed."""
        r = self.once(*argv)
        assert r.rc == 0, r.err
        return r

    def khoctl(self, *argv: str) -> Out:
        from khod.cli import khoctl

        return self._run("khoctl", khoctl.main, self.khoctl_argv(*argv))

    def khoctl_json(self, *argv: str) -> Any:
        """khoctl CMD ... --json that must succeed: the document it printed."""
        r = self.khoctl(*argv, "--json")
        assert r.rc == 0, r.err
        return r.json

    def _run(self, prog: str, main: Any, argv: list[str]) -> Out:
        from khod.cli.common import run_main

        if self.capsys is not None:
            self.capsys.readouterr()
        rc = run_main(prog, main, argv)
        if self.capsys is None:
            return Out(rc, "", "")
        got = self.capsys.readouterr()
        return Out(rc, got.out, got.err)


# --- the rows of a khod export (khoctl export / import) ---


def export_line(obj: dict[str, Any]) -> str:
    """One line of an export, as khoctl export writes it (compact)."""
    return json.dumps(obj, separators=(",", ":")) + "\n"


def export_header(version: int = EXPORT_VERSION) -> dict[str, Any]:
    return {"object": "header", "format": "khod-export", "version": version}


def write_export(path: Path, objs: list[dict[str, Any]], version: int = EXPORT_VERSION) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in [export_header(version), *objs]))
    return path


def boot_row(
    machine: str, boot: str, release: str, prev: str | None, t: int, **fields: Any
) -> dict[str, Any]:
    """A boot at ``t``: a kexec from ``prev`` (count 1) or, without it, a cold boot;
    ``fields`` replace any column."""
    row = {
        "object": "boot",
        "machine_id": machine,
        "boot_id": boot,
        "booted_at": t,
        "release": release,
        "cmdline": "console=ttyS0",
        "kind": "kexec" if prev else "cold",
        "kind_reason": None,
        "kho_enabled": True,
        "kho_abi": "kho-v4",
        "memory_map_handed": None,
        "previous_release": prev,
        "previous_release_raw": None,
        "kexec_count": 1 if prev else 0,
        "metadata_source": "kho" if prev else None,
        "subtrees": [],
        "out_subtrees": [],
        "out_release": None,
        "out_kexec_count": None,
        "scratch": [],
        "ingested_at": float(t + 5),
        "khod_version": "test",
    }
    return row | fields


def pstore_row(
    machine: str,
    found_by: str,
    describes: str | None,
    reason: str,
    part: int = 1,
    salt: str = "",
    *,
    raw: bytes | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A dmesg record of ``reason`` found by boot ``found_by`` about ``describes``."""
    raw = f"{reason}#1 Part{part}\n{found_by}{salt}\n".encode() if raw is None else raw
    row = {
        "object": "pstore",
        "machine_id": machine,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "collected_by": found_by,
        "describes": describes,
        "location": "pstore",
        "path": f"dmesg-efi-{part}",
        "name": f"dmesg-efi-{part}",
        "type": "dmesg",
        "backend": "efi",
        "record_id": part,
        "part": part,
        "reason": reason,
        "count": 1,
        "record_time": None,
        "compressed": False,
        "inflate_status": "plain",
        "size": len(raw),
        "raw": base64.b64encode(raw).decode(),
        "text": raw.decode(),
        "release": None,
        "dump_key": f"efi:dmesg:{found_by}",
        "collected_at": 0.0,
    }
    return row | fields


def attempt_row(
    machine: str,
    uid: str,
    *,
    from_boot: str,
    prev: str,
    target: str | None,
    verdict: str | None,
    verdict_boot: str | None,
    created_at: float,
    **fields: Any,
) -> dict[str, Any]:
    """A kexec attempt from ``from_boot`` (khoctl's when it names a target, else the
    kexec.target hook's) and the verdict of the boot that judged it."""
    row = {
        "object": "attempt",
        "uid": uid,
        "machine_id": machine,
        "from_boot": from_boot,
        "created_at": created_at,
        "source": "khoctl" if target else "hook",
        "target_image": None,
        "target_release": target,
        "target_abi": None,
        "initrd": None,
        "cmdline": None,
        "checks": [],
        "forced": False,
        "argv": [],
        "expected_previous_release": prev,
        "expected_kexec_count": 1,
        "verdict": verdict,
        "verdict_boot": verdict_boot,
        "verdict_detail": None,
    }
    return row | fields
