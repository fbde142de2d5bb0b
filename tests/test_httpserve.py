"""The /metrics server's HTTP, on a real socket: keep-alive, HEAD, the OpenMetrics
variant, the cache, and the answers to what a scraper would not send."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from khod.httpserve import MAX_HEAD, ExpositionCache, MetricsServer
from khod.metrics import SnapshotCollector, make_registry


@pytest.fixture
def server() -> Iterator[tuple[MetricsServer, SnapshotCollector, int]]:
    collector = SnapshotCollector()
    collector.set({"boot": {"kexec_count": 2, "release": "r", "kind": "kexec"}})
    cache = ExpositionCache(make_registry(collector))
    collector.on_change = cache.invalidate
    srv = MetricsServer("127.0.0.1", 0, cache.render).start()
    port = srv.listener.getsockname()[1]
    yield srv, collector, port
    srv.shutdown()


def exchange(port: int, raw: bytes, reads: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if out.count(b"HTTP/1.1 ") >= reads and b"\r\n\r\n" in out:
                head, _, body = out.rpartition(b"\r\n\r\n")
                n = int(head.split(b"Content-Length: ")[-1].split(b"\r\n")[0])
                if len(body) >= n or b"HEAD" in raw:
                    break
    return out


def test_keep_alive_serves_two_requests_on_one_connection(server: tuple) -> None:  # type: ignore[type-arg]
    _, _, port = server
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    out = exchange(port, req + req, reads=2)
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.count(b"khod_kexecs_since_cold_boot 2.0") == 2


def test_the_cache_follows_the_collector(server: tuple) -> None:  # type: ignore[type-arg]
    _, collector, port = server
    req = b"GET /metrics HTTP/1.0\r\n\r\n"
    assert b"khod_kexecs_since_cold_boot 2.0" in exchange(port, req)
    collector.set({"boot": {"kexec_count": 5}})
    assert b"khod_kexecs_since_cold_boot 5.0" in exchange(port, req)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"HEAD /metrics HTTP/1.0\r\n\r\n", b"200 OK"),
        (b"GET /nope HTTP/1.0\r\n\r\n", b"404 Not Found"),
        (b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n", b"405 Method Not Allowed"),
        (b"garbage\r\n\r\n", b"400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10), b"431 Request Header"),
    ],
)
def test_answers(server: tuple, raw: bytes, status: bytes) -> None:  # type: ignore[type-arg]
    _, _, port = server
    out = exchange(port, raw)
    assert out.startswith(b"HTTP/1.1 " + status), out[:80]
    if raw.startswith(b"HEAD"):
        assert b"khod_" not in out and b"Content-Length: " in out


def test_openmetrics_when_asked(server: tuple) -> None:  # type: ignore[type-arg]
    _, _, port = server
    out = exchange(port, b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text\r\n\r\n")
    assert b"application/openmetrics-text" in out and out.rstrip().endswith(b"# EOF")
