"""HTTP/1.1 file server for a boot directory: GET and HEAD, single byte
ranges (206, 416), keep-alive, a thread per connection, and one log line per
response (client, request, status, bytes, seconds). File data goes from the
page cache to the socket with sendfile(2)."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import unquote_to_bytes, urlsplit

from nbic import __version__
from nbic.serve.files import Refusal, RefusedError, ServedDir, ServedFile

log = logging.getLogger("nbic")

IDLE_SECONDS = 60.0  # a keep-alive connection with no request for this long is closed

_STATUS = {
    Refusal.BAD_NAME: HTTPStatus.BAD_REQUEST,
    Refusal.OUTSIDE: HTTPStatus.FORBIDDEN,
    Refusal.NOT_FOUND: HTTPStatus.NOT_FOUND,
    Refusal.NOT_A_FILE: HTTPStatus.NOT_FOUND,
    Refusal.UNREADABLE: HTTPStatus.FORBIDDEN,
}
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")
_TEXT_SUFFIXES = (".ipxe", ".cfg")


class RangeNotSatisfiable(Exception):
    """The Range header asks for bytes the file does not have."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    @property
    def length(self) -> int:
        return self.stop - self.start


def parse_range(value: str | None, size: int) -> ByteRange | None:
    """The one byte range a Range header asks for (RFC 9110 section 14.1.2),
    or None to send the whole file: no header, a syntax we do not take, or
    several ranges (which a server may answer with the whole file)."""
    if value is None or "," in value:
        return None
    match = _RANGE.fullmatch(value)
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # a suffix: the last N bytes
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - int(last)), size)
    start = int(first)
    if last != "" and int(last) < start:
        return None  # invalid: ignored, as RFC 9110 says
    if start >= size:
        raise RangeNotSatisfiable
    stop = size if last == "" else min(size, int(last) + 1)
    return ByteRange(start, stop)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"nbic/{__version__}"
    timeout = IDLE_SECONDS
    served: ServedDir  # set on the subclass the server makes

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self._reset()

    def _reset(self) -> None:
        self._status: int | None = None
        self._sent = 0
        self._start = time.monotonic()

    def parse_request(self) -> bool:
        self._start = time.monotonic()
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except ConnectionError:  # reset or gone mid-request: normal for a client
            self.close_connection = True
        if self._status is not None:
            request = getattr(self, "requestline", "") or "-"
            log.info("http %s:%d \"%s\" %d %d bytes %.3fs", *self.client_address[:2],
                     _printable(request), self._status, self._sent,
                     time.monotonic() - self._start)
        self._reset()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # send_response calls this for every response: remember, log once sent.
        self._status = int(code)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s: %s", self.client_address[0], _printable(format % args))

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def _respond(self, *, body: bool) -> None:
        # Origin form ("/a/b?q") as sent to a server; absolute form by the URL.
        path = self.path.partition("?")[0] if self.path.startswith("/") else \
            urlsplit(self.path).path
        try:
            served = self.served.open(unquote_to_bytes(path.encode("latin-1")))
        except RefusedError as exc:
            self.send_error(_STATUS[exc.refusal], exc.refusal.value)
            return
        with open(served.fd, "rb", buffering=0) as file:
            self._send_file(file, served, path, body=body)

    def _send_file(self, file: BinaryIO, served: ServedFile, path: str, *, body: bool
                   ) -> None:
        try:
            wanted = None if "If-Range" in self.headers else self.headers.get("Range")
            byte_range = parse_range(wanted, served.size)
        except RangeNotSatisfiable:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{served.size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if byte_range is None:
            byte_range = ByteRange(0, served.size)
            self.send_response(HTTPStatus.OK)
        else:
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range",
                             f"bytes {byte_range.start}-{byte_range.stop - 1}/{served.size}")
        text = path.endswith(_TEXT_SUFFIXES)
        self.send_header("Content-Type",
                         "text/plain; charset=utf-8" if text else "application/octet-stream")
        self.send_header("Content-Length", str(byte_range.length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", formatdate(served.mtime, usegmt=True))
        self.end_headers()
        if not body or not byte_range.length:
            return
        try:
            self._sent = self.connection.sendfile(file, byte_range.start, byte_range.length)
        except OSError:
            # The client went away: count what reached the socket and hang up.
            self._sent = max(0, file.tell() - byte_range.start)
            self.close_connection = True
            return
        if self._sent < byte_range.length:  # the file shrank under us
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    """Threads per request, which `server_close` joins once `cut_connections`
    has ended their transfers: a stopped server has logged every request."""

    daemon_threads = False

    def __init__(self, *args: Any, **kwargs: Any):
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def server_bind(self) -> None:
        # HTTPServer would look the address up in DNS (getfqdn), which can
        # stall for many seconds where no resolver answers.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class HttpServer:
    """The HTTP server on its own thread until `stop()`."""

    def __init__(self, served: ServedDir, address: tuple[str, int]):
        handler = type("Handler", (_Handler,), {"served": served})
        self._server = _Server(address, handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http",
                                        daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.cut_connections()
        self._server.server_close()
        self._thread.join()
