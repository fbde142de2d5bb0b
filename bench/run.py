"""Benchmarks, each printed as a ratio against a baseline measured in the same run.

    python bench/run.py [once capture ready rss latency] [--runs N] [--seconds S] [--rate R]

once     khod --once on a migrated DB vs the bare interpreter (python -c pass). <= 15x
capture  process start -> this boot's state durable on disk (khod --capture-only) vs the
         bare interpreter. <= 1.5x
ready    daemon start -> READY=1 (sd_notify) on a migrated DB vs the bare interpreter. <= 15x
rss      idle RSS of the resident daemon vs prometheus-node-exporter. <= 1.25x
latency  /metrics at a fixed rate (default 100 req/s: several Prometheus replicas at 1 s)
         for S seconds, then node_exporter's /metrics at the same rate in the same run:
         p99 of both, khod's vs node_exporter's (<= 1x), and khod's RSS growth
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/data/fixtures/pstore-kho/step2"
PY = sys.executable
KHOD = str(Path(PY).parent / "khod")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"


def run_once(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def interleaved(
    base: list[str], cmd: list[str], runs: int, before: Callable[[], None] | None = None
) -> tuple[float, float]:
    b, c = [], []
    for _ in range(runs):  # interleaved, so drift hits both alike
        b.append(run_once(base))
        if before:
            before()
        c.append(run_once(cmd))
    return statistics.median(b), statistics.median(c)


def report(name: str, what: str, value: float, base: float, *, unit: str, target: str) -> None:
    scale = 1000 if unit == "ms" else 1
    print(
        f"{name}: {what} {value * scale:.1f} {unit}, baseline {base * scale:.1f} {unit}, "
        f"ratio {value / base:.2f}x (target {target})",
        flush=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Daemon:
    """khod on a fixture, migrated DB, real NOTIFY_SOCKET; measures start -> READY=1."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = f"sqlite:///{tmp / 'khod.db'}"
        self.port = free_port()
        subprocess.run(
            [
                KHOD,
                "--once",
                "--sysroot",
                str(FIXTURE),
                "--db",
                self.db,
                "--state-dir",
                str(tmp / "state"),
            ],
            check=True,
            capture_output=True,
        )

    def start(self, watch_modules: bool = False) -> float:
        sock_path = self.tmp / f"notify-{time.monotonic_ns()}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(sock_path))
        self.notify.settimeout(60)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                KHOD,
                "--sysroot",
                str(FIXTURE),
                "--db",
                self.db,
                "--state-dir",
                str(self.tmp / "state"),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--no-watch-modules",
            ],
            env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while b"READY=1" not in self.notify.recv(4096):
            pass
        return time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.notify.close()


def node_exporter(port: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            get(port)
            return p
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("node_exporter did not start")


def get(port: int) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        n = len(r.read())
        if r.status != 200:
            raise OSError(f"HTTP {r.status}")
        return n
    finally:
        c.close()


def fixed_rate(port: int, rate: float, seconds: float) -> tuple[list[float], int, float]:
    """Open loop: request i is due at t0 + i/rate, sent from a pool of 16 threads (a slow
    answer does not hold back the next one); latency counts from when it was due.
    Returns the latencies, the errors and how long until the last answer came."""
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(due: float) -> None:
        nonlocal errors
        try:
            get(port)
        except OSError:
            with lock:
                errors += 1
        with lock:
            lat.append(time.perf_counter() - due)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        for i in range(int(rate * seconds)):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, due)
    return lat, errors, time.perf_counter() - t0


def p99(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.99) - 1)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="*", default=["once", "capture", "ready", "rss", "latency"])
    ap.add_argument("--runs", type=int, default=int(os.environ.get("KHOD_BENCH_RUNS", "15")))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=100.0)
    a = ap.parse_args()
    # as installed from a package: khod's own modules compiled once (an editable install
    # under PYTHONDONTWRITEBYTECODE=1 would recompile them at every start)
    subprocess.run(
        [PY, "-m", "compileall", "-q", str(ROOT / "khod"), str(ROOT / "migrations")], check=True
    )
    bare = [PY, "-c", "pass"]
    tmp = Path(tempfile.mkdtemp(prefix="khod-bench-"))
    try:
        if "once" in a.which:
            db = f"sqlite:///{tmp / 'once.db'}"
            cmd = [
                KHOD,
                "--once",
                "--sysroot",
                str(FIXTURE),
                "--db",
                db,
                "--state-dir",
                str(tmp / "once-state"),
            ]
            run_once(cmd)  # create + migrate
            b, c = interleaved(bare, cmd, a.runs)
            report("once", "khod --once on a migrated DB", c, b, unit="ms", target="<= 15x")
        if "capture" in a.which:
            spool = tmp / "cap"
            cmd = [KHOD, "--capture-only", "--sysroot", str(FIXTURE), "--state-dir", str(spool)]
            b, c = interleaved(
                bare, cmd, a.runs, before=lambda: shutil.rmtree(spool, ignore_errors=True)
            )
            report("capture", "start -> boot state fsync'd", c, b, unit="ms", target="<= 1.5x")
        if "ready" in a.which or "rss" in a.which or "latency" in a.which:
            d = Daemon(tmp / "daemon")
        if "ready" in a.which:
            bs, rs = [], []
            for _ in range(max(3, a.runs // 2)):
                bs.append(run_once(bare))
                rs.append(d.start())
                d.stop()
            report(
                "ready",
                "daemon start -> READY=1",
                statistics.median(rs),
                statistics.median(bs),
                unit="ms",
                target="<= 15x",
            )
        if "rss" in a.which or "latency" in a.which:
            d.start()
            ne_port = free_port()
            ne = node_exporter(ne_port)
            try:
                get(d.port)
                get(ne_port)
                time.sleep(2)
                if "rss" in a.which:
                    k, n = rss_kib(d.proc.pid), rss_kib(ne.pid)
                    print(
                        f"rss: khod idle {k / 1024:.1f} MiB (no module watcher), node_exporter "
                        f"{n / 1024:.1f} MiB, ratio {k / n:.2f}x (target <= 1.25x)",
                        flush=True,
                    )
                    d.stop()
                    d.start(watch_modules=True)
                    get(d.port)
                    time.sleep(2)
                    k = rss_kib(d.proc.pid)
                    print(
                        f"rss: khod idle {k / 1024:.1f} MiB (default, pyudev watching module "
                        f"uevents), ratio {k / n:.2f}x (target <= 1.25x)",
                        flush=True,
                    )
                if "latency" in a.which:
                    before = rss_kib(d.proc.pid)
                    kl, ke, kt = fixed_rate(d.port, a.rate, a.seconds)
                    after = rss_kib(d.proc.pid)
                    nl, nerr, nt = fixed_rate(ne_port, a.rate, a.seconds)
                    print(
                        f"latency: {a.rate:.0f} req/s for {a.seconds:.0f} s: khod p50 "
                        f"{statistics.median(kl) * 1000:.2f} ms p99 {p99(kl) * 1000:.2f} ms "
                        f"({ke} errors, last answer at {kt:.1f} s); node_exporter p50 "
                        f"{statistics.median(nl) * 1000:.2f} ms p99 {p99(nl) * 1000:.2f} ms "
                        f"({nerr} errors, last answer at {nt:.1f} s); p99 ratio "
                        f"{p99(kl) / p99(nl):.3g}x (target <= 1x); khod RSS "
                        f"{before / 1024:.1f} -> {after / 1024:.1f} MiB "
                        f"({(after - before) / 1024:+.2f} MiB)",
                        flush=True,
                    )
            finally:
                ne.terminate()
                ne.wait()
                d.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
