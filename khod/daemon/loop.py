"""The resident daemon. It never imports SQLAlchemy: ingests run in a child process
(the first one forked early, ``khod.daemon.first_ingest``; later ones ``khod.ingest.worker``)
that writes the metrics snapshot this process serves.

Start: (capture already done by the entry point; the boot collected in a child of
its own) -> child ingest, while this process binds /metrics -> READY=1 -> loop:
watchdog, late pstore backends (module uevents), SIGHUP (reload config, ingest
again), SIGTERM (stop), retry after a failed ingest.
The loop never waits on a child: an ingest or a sync runs as a ``Child`` it watches,
killed past its deadline (``daemon.ingest_timeout``), so WATCHDOG=1 and /metrics go on.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from khod.adapters import sd
from khod.daemon import syncplan
from khod.daemon.child import Child, Selectable
from khod.daemon.settings import Settings, ingest_job, reloaded
from khod.errors import KhodError
from khod.fleet import worker as fleet_worker

if TYPE_CHECKING:  # annotations only: neither is imported on the boot path here
    from khod.adapters.udev import UeventWatcher
    from khod.daemon.first_ingest import FirstIngest

SYNC_TIMEOUT = 600.0


class Daemon:
    def __init__(self, settings: Settings, reload: Callable[[], Settings]) -> None:
        self.s = settings
        self._reload = reload  # re-reads the config file
        self.stop = False
        self.hup = False
        self.retry_at: float | None = None
        self.sync_at: float | None = None  # the next push to the fleet database
        self.sync: Child | None = None
        self.sync_failures = 0
        self.sync_delay: float | None = None  # the last retry's (khod.daemon.syncplan)
        self.splay: float | None = None  # this host's, read at its first push
        # the local store's files before the running push (khod.daemon.syncplan.store_stamp),
        # and before the last one that succeeded: while they are the same, nothing is new
        self.sync_stamp: syncplan.Stamp | None = None
        self.quiet_stamp: syncplan.Stamp | None = None
        self.ingest_child: Child | None = None
        self.ingest_reload = False  # the running ingest is a reload's: READY=1 after it
        self.pending: list[tuple[bool, bool]] = []  # (a pstore rescan only, a reload's)
        self.checked_db: str | None = None  # the store an ingest of this start checked whole
        self.checking: str | None = None  # the store the running ingest checks whole
        self.recorded = False  # an ingest of this start succeeded: the boot is in the store
        self.boot_id: str | None = None  # this boot's, read at start
        self.counters_saved = True  # the last write of the counters succeeded

    def log(self, msg: str) -> None:
        print(f"khod: {msg}", file=sys.stderr, flush=True)

    def _signals(self) -> socket.socket:
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)

        def on_signal(signum: int, _frame: object) -> None:
            if signum == signal.SIGHUP:
                self.hup = True
            else:
                self.stop = True

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        self._wsock = wsock
        return rsock

    def ingest(self, *, rescan: bool = False, reload: bool = False) -> None:
        """Queue a child ingest (one runs at a time; the same one is queued once) and
        start it when none is running; the loop watches it (``_ingest_step``)."""
        for i, (queued, was_reload) in enumerate(self.pending):
            if queued == rescan:
                self.pending[i] = (queued, was_reload or reload)
                break
        else:
            self.pending.append((rescan, reload))
        self._start_ingest()

    def _start_ingest(self) -> None:
        if self.ingest_child is not None or not self.pending:
            return
        rescan, self.ingest_reload = self.pending.pop(0)
        checked = self.s.db == self.checked_db  # checked whole this start: the header
        self.checking = None if checked else self.s.db  # else the first failed, a reload
        from khod.ingest.worker import argv  # noqa: PLC0415

        self.ingest_child = Child(
            argv(self.s.debug),
            float(max(1, self.s.cfg.ingest_timeout)),
            "ingest",
            ingest_job(self.s, rescan=rescan, store_checked=checked),
        )

    def _ingest_step(self, ready: Sequence[Selectable]) -> None:
        child = self.ingest_child
        if child is None:
            return
        rc = child.step(ready)
        if rc is None:
            return
        self.ingest_child = None
        if rc == 0 and self.checking is not None:
            self.checked_db = self.checking
        self._after(rc, child.lines("khod: "), time.monotonic() - child.started)
        if self.ingest_reload:
            self.ingest_reload = False
            sd.notify("READY=1")
        self._start_ingest()

    def _after(self, rc: int, lines: list[str], seconds: float) -> bool:
        for line in lines:
            self.log(line)
        if rc != 0:
            self._store_error()
            wait = max(1, self.s.cfg.retry_interval)
            self.retry_at = time.monotonic() + wait
            self.log(f"ingest failed; retrying in {wait}s")
            sd.notify(f"STATUS=ingest failed; retrying in {wait}s")
            return False
        self.retry_at = None
        self.recorded = True
        self._load_snapshot()
        self.write_textfile()
        sd.notify(f"STATUS=boot recorded ({seconds:.2f}s); serving metrics")
        return True

    def _load_snapshot(self) -> None:
        """Serve the snapshot an ingest wrote; one this khod cannot read (another
        version: khod upgraded under a running daemon; cut short; garbage) is one line
        and a journal entry, and what was served goes on being served."""
        refused = self.collector.load(self.s.snapshot)
        if refused is not None:
            self.log(f"error: {refused}; serving {self.collector.serving()}")
            sd.journal_event(refused.event)

    def _store_error(self) -> None:
        self._save_counters(self.collector.store_error())

    def _save_counters(self, n: int) -> None:
        if self.boot_id is None:  # no boot to tie the count to: it lives in memory only
            return
        from khod.daemon.counters import save_store_errors  # noqa: PLC0415

        try:
            save_store_errors(self.s.counters, self.boot_id, n)
            self.counters_saved = True
        except OSError as e:  # a full disk: counted in memory, written at the next error
            if self.counters_saved:
                self.log(f"warning: cannot write {self.s.counters}: {e.strerror}")
            self.counters_saved = False

    def write_textfile(self) -> None:
        if not self.s.cfg.textfile:
            return
        from khod.metrics import write_textfile  # noqa: PLC0415

        try:
            write_textfile(self.s.cfg.textfile, self.registry)
        except OSError as e:
            self.log(f"warning: cannot write {self.s.cfg.textfile}: {e.strerror}")

    def run(self, first: FirstIngest) -> int:
        """``first`` is the forked first ingest (khod.daemon.first_ingest), already sent its job;
        it runs while this process imports prometheus-client and binds /metrics."""
        t0 = time.monotonic()
        wake = self._signals()
        from khod.daemon.counters import load_store_errors  # noqa: PLC0415
        from khod.daemon.http import metrics_server  # noqa: PLC0415
        from khod.metrics import SnapshotCollector, make_registry  # noqa: PLC0415
        from khod.sources.capture import read_boot_id  # noqa: PLC0415

        self.boot_id = read_boot_id(self.s.paths)
        store_errors = 0
        if self.boot_id is not None:
            store_errors, warning = load_store_errors(self.s.counters, self.boot_id)
            if warning is not None:
                self.log(f"warning: {warning}")
        self.collector = SnapshotCollector(store_errors)
        self.registry = make_registry(self.collector)
        host, port = self.s.cfg.listen
        try:
            httpd, cache = metrics_server(host, port, self.collector)
        except OSError as e:
            first.kill()
            raise KhodError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.collector.on_change = cache.invalidate
        self._load_snapshot()  # the last known state, until the child is done
        try:
            httpd.start()
        except RuntimeError as e:  # not one thread to be had
            first.kill()
            raise KhodError(f"cannot start the metrics server: {e}") from None
        if first.wait_ready():  # committed and snapshot written (and the store checked)
            self.checked_db = self.s.db
            self._after(0, [], time.monotonic() - t0)
            sd.notify("READY=1")
            first.wait()
        else:
            rc = first.wait() or 1
            how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
            self._after(rc, [f"first ingest failed ({how})"], time.monotonic() - t0)
            sd.notify("READY=1")
        watcher = self._watcher()
        watchdog = _watchdog_interval()
        next_dog = time.monotonic()
        ready: list[Selectable] = []
        try:
            while not self.stop:
                self._sync_step(ready)
                self._ingest_step(ready)
                now = time.monotonic()
                if watchdog and now >= next_dog:
                    sd.notify("WATCHDOG=1")
                    next_dog = now + watchdog
                deadlines = [
                    d
                    for d in (
                        next_dog if watchdog else None,
                        self.retry_at,
                        self.sync_at,
                        self.sync.deadline if self.sync else None,
                        self.ingest_child.deadline if self.ingest_child else None,
                    )
                    if d
                ]
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                fds: list[Selectable] = [wake] + ([watcher] if watcher else [])
                fds += [c.stdout for c in (self.sync, self.ingest_child) if c is not None]
                try:
                    ready, _, _ = select.select(fds, [], [], timeout)
                except InterruptedError:
                    ready = []
                if wake in ready:
                    _drain(wake)
                if self.stop:
                    break
                if self.hup:
                    self.hup = False
                    self._on_hup()
                if watcher is not None and watcher in ready and watcher.drain():
                    self.log("a kernel module loaded: rescanning pstore")
                    self.ingest(rescan=True)
                if self.retry_at is not None and time.monotonic() >= self.retry_at:
                    self.retry_at = None
                    self.ingest()
        finally:
            for child in (self.sync, self.ingest_child):
                if child is not None:
                    child.kill()
            sd.notify("STOPPING=1")
            httpd.shutdown()
            if watcher is not None:
                watcher.close()
        if not self.recorded:  # Restart=on-failure, and the operator, must see it
            self.log("stopping with this boot not recorded: exit status 1")
            return 1
        return 0

    def _sync_step(self, ready: Sequence[Selectable]) -> None:
        """Store-and-forward: a push (khod.fleet.worker) in a child, never blocking this loop (the
        fleet database may hang), at this host's slot of each interval; on failure
        retry with jittered backoff (khod.daemon.syncplan). Nothing is lost meanwhile:
        the local store is the source of truth."""
        now = time.monotonic()
        child = self.sync
        if child is not None:
            rc = child.step(ready)
            if rc is None:
                return
            self.sync = None
            lines = child.lines("khod: ")
            for line in lines:
                self.log(line)
            errors = [ln for ln in lines if ln.startswith("error:")] or lines or [""]
            self.collector.sync_result(rc == 0, fleet_worker.failure_reason(errors[-1]))
            interval = float(self.s.cfg.sync_interval)
            if rc == 0:
                self.quiet_stamp = self.sync_stamp
                self.sync_failures = 0
                self.sync_delay = None
                self.sync_at = now + syncplan.next_slot(time.time(), self._splay(), interval)
            else:
                self.quiet_stamp = None
                self.sync_failures += 1
                delay = syncplan.retry_delay(self.sync_delay, interval)
                self.sync_delay = delay
                self.log(f"sync failed ({self.sync_failures} in a row); retrying in {delay:.0f}s")
                self.sync_at = now + delay
            return
        if not self.s.cfg.sync_to:
            self.sync_at = None
            return
        if self.sync_at is None:  # configured (at start or by a reload): push soon
            interval = float(self.s.cfg.sync_interval)
            self.sync_at = now + syncplan.first_delay(self._splay(), interval)
        if now < self.sync_at:
            return
        self.sync_at = None
        stamp = syncplan.store_stamp(self.s.db)
        if stamp is not None and stamp == self.quiet_stamp:  # nothing written since
            self.collector.sync_result(True)
            interval = float(self.s.cfg.sync_interval)
            self.sync_at = now + syncplan.next_slot(time.time(), self._splay(), interval)
            return
        self.sync_stamp = stamp
        cfg = self.s.cfg
        tls = (cfg.sync_sslmode, cfg.sync_ca, cfg.sync_cert, cfg.sync_key)
        self.sync = Child(fleet_worker.argv(cfg.sync_to, self.s.db, tls), SYNC_TIMEOUT, "sync")

    def _splay(self) -> float:
        if self.splay is None:
            self.splay = syncplan.host_splay(self.s.paths.machine_id)
        return self.splay

    def _on_hup(self) -> None:
        try:
            new = self._reload()
        except KhodError as e:
            self.log(f"error: reload failed, keeping the old configuration: {e}")
            return
        old = self.s
        self.quiet_stamp = None  # another fleet database or store: push at the next slot
        self.s = reloaded(old, new, self.log)
        if new.state_dir != old.state_dir and self.collector.store_errors():
            self._save_counters(self.collector.store_errors())  # the next start reads it there
        sd.notify("RELOADING=1")
        self.log(f"configuration reloaded from {new.cfg.source}")
        self.ingest(reload=True)  # READY=1 once it has ended

    def _watcher(self) -> UeventWatcher | None:
        if not self.s.cfg.watch_modules:
            return None
        try:
            from khod.adapters.udev import PyudevWatcher  # noqa: PLC0415

            return PyudevWatcher("module", ("add",))
        except Exception as e:  # no netlink (containers), no libudev: run without it
            self.log(f"warning: not watching for late pstore backends: {e}")
            return None


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(64):
            pass
    except BlockingIOError:
        pass


def _watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1e6
