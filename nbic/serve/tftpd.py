"""TFTP server for a boot directory: read requests only (RFC 1350; a write
request gets an error packet), octet and netascii modes, option negotiation
(RFC 2347) of blksize (RFC 2348), tsize and timeout (RFC 2349).

Each transfer runs on its own thread from its own UDP port (its "TID"),
connected to the client's, so packets from anyone else never reach it. The
last packet sent is retransmitted when its acknowledgement does not come in
time; a duplicate acknowledgement is ignored, never answered (answering it
would double every later packet: the "Sorcerer's Apprentice" bug). Block
numbers roll over from 65535 to 0, as clients of large files expect.

Written here on the standard library rather than taken from PyPI (tftpy):
the read side is short, it opens files through the same directory rules as
HTTP (nbic.serve.files), and nbic gains no dependency.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass

from nbic.serve.files import Refusal, RefusedError, ServedDir, ServedFile
from nbic.serve.udp import MAX_DATAGRAM, UdpLoop, udp_socket

log = logging.getLogger("nbic")

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349, seconds
DEFAULT_TIMEOUT = 1.0
RETRIES = 5  # retransmissions of one packet before the transfer is abandoned
_STOP_POLL = 0.2  # how often a transfer waiting for an ACK looks whether the server stops

_NETASCII_CHUNK = 1 << 16


class Opcode(enum.IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    OPTION_REFUSED = 8


_ERROR_FOR = {
    Refusal.BAD_NAME: ErrorCode.ACCESS_VIOLATION,
    Refusal.OUTSIDE: ErrorCode.ACCESS_VIOLATION,
    Refusal.NOT_FOUND: ErrorCode.FILE_NOT_FOUND,
    Refusal.NOT_A_FILE: ErrorCode.FILE_NOT_FOUND,
    Refusal.UNREADABLE: ErrorCode.ACCESS_VIOLATION,
}


class Mode(enum.Enum):
    OCTET = "octet"
    NETASCII = "netascii"


_MODES = {mode.value for mode in Mode}


class MalformedError(Exception):
    """A packet that is not a well-formed TFTP request."""


@dataclass(frozen=True)
class Request:
    opcode: Opcode
    filename: bytes
    mode: str  # lower case, as sent
    options: dict[str, str]  # names in lower case

    def describe(self) -> str:
        options = "".join(f" {name}={value}" for name, value in self.options.items())
        name = self.filename.decode("utf-8", "backslashreplace")
        printable = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in name)
        return f"{self.opcode.name} {printable} {self.mode}{options}"


def parse_request(packet: bytes) -> Request:
    if len(packet) < 2:
        raise MalformedError("short packet")
    opcode = struct.unpack("!H", packet[:2])[0]
    if opcode not in (Opcode.RRQ, Opcode.WRQ):
        raise MalformedError(f"opcode {opcode} is not a request")
    fields = packet[2:].split(b"\0")
    if len(fields) < 3 or fields[-1] != b"" or not fields[0]:
        raise MalformedError("a request is filename, mode and options, each NUL-terminated")
    filename, mode, *pairs = fields[:-1]
    if len(pairs) % 2:
        raise MalformedError("an option without a value")
    options = {pairs[i].decode("ascii", "replace").lower(): pairs[i + 1].decode("ascii", "replace")
               for i in range(0, len(pairs), 2)}
    return Request(Opcode(opcode), filename, mode.decode("ascii", "replace").lower(), options)


@dataclass(frozen=True)
class Settings:
    """What a transfer uses after negotiation, and the options it acknowledges."""

    blksize: int = DEFAULT_BLKSIZE
    timeout: float = DEFAULT_TIMEOUT
    acknowledged: tuple[tuple[str, str], ...] = ()


def negotiate(options: dict[str, str], size: int, mode: Mode) -> Settings:
    """Options a server does not take are left out of its OACK (RFC 2347)."""
    blksize, timeout, acknowledged = DEFAULT_BLKSIZE, DEFAULT_TIMEOUT, []
    for name, value in options.items():
        try:
            number = int(value)
        except ValueError:
            continue
        if name == "blksize" and number >= MIN_BLKSIZE:
            blksize = min(number, MAX_BLKSIZE)
            acknowledged.append((name, str(blksize)))
        elif name == "timeout" and MIN_TIMEOUT <= number <= MAX_TIMEOUT:
            timeout = float(number)
            acknowledged.append((name, str(number)))
        elif name == "tsize" and mode is Mode.OCTET:  # netascii's size is not the file's
            acknowledged.append((name, str(size)))
    return Settings(blksize, timeout, tuple(acknowledged))


def error_packet(code: ErrorCode, message: str) -> bytes:
    return struct.pack("!HH", Opcode.ERROR, code) + message.encode() + b"\0"


def data_packet(block: int, data: bytes) -> bytes:
    return struct.pack("!HH", Opcode.DATA, block & 0xFFFF) + data


def oack_packet(acknowledged: tuple[tuple[str, str], ...]) -> bytes:
    body = b"".join(name.encode() + b"\0" + value.encode() + b"\0"
                    for name, value in acknowledged)
    return struct.pack("!H", Opcode.OACK) + body


class _OctetReader:
    def __init__(self, fd: int):
        self._fd, self._offset = fd, 0

    def read(self, size: int) -> bytes:
        data = os.pread(self._fd, size, self._offset)
        self._offset += len(data)
        return data


class _NetasciiReader:
    """The file with every LF sent as CR LF and every bare CR as CR NUL."""

    def __init__(self, fd: int):
        self._fd, self._offset, self._pending = fd, 0, b""

    def read(self, size: int) -> bytes:
        while len(self._pending) < size:
            chunk = os.pread(self._fd, _NETASCII_CHUNK, self._offset)
            if not chunk:
                break
            self._offset += len(chunk)
            self._pending += chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        data, self._pending = self._pending[:size], self._pending[size:]
        return data


class _Abandoned(Exception):
    """The transfer ends early; the message says why (for the log)."""


class _Refused(Exception):
    """A request answered with an error packet."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class _Transfer:
    def __init__(self, sock: socket.socket, request: Request, served: ServedFile, mode: Mode,
                 stopping: threading.Event):
        self.sock = sock
        self.request = request
        self.served = served
        self.mode = mode
        self.stopping = stopping
        self.sent = 0

    def run(self) -> None:
        settings = negotiate(self.request.options, self.served.size, self.mode)
        if settings.acknowledged:
            self._exchange(oack_packet(settings.acknowledged), 0, settings.timeout)
        reader = (_OctetReader if self.mode is Mode.OCTET else _NetasciiReader)(self.served.fd)
        block = 1
        while True:
            data = reader.read(settings.blksize)
            self._exchange(data_packet(block, data), block, settings.timeout)
            self.sent += len(data)
            if len(data) < settings.blksize:
                return
            block += 1

    def _exchange(self, packet: bytes, block: int, timeout: float) -> None:
        """Send `packet` until the client acknowledges `block`."""
        for _ in range(RETRIES + 1):
            self.sock.send(packet)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(min(left, _STOP_POLL))
                try:
                    reply = self.sock.recv(MAX_DATAGRAM)
                except TimeoutError:
                    if self.stopping.is_set():
                        raise _Abandoned("the server stopped") from None
                    continue
                except ConnectionRefusedError:
                    raise _Abandoned("the client's port is closed") from None
                if len(reply) < 4:
                    continue
                opcode, number = struct.unpack("!HH", reply[:4])
                if opcode == Opcode.ACK and number == block & 0xFFFF:
                    return
                if opcode == Opcode.ERROR:
                    message = reply[4:].split(b"\0")[0].decode("utf-8", "replace")
                    raise _Abandoned(f"client error {number}: {message}")
                # A duplicate of an earlier ACK, or noise: keep waiting.
        raise _Abandoned(f"no acknowledgement after {RETRIES} retransmissions")


