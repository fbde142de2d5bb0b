"""Ingest: collect this boot and save it; rescan pstore alone when a backend loads late."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from khod.collect.boot import collect
from khod.collect.pstore import collect_pstore
from khod.errors import KhodError, SourceError
from khod.observation import BootObservation, Event, EventSource, PstoreRecord, Severity
from khod.parse.proc import UNKNOWN_MACHINE, provisional_machine_id
from khod.parse.pstore import DEFAULT_INFLATE_LIMIT
from khod.paths import HostPaths
from khod.records import KhoSubtreeName
from khod.sources.files import read_optional
from khod.store.boots import BootRecord, SaveResult, load_boot, save_later, save_observation
from khod.store.handle import Store


@dataclass(frozen=True)
class IngestOptions:
    own_pstore: bool = False
    inflate_limit: int = DEFAULT_INFLATE_LIMIT


def _release(
    paths: HostPaths,
    store: Store,
    boot_pk: int,
    machine_id: str,
    *,
    records: Sequence[PstoreRecord],
    opts: IngestOptions,
) -> list[Event]:
    """Unlink owned pstore files; only called once their rows are committed."""
    if not opts.own_pstore:
        return []
    from khod.ingest.pstore_owner import release_pstore_files  # noqa: PLC0415

    released = release_pstore_files(paths, records)
    save_later(store, boot_pk, machine_id, evs=released)
    return released


def save_boot(
    paths: HostPaths, store: Store, obs: BootObservation, opts: IngestOptions
) -> tuple[SaveResult, list[Event]]:
    """Save a collected boot (committed, synchronous=FULL), then release pstore."""
    result = save_observation(store, obs)
    later = _release(paths, store, result.boot_pk, obs.machine_id, records=obs.pstore, opts=opts)
    return result, later


@dataclass(frozen=True)
class Rescan:
    result: SaveResult
    events: list[Event]
    boot: BootRecord  # the recorded boot the records were added to
    records: list[PstoreRecord]  # every record found (result.pstore_saved: the new ones)


def rescan_pstore(
    paths: HostPaths, store: Store, machine_id: str, boot_id: str, opts: IngestOptions
) -> Rescan:
    """A pstore backend registered late: add its records to this (recorded) boot, also
    when it is still under the identity it had before /etc/machine-id was initialized
    (the next full ingest adopts it, records included)."""
    for machine in (machine_id, provisional_machine_id(boot_id), UNKNOWN_MACHINE):
        boot = load_boot(store, machine, boot_id)
        if boot is not None:
            machine_id = machine
            break
    if boot is None or boot.id is None:
        raise KhodError(f"boot {boot_id} is not recorded yet; ingest it first")
    shown = paths.rel(paths.kho_in_subtrees / KhoSubtreeName.PSTORE_KHO)
    events: list[Event] = []
    try:
        subtree = read_optional(paths.kho_in_subtrees / KhoSubtreeName.PSTORE_KHO, shown)
    except SourceError as e:
        events.append(
            Event("read-error", e.source, Severity.WARNING, str(e), origin=EventSource.PSTORE)
        )
        subtree = None
    records, more = collect_pstore(paths, subtree, opts.inflate_limit)
    events += more
    result = save_later(store, boot.id, machine_id, records, events)
    later = _release(paths, store, boot.id, machine_id, records=records, opts=opts)
    return Rescan(result, events + later, boot, list(records))


def recover_spools(
    spool_dir: Path, store: Store, opts: IngestOptions, current: str | None
) -> list[str]:
    """Ingest boots captured by an earlier daemon start that never finished ingesting
    (e.g. a boot that crashed within seconds). Each spool is unpacked into a temporary
    tree shaped like ``/`` and ingested from there; pstore files are not unlinked."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from khod.sources.capture import clean_spool, unpack  # noqa: PLC0415

    clean_spool(spool_dir)  # what a capture killed mid-write left
    lines = []
    try:
        spools = sorted(spool_dir.glob("*.spool"))
    except OSError:
        return []
    for sp in spools:
        if sp.stem == current:
            continue  # this boot (current = its boot id): ingested live right after
        tmp = Path(tempfile.mkdtemp(prefix="khod-spool-"))
        try:
            unpack(str(sp), str(tmp))
            obs = collect(HostPaths(tmp), opts.inflate_limit)
            result = save_observation(store, obs)
            lines.append(
                f"recovered boot {obs.boot_id} from its spool "
                f"({'recorded' if result.created else 'already recorded'})"
            )
            sp.unlink()
        except (OSError, ValueError, KhodError) as e:
            lines.append(f"warning: spool {sp.name} not ingested: {e}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return lines
