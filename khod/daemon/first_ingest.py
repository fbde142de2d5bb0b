"""The daemon's first ingest, forked right after the boot capture.

The child imports the store (SQLAlchemy: most of an ingest's time) at once, while the
parent parses its command line; a second child collects this boot and sends the job
(``khod.contracts.IngestJob``, the observation in it, as JSON) down a pipe, while the
parent imports prometheus-client and binds /metrics. The first child
runs it and writes one byte back when the boot is committed and the snapshot written: the
parent's cue for READY=1. A parent that fails before sending closes the pipe, and the
child exits quietly (the parent reports the error, once). A child that fails says why in
one line and exits 1; the parent reports the failed ingest.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from khod.errors import KhodError

if TYPE_CHECKING:  # the early fork imports nothing it does not need
    from khod.contracts import IngestJob


class FirstIngest:
    def __init__(self, pid: int, job_w: int, ready_r: int) -> None:
        self.pid = pid
        self.job_w = job_w
        self.ready_r = ready_r
        self.collector = 0  # the pid of the process collecting the boot for it

    @classmethod
    def fork(cls) -> FirstIngest:
        job_r, job_w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(job_w)
            os.close(ready_r)
            _child(job_r, ready_w)
        os.close(job_r)
        os.close(ready_w)
        return cls(pid, job_w, ready_r)

    def send(self, job: IngestJob) -> None:
        from khod.contracts import encode  # noqa: PLC0415

        self.send_data(encode(job))

    def send_data(self, data: bytes) -> None:
        """The job as ``khod.contracts.encode`` makes it (the child reads no other)."""
        try:
            with os.fdopen(self.job_w, "wb") as f:
                f.write(data)
        except BrokenPipeError:
            raise KhodError(
                f"the first ingest (pid {self.pid}) exited before its job was sent"
            ) from None
        finally:
            self.job_w = -1

    def collect_and_send(self, job: IngestJob) -> None:
        """Collect this boot in a child of its own, which sends ``job`` with the
        observation in it. The parsers, libfdt and the boot's bytes are loaded there,
        never in the resident process: it keeps only what it serves metrics with."""
        pid = os.fork()
        if pid == 0:

            def collect() -> int:
                from dataclasses import replace  # noqa: PLC0415

                from khod.ingest.pipeline import collect_boot  # noqa: PLC0415

                self.send(replace(job, obs=collect_boot(job)))
                return 0

            _child_exits("boot collection", collect)
        os.close(self.job_w)  # the collector holds the job's end now
        self.job_w = -1
        self.collector = pid

    def _reap_collector(self) -> None:
        if self.collector:
            os.waitpid(self.collector, 0)
            self.collector = 0

    def wait_ready(self) -> bool:
        """True once the boot is committed; False when the child ended without."""
        while True:
            try:
                ok = os.read(self.ready_r, 1) == b"1"
                break
            except InterruptedError:
                continue
        os.close(self.ready_r)
        self.ready_r = -1
        self._reap_collector()
        return ok

    def wait(self) -> int:
        self._reap_collector()
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        return os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        for pid in (self.collector, self.pid):  # a collector stuck on a read goes too
            if pid:
                os.kill(pid, signal.SIGKILL)
        if self.pid:
            self.wait()

    def abandon(self) -> None:
        """The parent is exiting without having used the child."""
        if self.job_w >= 0:
            os.close(self.job_w)
            self.job_w = -1
        if self.pid:
            self.wait()


def _child_exits(what: str, body: Callable[[], int]) -> NoReturn:
    """Run ``body`` in a forked child and exit with its status, never returning into
    the parent's code: an exception is one line on stderr, and exit 1."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = body()
    except BaseException as e:  # os._exit below: nothing else would say it
        code = 1
        print(f"khod: error: {what}: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _child(job_r: int, ready_w: int) -> NoReturn:
    def ingest() -> int:
        import khod.ingest.snapshot  # noqa: PLC0415
        import khod.store.boots  # noqa: PLC0415  (load SQLAlchemy while waiting)
        import khod.store.retention  # noqa: F401, PLC0415

        with os.fdopen(job_r, "rb") as f:
            data = f.read()
        if not data:
            return 0  # the parent stopped before the daemon started; it said why
        from khod.ingest.pipeline import run_ingest  # noqa: PLC0415
        from khod.ingest.worker import read_job  # noqa: PLC0415
        from khod.oneline import run_main  # noqa: PLC0415

        def run(_argv: object) -> int:
            job = read_job(data, "from the daemon")
            return run_ingest(job, lambda: os.write(ready_w, b"1"))

        return run_main("khod", run, [])

    _child_exits("first ingest", ingest)
