"""Hostile local clients against the running daemon's /metrics, all at once: a client
pipelining GETs without reading the replies, 300 idle connections, a slowloris
trickling header bytes, 8 MiB headers. Meanwhile a well-behaved scraper scrapes every
0.25 s. Every scrape is answered in full within 2 s, khod's RSS grows by at most
16 MiB, and khod keeps running."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests import daemon_helpers
from tests.conftest import SysrootFactory

ATTACK_SECONDS = 8.0
RSS_BOUND_KIB = 16 * 1024
ABORT_KIB = 256 * 1024  # stop the attack early rather than let khod take the machine
SCRAPE_DEADLINE = 2.0
PIPELINED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 256


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None


def pipeliner(port: int, stop: threading.Event) -> None:
    """Many GETs per connection, never a read; up to 32 such connections held open."""
    held: list[socket.socket] = []
    while not stop.is_set():
        s = connect(port)
        if s is None:
            continue
        s.setblocking(False)
        for _ in range(64):  # until the kernel buffers are full or khod hangs up
            try:
                s.send(PIPELINED)
            except (BlockingIOError, OSError):
                break
        held.append(s)
        if len(held) > 32:
            held.pop(0).close()
    for s in held:
        s.close()


def idle(port: int, stop: threading.Event) -> None:
    """300 connections that never send a byte; each one khod hangs up on is opened again."""
    held = [s for s in (connect(port) for _ in range(300)) if s is not None]
    while not stop.is_set():
        gone, _, _ = select.select(held, [], [], 0.1)
        for s in gone:
            held.remove(s)
            s.close()
            if not stop.is_set() and (new := connect(port)) is not None:
                held.append(new)
    for s in held:
        s.close()


def slowloris(port: int, stop: threading.Event) -> None:
    """20 connections, each a request head that never ends, one byte every 0.1 s."""
    held = [s for s in (connect(port) for _ in range(20)) if s is not None]
    for s in held:
        with contextlib.suppress(OSError):
            s.send(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
    while not stop.wait(0.1):
        for i, s in enumerate(held):
            try:
                s.send(b"a")
            except OSError:  # dropped: open another one
                s.close()
                new = None if stop.is_set() else connect(port)
                if new is not None:
                    with contextlib.suppress(OSError):
                        new.send(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
                    held[i] = new
    for s in held:
        s.close()


def big_header(port: int, stop: threading.Event) -> None:
    """A request with one 8 MiB header, again and again."""
    chunk = b"a" * 65536
    while not stop.is_set():
        s = connect(port)
        if s is None:
            continue
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: ")
            for _ in range(128):
                if stop.is_set():
                    break
                s.sendall(chunk)
            s.sendall(b"\r\n\r\n")
        except OSError:
            pass
        finally:
            s.close()


def scrape(port: int) -> str | None:
    """None when answered in full within the deadline, else what went wrong."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_DEADLINE + 3)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read()
    except (OSError, http.client.HTTPException) as e:
        return f"{type(e).__name__}: {e} after {time.monotonic() - t0:.2f} s"
    finally:
        c.close()
    took = time.monotonic() - t0
    if r.status != 200 or b"khod_kexecs_since_cold_boot 1.0" not in body:
        return f"HTTP {r.status}, {len(body)} bytes"
    if took > SCRAPE_DEADLINE:
        return f"answered after {took:.2f} s"
    return None


def test_hostile_clients_do_not_swallow_khod(sysroot: SysrootFactory, tmp_path: Path) -> None:
    with daemon_helpers.running_daemon(sysroot("kexec1/step1"), tmp_path) as d:
        d.wait_for("READY=1")
        pid = d.proc.pid
        for _ in range(20):  # warm up
            assert scrape(d.port) is None
        time.sleep(0.5)
        before = rss_kib(pid)
        stop = threading.Event()
        attackers: list[Callable[[int, threading.Event], None]] = [
            pipeliner,
            idle,
            slowloris,
            big_header,
        ]
        threads = [threading.Thread(target=f, args=(d.port, stop), daemon=True) for f in attackers]
        for t in threads:
            t.start()
        peak = before
        missed: list[str] = []
        scrapes = 0
        t0 = time.monotonic()
        next_scrape = t0 + 0.5  # the attackers are under way
        while time.monotonic() - t0 < ATTACK_SECONDS and d.proc.poll() is None:
            peak = max(peak, rss_kib(pid))
            if peak - before > ABORT_KIB:
                break
            if time.monotonic() >= next_scrape:
                scrapes += 1
                if (err := scrape(d.port)) is not None:
                    missed.append(err)
                next_scrape = time.monotonic() + 0.25
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(30)
        alive = d.proc.poll() is None
        if alive:
            peak = max(peak, rss_kib(pid))
        print(
            f"\nhostile: {scrapes} scrapes, {len(missed)} missed; khod RSS {before} KiB, "
            f"peak {peak} KiB ({peak - before:+d} KiB); running: {alive}"
        )
        assert alive, f"khod exited with {d.proc.returncode}"
        assert missed == [], f"{len(missed)} of {scrapes} scrapes missed: {missed[:3]}"
        assert peak - before <= RSS_BOUND_KIB, f"RSS grew by {peak - before} KiB"
        assert scrape(d.port) is None  # and it still serves once they are gone
        d.proc.terminate()
        out, _ = d.proc.communicate(timeout=30)
        assert "Traceback" not in out, out[-2000:]
