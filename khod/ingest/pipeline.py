"""One ingest, start to end: check the store, open it, recover spooled boots, save this
boot (or rescan pstore), release owned pstore files, apply retention, write the
metrics snapshot, say ready, journal, drop this boot's spool.

``khod --once``, the daemon's first ingest and its later ones (``khod.ingest.worker``)
all run ``run_ingest``; what each one does differently is in its ``IngestJob``
(``khod.contracts``).
Progress and problems are lines on stderr (``khod: ...``), which the daemon logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from khod.contracts import IngestJob, MetricsSnapshot
from khod.errors import KhodError
from khod.observation import BootObservation, Event, Severity

# What a kernel does on every such boot, as designed: recorded (``khoctl show``), not a
# line on stderr each time. A cold boot's out/fdt is sized when debugfs registers it and
# cut short once reserve_mem's subtree grows the FDT (docs/kernels.md).
UNSAID = frozenset({("fdt-truncated", Severity.INFO)})


def print_events(events: Sequence[Event]) -> None:
    for e in events:
        if (e.kind, e.severity) not in UNSAID:
            print(f"khod: {e.severity}: {e.message}", file=sys.stderr)


def collect_boot(job: IngestJob) -> BootObservation:
    """This boot, collected through ``job.paths``; its problems printed."""
    from khod.collect.boot import collect  # noqa: PLC0415

    obs = collect(job.paths, job.cfg.inflate_limit)
    print_events(obs.events)
    return obs


def write_textfile(path: str, snap: MetricsSnapshot) -> None:
    """The daemon's exposition of ``snap`` (its collector, its registry), written whole
    to ``path`` for node_exporter: ``khod --once`` without a resident khod."""
    from khod.metrics import SnapshotCollector, make_registry  # noqa: PLC0415
    from khod.metrics import write_textfile as write  # noqa: PLC0415

    collector = SnapshotCollector()
    collector.set(snap)
    try:
        write(path, make_registry(collector))
    except OSError as e:
        raise KhodError(f"cannot write {path}: {e.strerror or e}") from None


def journal_unchecked(event: Event | None) -> None:
    """The store could not be checked and then not written (a full disk): the event
    goes to the journal, the one place left to write it; the error is the one line."""
    if event is None:
        return
    from khod.adapters import sd  # noqa: PLC0415

    with contextlib.suppress(OSError):  # no journal either: the error line says it all
        sd.send(
            event.message,
            sd.event_message_id(event),
            sd.PRIORITY[event.severity],
            KHOD_EVENT=event.kind,
            KHOD_SOURCE=event.source,
        )


def run_ingest(job: IngestJob, on_ready: Callable[[], object] | None = None) -> int:
    """Run ``job``; ``on_ready`` (the daemon's cue for READY=1) once the boot is
    committed and the snapshot written. 0, or an error raised (``khod.oneline``)."""
    from khod.ingest.steps import (  # noqa: PLC0415
        IngestOptions,
        Rescan,
        recover_spools,
        rescan_pstore,
        save_boot,
    )
    from khod.sources.capture import read_boot_id  # noqa: PLC0415
    from khod.store.db import open_store  # noqa: PLC0415
    from khod.store.location import store_url  # noqa: PLC0415
    from khod.store.retention import retention  # noqa: PLC0415
    from khod.store.salvage import salvage  # noqa: PLC0415

    cfg, paths = job.cfg, job.paths
    obs = None if job.rescan else job.obs if job.obs is not None else collect_boot(job)
    t0 = time.monotonic()
    opts = IngestOptions(own_pstore=cfg.own_pstore, inflate_limit=cfg.inflate_limit)
    # the daemon checks the whole store in its first ingest; its later ones the header
    url = store_url(None, cfg.db)  # the command line's (a job built without one: the default)
    damaged = salvage(url, quick_check=not job.store_checked)
    if damaged is not None and damaged.severity is Severity.INFO:  # checked, whole
        if job.snapshot is not None:  # a daemon's ingest: say so once per start
            print(f"khod: {damaged.message}", file=sys.stderr)
        damaged = None
    unchecked = None  # a full disk, an I/O error: recorded if the store takes the boot
    if damaged is not None and damaged.kind == "store-unchecked":
        unchecked = damaged
    elif damaged is not None:
        print_events([damaged])
    if damaged is not None and obs is not None:
        obs = dataclasses.replace(obs, events=(*obs.events, damaged))
    try:
        store = open_store(url)
    except BaseException:
        journal_unchecked(unchecked)
        raise
    if unchecked is not None:
        print_events([unchecked])
    spool = Path(cfg.state_dir) / "spool"
    rescan: Rescan | None = None
    try:
        for line in recover_spools(spool, store, opts, read_boot_id(paths)):
            print(f"khod: {line}", file=sys.stderr)
        if obs is None:
            from khod.sources.identity import this_boot, this_machine  # noqa: PLC0415

            machine, boot = this_machine(paths), this_boot(paths)
            if machine is None or boot is None:
                raise KhodError("cannot identify this boot for the pstore rescan")
            rescan = rescan_pstore(paths, store, machine, boot, opts)
            result, new = rescan.result, rescan.events
            print(f"khod: pstore rescan: {result.new_pstore} new records")
        else:
            result, later = save_boot(paths, store, obs, opts)
            if result.chain is not None:  # khod's own chain: journaled and said as stored
                obs = dataclasses.replace(
                    obs,
                    previous_release=result.chain.previous_release,
                    kexec_count=result.chain.kexec_count,
                    metadata_source=result.chain.metadata_source,
                )
            machine, boot = obs.machine_id, obs.boot_id
            new = [e for e in later if e.severity is not Severity.INFO]
        print_events(new)
        kept = retention(
            store,
            machine,
            result.boot_pk,
            max_boots=cfg.max_boots,
            max_age=cfg.max_age,
            max_bytes=cfg.max_bytes,
        )
        print_events(kept.events)
        if kept.deleted:
            print(f"khod: retention: removed {kept.deleted} old boots", file=sys.stderr)
        snap = None
        if job.snapshot is not None or job.textfile:
            from khod.ingest.snapshot import compute_snapshot, write_snapshot  # noqa: PLC0415

            snap = compute_snapshot(
                store, machine, boot, ingested_at=time.time(), duration=time.monotonic() - t0
            )
            if job.snapshot is not None:
                write_snapshot(job.snapshot, snap)
        if on_ready is not None:
            on_ready()
        if job.journal:
            from khod.adapters import sd  # noqa: PLC0415

            if rescan is not None:  # a rescan: the records a late backend brought
                sd.journal_pstore(rescan.boot, rescan.records, result.pstore_saved)
            elif obs is not None:
                if result.created:
                    sd.journal_boot(obs, list(obs.events))
                sd.journal_pstore(obs, obs.pstore, result.pstore_saved)
        try:
            (spool / f"{boot}.spool").unlink(missing_ok=True)  # ingested: no longer needed
        except OSError as e:
            print(
                f"khod: warning: cannot remove {spool / boot}.spool: {e.strerror}", file=sys.stderr
            )
    except BaseException:
        journal_unchecked(unchecked)
        raise
    finally:
        store.dispose()
    if job.textfile and snap is not None:  # the boot is committed: a failure here loses nothing
        write_textfile(job.textfile, snap)
    if obs is not None:
        what = f"{obs.kind}"
        if obs.previous_release is not None or obs.kexec_count:
            what += f" from {obs.previous_release or '?'}, count {obs.kexec_count}"
        verb = "recorded" if result.created else "already recorded"
        n = result.new_pstore
        ps = f"; {n} new pstore record{'s' if n != 1 else ''}" if n else ""
        print(f"khod: {verb} boot {obs.boot_id} ({obs.release}, {what}){ps} in {store.location}")
    return 0
