"""A UDP socket whose datagrams are handed to a function on a thread of their own."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("nbic")

_POLL_SECONDS = 0.5  # how often the loop looks whether to stop
MAX_DATAGRAM = 65536


class UdpLoop:
    def __init__(self, sock: socket.socket, handle: Callable[[bytes, tuple[str, int]], None],
                 name: str):
        self.sock = sock
        self._handle = handle
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.sock.settimeout(_POLL_SECONDS)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                packet, peer = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                # ICMP errors from an earlier send surface here; the socket goes on.
                continue
            try:
                self._handle(packet, peer)
            except OSError as exc:  # an answer that could not be sent: the next may be
                log.warning("%s: cannot answer %s:%d: %s", self._thread.name, *peer[:2],
                            exc.strerror or exc)


def udp_socket(address: tuple[str, int], *, device: str | None = None,
               broadcast: bool = False) -> socket.socket:
    """A bound UDP socket; on `device` only (SO_BINDTODEVICE) when given."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if device is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
