"""Load: /metrics at 100 requests a second for 60 seconds (open loop), on a running
daemon: no error, every request answered; prints p50, p99 and the daemon's RSS growth
(latency is compared with node_exporter's in bench/run.py)."""

from __future__ import annotations

import http.client
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import daemon_helpers
from tests.conftest import SysrootFactory

pytestmark = pytest.mark.slow

RATE = int(os.environ.get("KHOD_LOAD_RATE", "100"))
SECONDS = float(os.environ.get("KHOD_LOAD_SECONDS", "60"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Client(threading.local):
    conn: http.client.HTTPConnection | None = None


def test_metrics_at_100_requests_a_second(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with daemon_helpers.running_daemon(sysroot("kexec1/step1"), tmp_path) as d:
        d.wait_for("READY=1")
        port = d.port
        local = Client()
        lock = threading.Lock()
        latencies: list[float] = []
        errors: list[str] = []
        opened: list[http.client.HTTPConnection] = []

        def one(due: float) -> None:
            try:
                if local.conn is None:
                    local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    with lock:
                        opened.append(local.conn)
                local.conn.request("GET", "/metrics")
                r = local.conn.getresponse()
                body = r.read()
                if r.status != 200 or b"khod_kexecs_since_cold_boot 1.0" not in body:
                    raise OSError(f"HTTP {r.status}, {len(body)} bytes")
                if r.will_close:
                    local.conn.close()
                    local.conn = None
                with lock:
                    latencies.append(time.perf_counter() - due)
            except (OSError, http.client.HTTPException) as e:
                if local.conn is not None:
                    local.conn.close()
                    local.conn = None
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

        for _ in range(200):  # warm up: threads, pages, the first scrapes
            one(time.perf_counter())
        latencies.clear()
        time.sleep(1)
        before = rss_kib(d.proc.pid)
        n = int(RATE * SECONDS)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:  # open loop: request i is due at t0 + i/RATE
            for i in range(n):
                due = t0 + i / RATE
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one, due)
        elapsed = time.perf_counter() - t0
        for c in opened:
            c.close()
        time.sleep(1)
        after = rss_kib(d.proc.pid)
        lat = sorted(latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        with capsys.disabled():
            print(
                f"\nload: {n} requests at {RATE}/s took {elapsed:.1f} s "
                f"({n / elapsed:.0f}/s); {len(errors)} errors; p50 {p50:.1f} ms, "
                f"p99 {p99:.1f} ms; khod RSS {before} -> {after} KiB ({after - before:+d})"
            )
        assert errors == [], errors[:5]
        assert len(latencies) == n
        assert after - before <= 16 * 1024  # the bound under hostile clients, a fortiori here
