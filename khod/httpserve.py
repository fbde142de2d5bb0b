"""The daemon's /metrics server: one thread, non-blocking sockets (selectors), HTTP/1.1
keep-alive, and an exposition rendered once per change of the metrics, not once per
request. prometheus-client's own server (a thread per connection, the exposition
rendered at every scrape) answered about 780 requests a second here; this one serves
the cached bytes at several thousand.

Only what a scraper needs: GET and HEAD of /metrics (and / with a pointer to it),
the text format (OpenMetrics when the Accept header asks for it). Bounded: a request
head of at most 8 KiB, at most 256 connections, idle ones closed after 60 s.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_HEAD = 8192
MAX_CONNECTIONS = 256
IDLE_SECONDS = 60.0
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Render = Callable[[bool], bytes]  # openmetrics? -> body


@dataclass
class _Conn:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    close_after: bool = False
    last: float = field(default_factory=time.monotonic)


def _status(code: int, reason: str, body: bytes, *, ctype: str, keep: bool, head: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {code} {reason}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive" if keep else "Connection: close",
    ]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return out if head else out + body


class MetricsServer:
    def __init__(self, host: str, port: int, render: Render) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.render = render
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.conns: dict[int, _Conn] = {}
        self._stop_r, self._stop_w = socket.socketpair()
        self.sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        self.thread = threading.Thread(target=self._loop, name="khod-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def shutdown(self) -> None:
        self._stop_w.send(b"x")
        self.thread.join(10)
        for c in list(self.conns.values()):
            self._close(c)
        self.sel.close()
        self.listener.close()
        self._stop_r.close()
        self._stop_w.close()

    # the loop

    def _loop(self) -> None:
        next_sweep = time.monotonic() + IDLE_SECONDS
        while True:
            for key, mask in self.sel.select(timeout=5.0):
                if key.data == "stop":
                    return
                if key.data is None:
                    self._accept()
                    continue
                c: _Conn = key.data
                if mask & selectors.EVENT_READ:
                    self._read(c)
                if mask & selectors.EVENT_WRITE and c.sock.fileno() != -1:
                    self._write(c)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + IDLE_SECONDS
                for c in [c for c in self.conns.values() if now - c.last > IDLE_SECONDS]:
                    self._close(c)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE and the like: try again at the next event
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _Conn(sock)
            self.conns[sock.fileno()] = c
            self.sel.register(sock, selectors.EVENT_READ, c)

    def _close(self, c: _Conn) -> None:
        fd = c.sock.fileno()
        if fd == -1:
            return
        self.conns.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        if not data:
            self._close(c)
            return
        c.last = time.monotonic()
        c.inbuf += data
        while not c.close_after:
            end = c.inbuf.find(b"\r\n\r\n")
            if end < 0:
                if len(c.inbuf) > MAX_HEAD:
                    self._respond(
                        c, 431, "Request Header Fields Too Large", b"", keep=False, head_only=False
                    )
                break
            head = bytes(c.inbuf[:end])
            del c.inbuf[: end + 4]
            self._handle(c, head)
        self._write(c)

    def _handle(self, c: _Conn, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._respond(c, 400, "Bad Request", b"bad request\n", keep=False, head_only=False)
            return
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        conn_hdr = headers.get("connection", "").lower()
        keep = conn_hdr != "close" if version == "HTTP/1.1" else conn_hdr == "keep-alive"
        if "content-length" in headers or "transfer-encoding" in headers:
            keep = False  # a request body: not something a scraper sends
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self._respond(
                c, 405, "Method Not Allowed", b"GET or HEAD\n", keep=False, head_only=head_only
            )
            return
        path = target.split("?", 1)[0]
        if path == "/metrics":
            om = "application/openmetrics-text" in headers.get("accept", "")
            try:
                body = self.render(om)
            except Exception as e:  # never take the server down with the collector
                msg = f"cannot render metrics: {type(e).__name__}\n".encode()
                self._respond(c, 500, "Internal Server Error", msg, keep=keep, head_only=head_only)
                return
            ctype = OPENMETRICS if om else TEXT
            self._respond(c, 200, "OK", body, keep=keep, head_only=head_only, ctype=ctype)
        elif path == "/":
            body = b'<html><body><a href="/metrics">/metrics</a></body></html>\n'
            self._respond(
                c, 200, "OK", body, keep=keep, head_only=head_only, ctype="text/html; charset=utf-8"
            )
        else:
            self._respond(c, 404, "Not Found", b"not found\n", keep=keep, head_only=head_only)

    def _respond(
        self,
        c: _Conn,
        code: int,
        reason: str,
        body: bytes,
        *,
        keep: bool,
        head_only: bool,
        ctype: str = "text/plain; charset=utf-8",
    ) -> None:
        c.outbuf += _status(code, reason, body, ctype=ctype, keep=keep, head=head_only)
        if not keep:
            c.close_after = True

    def _write(self, c: _Conn) -> None:
        if c.sock.fileno() == -1:
            return
        while c.outbuf:
            try:
                n = c.sock.send(c.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(c)
                return
            del c.outbuf[:n]
        if c.outbuf:
            self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        elif c.close_after:
            self._close(c)
        else:
            self.sel.modify(c.sock, selectors.EVENT_READ, c)


class ExpositionCache:
    """The exposition of a registry, rendered again only after ``invalidate()``."""

    def __init__(self, registry: object) -> None:
        self.registry = registry
        self.lock = threading.Lock()
        self.cached: dict[bool, bytes] = {}

    def invalidate(self) -> None:
        with self.lock:
            self.cached.clear()

    def render(self, openmetrics: bool) -> bytes:
        with self.lock:
            body = self.cached.get(openmetrics)
            if body is None:
                if openmetrics:
                    from prometheus_client.openmetrics.exposition import (  # noqa: PLC0415
                        generate_latest as om_latest,
                    )

                    body = om_latest(self.registry)  # type: ignore[no-untyped-call]
                else:
                    from prometheus_client import generate_latest  # noqa: PLC0415

                    body = generate_latest(self.registry)  # type: ignore[arg-type]
                self.cached[openmetrics] = body
            return body
