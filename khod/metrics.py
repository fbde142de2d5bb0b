"""Prometheus exposition of the metrics snapshot (``khod.contracts.MetricsSnapshot``),
from a private registry and a custom collector that reads the snapshot at scrape time.
No per-boot labels."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from khod import __version__
from khod.atomic import write_file
from khod.contracts import MetricsSnapshot, RecordError, read_snapshot
from khod.fleet.worker import REASON_LABELS as SYNC_FAILURE_REASONS
from khod.records import KINDS, SOURCES, VERDICTS


class SnapshotCollector:
    def __init__(self, store_errors: int = 0) -> None:
        """``store_errors``: the failed ingests counted before in this boot, by an
        earlier run of the daemon (khod.daemon.counters)."""
        self._lock = threading.Lock()
        self._snap = MetricsSnapshot()
        self._loaded = False  # a snapshot was set: what is served is an ingest's
        self._store_errors = store_errors
        self._sync: dict[str, float] | None = None  # set once sync.to is configured
        self._sync_failures: dict[str, float] = {}  # by reason
        self.on_change: Callable[[], None] | None = None  # e.g. drop a cached exposition

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def set(self, snap: MetricsSnapshot) -> None:
        with self._lock:
            self._snap = snap
            self._loaded = True
        self._changed()

    def load(self, path: Path) -> RecordError | None:
        """Serve the snapshot at ``path`` (none there yet: what is served stays). One
        that cannot be read (another version, cut short, garbage) is returned, and the
        last good one, or the empty one, is served on."""
        try:
            snap = read_snapshot(path)
        except RecordError as e:
            return e
        if snap is not None:
            self.set(snap)
        return None

    def serving(self) -> str:
        """What is served, for a line about a snapshot that was refused."""
        with self._lock:
            return "the last good snapshot" if self._loaded else "no snapshot yet (empty)"

    def store_error(self) -> int:
        """Count a failed ingest; the count in this boot so far."""
        with self._lock:
            self._store_errors += 1
            n = self._store_errors
        self._changed()
        return n

    def store_errors(self) -> int:
        with self._lock:
            return self._store_errors

    def sync_result(self, ok: bool, reason: str = "other") -> None:
        with self._lock:
            st = self._sync or {"last_success": math.nan}
            if ok:
                st["last_success"] = time.time()
            else:
                self._sync_failures[reason] = self._sync_failures.get(reason, 0.0) + 1
            self._sync = st
        self._changed()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            s = self._snap
            store_errors = self._store_errors
            sync = dict(self._sync) if self._sync is not None else None
            failures = dict(self._sync_failures)
        if sync is not None:
            g = GaugeMetricFamily(
                "khod_sync_last_success_timestamp_seconds",
                "When khoctl sync last pushed this host's rows to the fleet database",
            )
            g.add_metric([], sync["last_success"])
            yield g
            c = CounterMetricFamily(
                "khod_sync_failures",
                "Pushes to the fleet database that failed (retried), by why",
                labels=["reason"],
            )
            for reason in sorted(set(SYNC_FAILURE_REASONS) | set(failures)):
                c.add_metric([reason], failures.get(reason, 0.0))
            yield c
        boot = s.boot
        g = GaugeMetricFamily(
            "khod_kexecs_since_cold_boot",
            "Kexecs since the last cold boot (kexec_count of this boot)",
        )
        if boot is not None and boot.kexec_count is not None:
            g.add_metric([], boot.kexec_count)
        yield g
        info = GaugeMetricFamily(
            "khod_boot_info",
            "This boot: release, where it came from",
            labels=["release", "previous_release", "kind", "kho_abi"],
        )
        if boot is not None:
            info.add_metric(
                [boot.release, boot.previous_release or "", boot.kind, boot.kho_abi or ""],
                1,
            )
        yield info
        # beside khod_boot_info, whose labels are a contract: where that previous_release
        # and khod_kexecs_since_cold_boot come from; empty: unknown, or a cold boot
        chain = GaugeMetricFamily(
            "khod_boot_chain_info",
            "Where this boot's previous_release and kexec_count come from: kho, kmsg "
            "(the kernel's), attempt, derived (khod's own); empty when unknown",
            labels=["metadata_source"],
        )
        if boot is not None:
            chain.add_metric([boot.metadata_source or ""], 1)
        yield chain
        g = GaugeMetricFamily(
            "khod_liveupdate_number",
            "Live updates (LUO) handed over into this boot (liveupdate_num; absent: no LUO)",
        )
        if boot is not None and boot.liveupdate_num is not None:
            g.add_metric([], boot.liveupdate_num)
        yield g
        g = GaugeMetricFamily("khod_kho_enabled", "1 when KHO is enabled in this kernel")
        if boot is not None:
            g.add_metric([], 1 if boot.kho_enabled else 0)
        yield g
        g = GaugeMetricFamily("khod_boot_timestamp_seconds", "When this boot started")
        if boot is not None and boot.booted_at is not None:
            g.add_metric([], boot.booted_at)
        yield g
        g = GaugeMetricFamily("khod_kho_scratch_bytes", "KHO scratch (7.4: bootmem) bytes")
        if boot is not None:
            g.add_metric([], boot.scratch_bytes)
        yield g
        yield _by_label(
            GaugeMetricFamily("khod_boots", "Boots of this machine in the store", labels=["kind"]),
            KINDS,
            s.boots_by_kind,
        )
        g = GaugeMetricFamily(
            "khod_pstore_records",
            "pstore records of this machine in the store",
            labels=["backend", "type"],
        )
        for backend, type_, n in s.pstore:
            g.add_metric([backend, type_], n)
        yield g
        yield _by_label(
            CounterMetricFamily(
                "khod_kexec_attempts", "Kexec attempts by their verdict", labels=["verdict"]
            ),
            VERDICTS,
            s.attempts_by_verdict,
        )
        errors = dict(s.source_errors)
        errors["store"] = errors.get("store", 0) + store_errors
        yield _by_label(
            CounterMetricFamily(
                "khod_source_errors",
                "Problems reading or decoding this boot's sources",
                labels=["source"],
            ),
            SOURCES,
            errors,
        )
        g = GaugeMetricFamily(
            "khod_last_ingest_timestamp_seconds", "When khod last ingested this boot successfully"
        )
        g.add_metric([], s.last_ingest or math.nan)
        yield g
        g = GaugeMetricFamily("khod_ingest_duration_seconds", "How long the last ingest took")
        g.add_metric([], s.ingest_duration or math.nan)
        yield g
        g = GaugeMetricFamily(
            "khod_build_info",
            "The khod serving these metrics (as node_exporter's build_info)",
            labels=["version"],
        )
        g.add_metric([__version__], 1)
        yield g


def _by_label(
    family: GaugeMetricFamily | CounterMetricFamily,
    known: tuple[str, ...],
    counts: Mapping[str, int],
) -> Metric:
    """One sample per name of a known vocabulary (zero when absent) and per name a
    newer khod stored, so a series never disappears when its count is zero."""
    for name in sorted(set(known) | set(counts)):
        family.add_metric([name], counts.get(name, 0))
    return family


def make_registry(collector: SnapshotCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


TEXTFILE_MODE = 0o644  # node_exporter reads it as another user


def write_textfile(path: str, registry: CollectorRegistry) -> None:
    """For node_exporter's textfile collector (khod.atomic: never half a file)."""
    write_file(path, exposition(registry), TEXTFILE_MODE)
