"""The daemon's /metrics server: prometheus-client's own WSGI app (``make_wsgi_app``:
the text format, OpenMetrics when the Accept header asks for it, gzip) served by its
``ThreadingWSGIServer`` with a fixed pool of threads, over a collector whose families
are kept until the snapshot changes. One request per connection (HTTP/1.0 answers),
each answered by one of ``MAX_CONNECTIONS`` handler threads started with the server.

Around the library, what keeps hostile local clients from taking the machine:
at most ``MAX_CONNECTIONS`` connections, and when they are all taken the oldest one
that has not sent a whole request head yet is dropped to make room for the new one
(one that sent nothing first: a scrape's request waiting to be read is kept);
a whole request head within ``HEAD_SECONDS`` (not per recv: a slowloris is dropped)
and of at most ``MAX_HEAD`` bytes (else 414 or 431); an answer sent within
``IO_SECONDS``; handler threads with a small stack (``THREAD_STACK``), all started
by ``start()`` so that the process-wide ``threading.stack_size`` is changed only
there, never while some other thread of the process may be starting one.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import queue
import socket
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable
from io import BufferedIOBase
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MAX_HEAD = 8192  # request line and headers, together
MAX_CONNECTIONS = 64
HEAD_SECONDS = 5.0
IO_SECONDS = 10.0
THREAD_STACK = 256 * 1024

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]


class CachedCollector(Collector):
    """``inner``'s families, built again only after ``invalidate()``."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.families: list[Metric] | None = None

    def invalidate(self) -> None:
        with self.lock:
            self.families = None

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            if self.families is None:
                self.families = list(self.inner.collect())
            return self.families


def make_app(registry: CollectorRegistry) -> App:
    """The library's app at /metrics, a pointer to it at /, else 404; HEAD as GET
    without the body."""
    metrics: App = make_wsgi_app(registry)

    def route(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                return list(metrics(environ, start_response))
            except Exception as e:  # never a traceback from the collector
                msg = f"cannot render metrics: {type(e).__name__}\n".encode()
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
                return [msg]
        if path == "/" and environ["REQUEST_METHOD"] == "GET":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [b'<html><body><a href="/metrics">/metrics</a></body></html>\n']
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found\n"]

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "HEAD":
            return route(environ, start_response)
        got: list[Any] = []

        def keep(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            got.extend((status, headers))

        body = b"".join(route({**environ, "REQUEST_METHOD": "GET"}, keep))
        start_response(got[0], [*got[1], ("Content-Length", str(len(body)))])
        return []

    return app


class _BoundedHead(BufferedIOBase):
    """The request stream, refusing a head longer than ``MAX_HEAD`` in all."""

    def __init__(self, raw: BufferedIOBase) -> None:
        self.raw = raw
        self.left = MAX_HEAD

    def readline(self, size: int | None = -1) -> bytes:
        n = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        line = self.raw.readline(n)
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong("request head")
        return line

    def read(self, size: int | None = -1) -> bytes:
        return self.raw.read(size)


class _Handler(WSGIRequestHandler):
    timeout = IO_SECONDS  # each recv and the whole answer's sendall
    server: MetricsServer

    def log_message(self, format: str, *args: Any) -> None:
        """Log no request (the public WSGIRequestHandler's hook)."""

    def handle(self) -> None:
        self.rfile = _BoundedHead(self.rfile)
        try:
            super().handle()
        except http.client.LineTooLong:  # the request line alone (headers: 431 already)
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.head_done(self.request)
        return ok


def _sent_something(socks: list[socket.socket]) -> set[socket.socket]:
    """Those of ``socks`` whose client sent bytes not read yet (FIONREAD: never waits,
    whatever a handler thread is doing with the socket)."""
    out = set()
    for s in socks:
        with contextlib.suppress(OSError):
            waiting = fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0")
            if int.from_bytes(waiting, sys.byteorder):
                out.add(s)
    return out


class MetricsServer(ThreadingWSGIServer):
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, app: App) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lock = threading.RLock()
        # accepted, oldest first -> whether its request head is complete
        self.conns: dict[socket.socket, tuple[float, bool]] = {}
        super().__init__((host, port), _Handler)
        self.set_app(app)
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.25}, name="khod-metrics"
        )
        self.thread.daemon = True
        self.pending: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self.handlers: list[threading.Thread] = []

    def start(self) -> MetricsServer:
        """The handler threads, then the accepting one. Call it while no other thread
        of the process starts threads: their stack size is set for the process."""
        default = threading.stack_size(THREAD_STACK)
        try:
            for i in range(MAX_CONNECTIONS):
                t = threading.Thread(target=self._handle_pending, name=f"khod-metrics-{i}")
                t.daemon = True
                try:
                    t.start()
                except RuntimeError:  # no more threads to be had: serve with those
                    if not self.handlers:
                        raise
                    break
                self.handlers.append(t)
        finally:
            threading.stack_size(default)
        self.thread.start()
        return self

    def shutdown(self) -> None:
        super().shutdown()
        self.server_close()
        with self.lock:
            for s in list(self.conns):
                self._drop(s)
        for _ in self.handlers:
            self.pending.put(None)

    def _handle_pending(self) -> None:
        while (job := self.pending.get()) is not None:
            request, client_address = job
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def _drop(self, s: socket.socket) -> None:
        """Hang up on ``s`` (its thread sees EOF and ends); lock held."""
        self.conns.pop(s, None)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)

    def head_done(self, s: socket.socket) -> None:
        with self.lock:
            if s in self.conns:
                self.conns[s] = (self.conns[s][0], True)

    def process_request(self, request: Any, client_address: Any) -> None:
        sock = cast(socket.socket, request)
        with self.lock:
            if len(self.conns) >= MAX_CONNECTIONS:
                waiting = [s for s, (_, done) in self.conns.items() if not done]
                # one that sent nothing first: a scrape's request may wait in the socket
                # for a busy host to read it, and a flood behind it must not push it out
                sent = _sent_something(waiting)
                victim = next((s for s in waiting if s not in sent), None)
                victim = victim if victim is not None else next(iter(waiting), None)
                if victim is None:  # all of them being answered: they will be gone soon
                    self.shutdown_request(sock)
                    return
                self._drop(victim)
            self.conns[sock] = (time.monotonic(), False)
        # admitted connections are at most as many as the handlers: none waits long
        self.pending.put((request, client_address))

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.conns.pop(request, None)
        super().shutdown_request(request)

    def service_actions(self) -> None:
        """Between accepts (at least every poll_interval): drop heads past their time."""
        now = time.monotonic()
        with self.lock:
            late = [s for s, (t, done) in self.conns.items() if not done and now - t > HEAD_SECONDS]
            for s in late:
                self._drop(s)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer: nothing to report."""


def metrics_server(
    host: str, port: int, collector: Collector
) -> tuple[MetricsServer, CachedCollector]:
    """Bound, not started yet; call ``invalidate()`` on the returned cache when what
    ``collector`` reads changes."""
    cache = CachedCollector(collector)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(cache)
    return MetricsServer(host, port, make_app(registry)), cache
