"""The /metrics server's HTTP, on a real socket: GET and HEAD, the OpenMetrics variant,
the cache, the answers to what a scraper would not send, and a full house of idle
connections making room for a scrape."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator

import pytest

from khod.contracts import MetricsSnapshot, SnapshotBoot
from khod.daemon import http as httpserve
from khod.daemon.http import MAX_CONNECTIONS, MAX_HEAD, MetricsServer, metrics_server
from khod.metrics import SnapshotCollector

Server = tuple[MetricsServer, SnapshotCollector, int]


@pytest.fixture
def server() -> Iterator[Server]:
    collector = SnapshotCollector()
    collector.set(MetricsSnapshot(boot=SnapshotBoot(kexec_count=2, release="r", kind="kexec")))
    srv, cache = metrics_server("127.0.0.1", 0, collector)
    collector.on_change = cache.invalidate
    srv.start()
    yield srv, collector, srv.server_address[1]
    srv.shutdown()


def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``, read the answer until the server hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused early
            s.sendall(raw)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def status(out: bytes) -> bytes:
    return out.split(b"\r\n", 1)[0].split(b" ", 1)[1]


def test_get_and_head(server: Server) -> None:
    _, _, port = server
    got = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head = exchange(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(got) == status(head) == b"200 OK"
    body = got.split(b"\r\n\r\n", 1)[1]
    assert b"khod_kexecs_since_cold_boot 2.0" in body
    assert head.endswith(b"\r\n\r\n")  # no body
    assert f"Content-Length: {len(body)}\r\n".encode() in head
    assert b"Content-Type: text/plain; version=0.0.4" in head


def test_the_cache_follows_the_collector(server: Server) -> None:
    _, collector, port = server
    req = b"GET /metrics HTTP/1.0\r\n\r\n"
    assert b"khod_kexecs_since_cold_boot 2.0" in exchange(port, req)
    assert b"khod_kexecs_since_cold_boot 2.0" in exchange(port, req)
    collector.set(MetricsSnapshot(boot=SnapshotBoot(kexec_count=5)))
    assert b"khod_kexecs_since_cold_boot 5.0" in exchange(port, req)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", b"200 OK"),
        (b"HEAD / HTTP/1.0\r\n\r\n", b"200 OK"),
        (b"HEAD /nope HTTP/1.0\r\n\r\n", b"404 Not Found"),
        (b"GET /nope HTTP/1.0\r\n\r\n", b"404 Not Found"),
        (b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n", b"405 Method Not Allowed"),
        (b"garbage\r\n\r\n", b"Error code: 400"),  # an HTTP/0.9 answer: no status line
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10), b"431 Line too long"),
        (b"GET /metrics HTTP/1.1\r\n" + (b"X: " + b"a" * 100 + b"\r\n") * 90, b"431 Line too long"),
        (b"GET /" + b"a" * (MAX_HEAD + 10) + b" HTTP/1.1\r\n\r\n", b"414 Request-URI Too Long"),
    ],
)
def test_answers(server: Server, raw: bytes, code: bytes) -> None:
    _, _, port = server
    out = exchange(port, raw)
    assert (status(out) == code) if out.startswith(b"HTTP/") else (code in out), out[:80]
    if raw.startswith(b"HEAD"):
        assert out.endswith(b"\r\n\r\n")  # no body


def test_a_snapshot_that_cannot_be_rendered_is_a_one_line_500(server: Server) -> None:
    _, collector, port = server
    # a snapshot as a bug could make it (a file like it is refused when read)
    collector.set(MetricsSnapshot(boot=SnapshotBoot(kexec_count="two")))  # type: ignore[arg-type]
    out = exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert status(out) == b"500 Internal Server Error"
    body = out.split(b"\r\n\r\n", 1)[1]
    # the type only: what went wrong inside is for khod's log, not for any local client
    assert body == b"cannot render metrics: ValueError\n"
    collector.set(MetricsSnapshot(boot=SnapshotBoot(kexec_count=3)))
    assert b"khod_kexecs_since_cold_boot 3.0" in exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")


def test_openmetrics_when_asked(server: Server) -> None:
    _, _, port = server
    out = exchange(port, b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text\r\n\r\n")
    assert b"application/openmetrics-text" in out and out.rstrip().endswith(b"# EOF")


def test_idle_connections_make_room_for_a_scrape(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, port = server
    monkeypatch.setattr(httpserve, "HEAD_SECONDS", 600.0)  # dropped for room, not for time
    idle = [
        socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_CONNECTIONS)
    ]
    try:
        out = exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert status(out) == b"200 OK"
        assert idle[0].recv(1) == b""  # the oldest one was dropped for it
    finally:
        for s in idle:
            s.close()


def test_a_head_trickled_past_its_deadline_is_dropped(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte in time for a per-recv timeout; the whole head is not."""
    _, _, port = server
    monkeypatch.setattr(httpserve, "HEAD_SECONDS", 1.0)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        end = time.monotonic() + 10
        dropped = False
        while not dropped and time.monotonic() < end:
            try:
                s.sendall(b"a")
                if select.select([s], [], [], 0.2)[0]:
                    dropped = s.recv(1) == b""
            except ConnectionResetError:
                dropped = True
        assert dropped, "a slowloris kept its connection for 10 s"


def test_only_the_handler_threads_get_the_small_stack(server: Server) -> None:
    """The handlers' small stack is theirs: a thread started elsewhere in the process
    (the PostgreSQL import's pool, anything later) at any moment, scrapes under way
    included, gets the default stack."""
    import threading

    _, _, port = server
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.add(threading.stack_size())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(200):
            assert status(exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")) == b"200 OK"
    finally:
        done.set()
        watcher.join()
    assert seen == {0}


def test_a_flood_behind_a_scrape_does_not_push_it_out() -> None:
    """Every slot taken, the oldest a scrape whose request waits in its socket for a
    busy host's handler to read it, the others connections that sent nothing; a
    flood of new ones pushes out those, not the scrape (before, the scrape: the oldest
    without a head read; on a loaded host 1 of 28 scrapes was lost that way)."""
    server = MetricsServer("127.0.0.1", 0, lambda _e, _s: [b""])  # no handler started
    pairs = [socket.socketpair() for _ in range(MAX_CONNECTIONS + 8)]
    try:
        scrape, scraper = pairs[0]
        scraper.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        for ours, _ in pairs[:MAX_CONNECTIONS]:
            server.process_request(ours, ("127.0.0.1", 0))
        for ours, _ in pairs[MAX_CONNECTIONS:]:  # the flood
            server.process_request(ours, ("127.0.0.1", 0))
        assert scrape in server.conns
        assert len(server.conns) == MAX_CONNECTIONS
    finally:
        server.server_close()
        for a, b in pairs:
            a.close()
            b.close()