class TftpServer:
    """The TFTP server on its own thread until `stop()`."""

    def __init__(self, served: ServedDir, address: tuple[str, int]):
        self.served = served
        self._loop = UdpLoop(udp_socket(address), self._request, "tftp")
        self._stopping = threading.Event()
        self._transfers: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        return self._loop.address

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        """No new transfers; those under way end (at once if waiting for a client)
        and are joined, so every transfer is logged when this returns."""
        self._loop.stop()
        self._stopping.set()
        for transfer in self._transfers:
            transfer.join()

    def _request(self, packet: bytes, client: tuple[str, int]) -> None:
        opcode = int.from_bytes(packet[:2], "big")
        if opcode == Opcode.ERROR:  # an error is never answered
            return
        reply = self._loop.sock.sendto
        if opcode in (Opcode.DATA, Opcode.ACK):  # meant for a transfer's own port
            reply(error_packet(ErrorCode.UNKNOWN_TID, "unknown transfer"), client)
            return
        try:
            request = parse_request(packet)
        except MalformedError as exc:
            reply(error_packet(ErrorCode.ILLEGAL_OPERATION, str(exc)), client)
            return
        # A retransmitted request starts a second transfer, which the client
        # ends with "unknown transfer ID" once it has the first (RFC 1350).
        transfer = threading.Thread(target=self._transfer, args=(request, client),
                                    name=f"tftp {client[0]}:{client[1]}", daemon=True)
        # Only the loop's thread adds transfers; stop() joins them after it ended.
        self._transfers = [*(t for t in self._transfers if t.is_alive()), transfer]
        transfer.start()

    def _transfer(self, request: Request, client: tuple[str, int]) -> None:
        start, sent = time.monotonic(), 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((self.address[0], 0))
                sock.connect(client)
                served = self._open(request)
                transfer = _Transfer(sock, request, served, Mode(request.mode), self._stopping)
                try:
                    transfer.run()
                    status = "ok"
                finally:
                    sent = transfer.sent
                    os.close(served.fd)
            except _Refused as refused:
                status = f"error {refused.code.value} ({refused.message})"
                with contextlib.suppress(OSError):
                    sock.send(error_packet(refused.code, refused.message))
            except _Abandoned as exc:
                status = f"abandoned: {exc}"
            except OSError as exc:
                status = f"failed: {exc.strerror or exc}"
        log.info("tftp %s:%d \"%s\" %s %d bytes %.3fs", client[0], client[1],
                 request.describe(), status, sent, time.monotonic() - start)

    def _open(self, request: Request) -> ServedFile:
        if request.opcode is Opcode.WRQ:
            raise _Refused(ErrorCode.ACCESS_VIOLATION, "this server only reads")
        if request.mode not in _MODES:
            raise _Refused(ErrorCode.ILLEGAL_OPERATION, f"mode {request.mode} is not served")
        try:
            return self.served.open(request.filename)
        except RefusedError as exc:
            raise _Refused(_ERROR_FOR[exc.refusal], exc.refusal.value) from None
