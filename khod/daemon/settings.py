"""What the resident daemon runs under, and how a reload changes it: the configuration,
the state dir and the files the daemon keeps there (the metrics snapshot, its own
counters), and the job each later ingest is sent (``khod.ingest.worker``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from khod.config import Config
from khod.paths import HostPaths


@dataclass(frozen=True)
class Settings:
    paths: HostPaths  # the host (--sysroot), built once by the command line
    config_path: Path | None
    cfg: Config
    state_dir: Path
    db: str | None
    debug: bool = False

    @property
    def snapshot(self) -> Path:
        return self.state_dir / "metrics.json"

    @property
    def counters(self) -> Path:
        """What only the daemon counts, kept across its restarts (khod.daemon.counters)."""
        return self.state_dir / "counters.json"


def ingest_job(s: Settings, *, rescan: bool = False, store_checked: bool = False) -> bytes:
    """A later ingest's job, for ``khod.ingest.worker``'s stdin: this boot collected
    again (or only pstore rescanned), under the daemon's configuration."""
    from khod.contracts import IngestJob, encode  # noqa: PLC0415

    job = IngestJob(
        s.cfg,
        s.paths,
        rescan=rescan,
        snapshot=s.snapshot,
        journal=True,
        store_checked=store_checked,
    )
    return encode(job)


def reloaded(old: Settings, new: Settings, log: Callable[[str], None]) -> Settings:
    """The settings after a reload read ``new``: the host is the start's, and the
    listening address too (the socket is bound once; a change is said, not applied)."""
    if new.cfg.listen != old.cfg.listen:
        log("warning: daemon.listen changed; restart khod to apply it")
    return Settings(
        old.paths,
        new.config_path,
        replace(new.cfg, listen=old.cfg.listen),
        new.state_dir,
        new.db,
        new.debug,
    )
