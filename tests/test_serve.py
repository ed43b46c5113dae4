"""`nbic serve`: HTTP and TFTP against real servers on loopback and real
clients (http.client, curl, atftp, and a raw TFTP client for what the
protocol promises packet by packet), the directory rules (nothing outside
DIR), QEMU's iPXE booting over HTTP from `nbic serve`, and ProxyDHCP in
network namespaces the tests make themselves, beside dnsmasq as the site's
DHCP server.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from boot_helpers import netboot_dir
from cpio_helpers import need, pattern

from nbic.boot import BootConfig, BootOutcome, NetBoot, boot, format_result
from nbic.errors import UsageError
from nbic.serve import parse_address
from nbic.serve.files import Refusal, RefusedError, ServedDir
from nbic.serve.httpd import ByteRange, HttpServer, RangeNotSatisfiable, parse_range
from nbic.serve.proxydhcp import (
    MAGIC_COOKIE,
    Client,
    MessageType,
    Option,
    build_reply,
    classify,
    parse_packet,
)
from nbic.serve.tftpd import DEFAULT_TIMEOUT, ErrorCode, Opcode, TftpServer

NBIC = str(Path(sys.executable).parent / "nbic")
MARKER = "NBIC-SERVE-MARKER"
BIG = pattern(3 << 20, seed=5)
SMALL = b"a small file\n"
SECRET = b"outside the served directory\n"


# --- the served directory -------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """DIR with files, links inside it, and links and names that lead out."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    root = tmp_path / "dir"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "big").write_bytes(BIG)
    (root / "small").write_bytes(SMALL)
    (root / "empty").write_bytes(b"")
    (root / "sub" / "deep" / "file").write_bytes(SMALL)
    (root / "text.ipxe").write_bytes(b"#!ipxe\n")
    os.symlink("sub/deep/file", root / "inside-link")
    os.symlink("sub/../small", root / "down-and-up")
    os.symlink("../../small", root / "sub" / "deep" / "to-top")
    os.symlink("../outside/secret", root / "escape-relative")
    os.symlink(str(outside / "secret"), root / "escape-absolute")
    os.symlink("..", root / "parent")
    os.symlink("loop", root / "loop")
    os.mkfifo(root / "fifo")
    return root


def test_served_names_follow_links_only_inside(tree):
    served = ServedDir(tree)
    for name, content in [(b"small", SMALL), (b"/small", SMALL), (b"//sub/./deep//file", SMALL),
                          (b"inside-link", SMALL), (b"down-and-up", SMALL),
                          (b"sub/deep/to-top", SMALL)]:
        opened = served.open(name)
        try:
            assert os.pread(opened.fd, 100, 0) == content, name
        finally:
            os.close(opened.fd)
    for name, refusal in [(b"../outside/secret", Refusal.BAD_NAME),
                          (b"sub/../../outside/secret", Refusal.BAD_NAME),
                          (b"small\0", Refusal.BAD_NAME),
                          (b"escape-relative", Refusal.OUTSIDE),
                          (b"escape-absolute", Refusal.OUTSIDE),
                          (b"parent/outside/secret", Refusal.OUTSIDE),
                          (b"etc/passwd", Refusal.NOT_FOUND),  # DIR's, not the host's
                          (b"/etc/passwd", Refusal.NOT_FOUND),
                          (b"small/x", Refusal.NOT_FOUND),
                          (b"loop", Refusal.NOT_FOUND),
                          (b"", Refusal.NOT_A_FILE),
                          (b"sub", Refusal.NOT_A_FILE),
                          (b"fifo", Refusal.NOT_A_FILE)]:
        with pytest.raises(RefusedError) as caught:
            served.open(name)
        assert caught.value.refusal is refusal, name


# --- HTTP ---------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def wait_for(self, pattern: str, timeout: float = 5.0) -> str:
        """The first line matching `pattern` (a line is logged just after its response)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line matches {pattern!r} in {self.lines}")


@pytest.fixture
def nbic_log() -> Iterator[_Lines]:
    logger = logging.getLogger("nbic")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def http_server(tree: Path) -> Iterator[tuple[str, int]]:
    server = HttpServer(ServedDir(tree), ("127.0.0.1", 0))
    server.start()
    yield server.address
    server.stop()


def get(address: tuple[str, int], path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_get_and_head_send_the_file_and_its_headers(http_server, nbic_log):
    status, headers, body = get(http_server, "/big")
    assert (status, body) == (200, BIG)
    assert headers["Content-Length"] == str(len(BIG))
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] == "application/octet-stream"
    status, headers, body = get(http_server, "/big", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(BIG)))
    assert get(http_server, "/text.ipxe")[1]["Content-Type"].startswith("text/plain")
    status, _, body = get(http_server, "/empty")
    assert (status, body) == (200, b"")
    # One line per transfer: client, request, status, bytes, seconds.
    nbic_log.wait_for(rf'^http 127\.0\.0\.1:\d+ "GET /big HTTP/1\.1" 200 {len(BIG)} bytes '
                      r"\d+\.\d{3}s$")
    nbic_log.wait_for(r'"HEAD /big HTTP/1\.1" 200 0 bytes')


@pytest.mark.parametrize(("header", "status", "part"), [
    ("bytes=0-99", 206, ByteRange(0, 100)),
    ("bytes=100-", 206, ByteRange(100, len(BIG))),
    ("bytes=-100", 206, ByteRange(len(BIG) - 100, len(BIG))),
    ("bytes=7-7", 206, ByteRange(7, 8)),
    ("bytes=5-999999999", 206, ByteRange(5, len(BIG))),
    ("bytes=-999999999", 206, ByteRange(0, len(BIG))),
    ("bytes=0-1,5-6", 200, None),  # several ranges: the whole file
    ("bytes=9-3", 200, None),  # invalid: ignored
    ("items=0-1", 200, None),
    (f"bytes={len(BIG)}-", 416, None),
    ("bytes=-0", 416, None),
])
def test_single_byte_ranges(http_server, header, status, part):
    got, headers, body = get(http_server, "/big", headers={"Range": header})
    assert got == status
    if status == 206:
        assert body == BIG[part.start:part.stop]
        assert headers["Content-Range"] == f"bytes {part.start}-{part.stop - 1}/{len(BIG)}"
    elif status == 200:
        assert body == BIG
    else:
        assert headers["Content-Range"] == f"bytes */{len(BIG)}"
        assert body == b""


def test_range_parsing_edges():
    assert parse_range(None, 10) is None
    assert parse_range(" bytes = 2 - 3 ", 10) == ByteRange(2, 4)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=0-", 0)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-1", 0)


def test_if_range_sends_the_whole_file(http_server):
    status, _, body = get(http_server, "/big", headers={"Range": "bytes=0-9",
                                                        "If-Range": '"some-etag"'})
    assert (status, body) == (200, BIG)


@pytest.mark.parametrize(("path", "status"), [
    ("/../outside/secret", 400),
    ("/%2e%2e/outside/secret", 400),
    ("/sub/%2E%2E/%2e%2e/outside/secret", 400),
    ("/%2e%2e%2foutside%2fsecret", 400),
    ("/small%00", 400),
    ("/escape-relative", 403),
    ("/escape-absolute", 403),
    ("/parent/outside/secret", 403),
    ("/%2fetc%2fpasswd", 404),  # DIR's /etc/passwd, which it does not have
    ("/etc/passwd", 404),
    ("/no-such-file", 404),
    ("/sub", 404),
    ("/", 404),
    ("/fifo", 404),
    ("/loop", 404),
    ("/inside-link", 200),
    ("/down-and-up?query=1", 200),
    ("http://any.host/small", 200),  # absolute form
])
def test_nothing_outside_the_directory_is_served(http_server, path, status):
    got, _, body = get(http_server, path)
    assert got == status
    assert SECRET not in body
    assert (body == SMALL) == (status == 200)


def test_curl_as_is_traversal_is_refused(http_server):
    curl = need("curl")
    base = f"http://{http_server[0]}:{http_server[1]}"
    for path, code in [("/../outside/secret", "400"), ("/%2e%2e/outside/secret", "400"),
                       ("/escape-relative", "403"), ("/small", "200")]:
        result = subprocess.run([curl, "-s", "--path-as-is", "-o", "-", "-w", "%{http_code}",
                                 base + path], capture_output=True, check=True)
        assert result.stdout.endswith(code.encode()), (path, result.stdout)
        assert SECRET not in result.stdout


def test_keep_alive_serves_several_requests_on_one_connection(http_server, nbic_log):
    connection = http.client.HTTPConnection(*http_server, timeout=10)
    try:
        for method, path, body in [("GET", "/small", SMALL), ("HEAD", "/big", b""),
                                   ("GET", "/big", BIG)]:
            connection.request(method, path)
            response = connection.getresponse()
            assert response.read() == body
            assert not response.will_close
        port = connection.sock.getsockname()[1]
    finally:
        connection.close()
    for request in ("GET /small", "HEAD /big", "GET /big"):
        nbic_log.wait_for(rf'^http 127\.0\.0\.1:{port} "{request} HTTP/1\.1" 200 ')


def test_concurrent_clients_and_a_stalled_one(http_server):
    stalled = socket.create_connection(http_server)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    stalled.recv(100)  # the transfer has begun; it is never read further
    results: dict[int, bytes] = {}

    def fetch(i: int) -> None:
        results[i] = get(http_server, "/big", headers={"Range": f"bytes={i * 1000}-"})[2]

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert time.monotonic() - start < 20
    assert {i: len(body) for i, body in results.items()} == \
        {i: len(BIG) - i * 1000 for i in range(8)}
    assert all(body == BIG[i * 1000:] for i, body in results.items())
    stalled.close()


def test_the_command_serves_logs_and_stops_on_sigterm(tree, tmp_path):
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([NBIC, "serve", str(tree), "--http", "127.0.0.1:0"],
                                   stderr=log_file, stdin=subprocess.DEVNULL)
    try:
        url = wait_for_line(log_path, r"over HTTP at http://127\.0\.0\.1:(\d+)/", process)
        port = int(url.group(1))
        assert get(("127.0.0.1", port), "/small")[2] == SMALL
        wait_for_line(log_path, r'"GET /small HTTP/1\.1" 200 13 bytes', process)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    assert log_path.read_text().rstrip().endswith("nbic: stopped")


def test_the_command_refuses_a_busy_port_and_a_bad_address(tree):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([NBIC, "serve", str(tree), "--http", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in result.stderr
    result = subprocess.run([NBIC, "serve", str(tree), "--http", "localhost:99999"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "is not ADDR:PORT" in result.stderr


def test_listen_addresses():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":0") == ("127.0.0.1", 0)
    assert parse_address("0.0.0.0:69") == ("0.0.0.0", 69)
    for bad in ("localhost:80", "1.2.3.4:65536", "1.2.3.4:", "[::1]:80"):
        with pytest.raises(UsageError):
            parse_address(bad)


def wait_for_line(path: Path, pattern: str, process: subprocess.Popen | None = None,
                  timeout: float = 20.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (match := re.search(pattern, path.read_text(errors="replace"))) is not None:
            return match
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared in {path}:\n{path.read_text()}")


# --- TFTP ---------------------------------------------------------------------------


@pytest.fixture
def tftp_server(tree: Path) -> Iterator[tuple[str, int]]:
    server = TftpServer(ServedDir(tree), ("127.0.0.1", 0))
    server.start()
    yield server.address
    server.stop()


class TftpClient:
    """A raw TFTP client: every packet as the test wants it."""

    def __init__(self, server: tuple[str, int]):
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.peer: tuple[str, int] | None = None  # the transfer's own port

    def close(self) -> None:
        self.sock.close()

    def request(self, name: bytes, mode: bytes = b"octet", opcode: int = Opcode.RRQ,
                **options: int) -> None:
        fields = [name, mode, *(x for key, value in options.items()
                                for x in (key.encode(), str(value).encode()))]
        self.sock.sendto(struct.pack("!H", opcode) + b"".join(f + b"\0" for f in fields),
                         self.server)

    def receive(self, timeout: float = 5.0) -> tuple[int, int, bytes]:
        """(opcode, block or error code, rest) of the next packet."""
        self.sock.settimeout(timeout)
        packet, self.peer = self.sock.recvfrom(70000)
        opcode, number = struct.unpack("!HH", packet[:4]) if len(packet) >= 4 else \
            (struct.unpack("!H", packet[:2])[0], 0)
        return opcode, number, packet[4:] if opcode != Opcode.OACK else packet[2:]

    def ack(self, block: int) -> None:
        assert self.peer is not None
        self.sock.sendto(struct.pack("!HH", Opcode.ACK, block & 0xFFFF), self.peer)

    def fetch(self, name: bytes, mode: bytes = b"octet", **options: int
              ) -> tuple[dict[str, str] | None, bytes]:
        """The whole file, acknowledging each block; and the OACK's options."""
        self.request(name, mode, **options)
        opcode, number, rest = self.receive()
        oack = None
        if opcode == Opcode.OACK:
            fields = rest.split(b"\0")[:-1]
            oack = {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}
            self.ack(0)
            opcode, number, rest = self.receive()
        blksize = int((oack or {}).get("blksize", 512))
        data, block = bytearray(), 1
        while True:
            assert opcode == Opcode.DATA and number == block & 0xFFFF, (opcode, number, rest)
            data += rest
            self.ack(block)
            if len(rest) < blksize:
                return oack, bytes(data)
            block += 1
            opcode, number, rest = self.receive()


@pytest.fixture
def tftp_client(tftp_server) -> Iterator[TftpClient]:
    client = TftpClient(tftp_server)
    yield client
    client.close()


def test_tftp_negotiates_blksize_tsize_and_timeout(tftp_client, nbic_log):
    oack, data = tftp_client.fetch(b"big", blksize=1468, tsize=0, timeout=3)
    assert oack == {"blksize": "1468", "tsize": str(len(BIG)), "timeout": "3"}
    assert data == BIG
    nbic_log.wait_for(rf'^tftp 127\.0\.0\.1:\d+ "RRQ big octet blksize=1468 tsize=0 '
                      rf'timeout=3" ok {len(BIG)} bytes \d+\.\d{{3}}s$')


def test_tftp_without_options_uses_512_byte_blocks_and_ends_with_an_empty_one(
        tftp_client, tree):
    (tree / "exact").write_bytes(pattern(1024))
    oack, data = tftp_client.fetch(b"exact")
    assert (oack, data) == (None, pattern(1024))  # blocks of 512, 512 and 0 bytes


def test_tftp_options_out_of_range_are_left_out(tftp_client):
    oack, data = tftp_client.fetch(b"small", blksize=4, timeout=0, windowsize=8, tsize=0)
    assert oack == {"tsize": str(len(SMALL))}
    assert data == SMALL
    oack, _ = tftp_client.fetch(b"small", blksize=100000)
    assert oack == {"blksize": "65464"}


def test_tftp_netascii_sends_cr_lf(tftp_client, tree):
    (tree / "text").write_bytes(b"one\ntwo\rthree\r\n")
    oack, data = tftp_client.fetch(b"text", mode=b"NetASCII", tsize=0)
    assert oack is None  # tsize is the file's size, not what netascii sends
    assert data == b"one\r\ntwo\r\0three\r\0\r\n"


@pytest.mark.parametrize(("name", "mode", "opcode", "code"), [
    (b"small", b"octet", Opcode.WRQ, ErrorCode.ACCESS_VIOLATION),
    (b"../outside/secret", b"octet", Opcode.RRQ, ErrorCode.ACCESS_VIOLATION),
    (b"escape-relative", b"octet", Opcode.RRQ, ErrorCode.ACCESS_VIOLATION),
    (b"escape-absolute", b"octet", Opcode.RRQ, ErrorCode.ACCESS_VIOLATION),
    (b"parent/outside/secret", b"octet", Opcode.RRQ, ErrorCode.ACCESS_VIOLATION),
    (b"/etc/passwd", b"octet", Opcode.RRQ, ErrorCode.FILE_NOT_FOUND),
    (b"no-such-file", b"octet", Opcode.RRQ, ErrorCode.FILE_NOT_FOUND),
    (b"sub", b"octet", Opcode.RRQ, ErrorCode.FILE_NOT_FOUND),
    (b"fifo", b"octet", Opcode.RRQ, ErrorCode.FILE_NOT_FOUND),
    (b"small", b"mail", Opcode.RRQ, ErrorCode.ILLEGAL_OPERATION),
])
def test_tftp_refusals_are_error_packets(tftp_client, name, mode, opcode, code):
    tftp_client.request(name, mode, opcode=opcode)
    got, number, rest = tftp_client.receive()
    assert (got, number) == (Opcode.ERROR, code)
    assert SECRET not in rest


def test_tftp_packets_that_are_no_request_get_errors(tftp_client, tftp_server):
    tftp_client.sock.sendto(struct.pack("!HH", Opcode.ACK, 1), tftp_server)
    assert tftp_client.receive()[:2] == (Opcode.ERROR, ErrorCode.UNKNOWN_TID)
    tftp_client.sock.sendto(struct.pack("!H", Opcode.RRQ) + b"no-terminator", tftp_server)
    assert tftp_client.receive()[:2] == (Opcode.ERROR, ErrorCode.ILLEGAL_OPERATION)


def test_tftp_retransmits_and_ignores_duplicate_acks(tftp_client):
    tftp_client.request(b"big")
    first = tftp_client.receive()
    assert first[:2] == (Opcode.DATA, 1)
    start = time.monotonic()
    again = tftp_client.receive(timeout=DEFAULT_TIMEOUT * 3)  # no ACK: block 1 comes again
    assert again == first
    assert time.monotonic() - start >= DEFAULT_TIMEOUT * 0.9
    tftp_client.ack(1)
    assert tftp_client.receive()[:2] == (Opcode.DATA, 2)
    tftp_client.ack(1)  # a duplicate: must not make the server send block 2 twice
    with pytest.raises(TimeoutError):
        tftp_client.receive(timeout=DEFAULT_TIMEOUT * 0.6)


def test_tftp_block_numbers_roll_over(tftp_client, tree):
    data = pattern(8 * 65536 + 20, seed=3)  # blocks 1 .. 65538 of 8 bytes
    (tree / "many-blocks").write_bytes(data)
    oack, got = tftp_client.fetch(b"many-blocks", blksize=8)
    assert oack == {"blksize": "8"}
    assert got == data


def test_curl_and_atftp_fetch_with_options(tftp_server, tmp_path):
    curl, atftp = need("curl"), need("atftp")
    host, port = tftp_server
    out = tmp_path / "curl.out"
    subprocess.run([curl, "-s", "--tftp-blksize", "1428", "-o", str(out),
                    f"tftp://{host}:{port}/sub/deep/file"], check=True)
    assert out.read_bytes() == SMALL
    result = subprocess.run([atftp, "--trace", "--option", "blksize 8192", "--option", "tsize 0",
                             "--get", "-r", "big", "-l", str(tmp_path / "atftp.out"), host,
                             str(port)], capture_output=True, text=True, check=True)
    # atftp's trace of the server's OACK (it ends the list with backspaces).
    assert f"received OACK <tsize: {len(BIG)}, blksize: 8192," in result.stderr
    assert (tmp_path / "atftp.out").read_bytes() == BIG


def test_curl_gets_tftp_errors_for_traversal(tftp_server):
    curl = need("curl")
    host, port = tftp_server
    # curl's exit statuses: 68 TFTP file not found, 69 TFTP permission problem.
    for path, status in [("../outside/secret", 69), ("escape-relative", 69),
                         ("no-such-file", 68)]:
        result = subprocess.run([curl, "-s", "--path-as-is", "-o", "-",
                                 f"tftp://{host}:{port}/{path}"], capture_output=True)
        assert result.returncode == status, path
        assert SECRET not in result.stdout


def test_concurrent_tftp_transfers(tftp_server, tmp_path):
    curl = need("curl")
    host, port = tftp_server
    processes = [subprocess.Popen([curl, "-s", "--tftp-blksize", "1024", "-o",
                                   str(tmp_path / f"out{i}"), f"tftp://{host}:{port}/big"])
                 for i in range(4)]
    assert [p.wait(60) for p in processes] == [0] * 4
    assert all((tmp_path / f"out{i}").read_bytes() == BIG for i in range(4))


# --- ProxyDHCP packets ---------------------------------------------------------------

_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
MAC = bytes.fromhex("525400123456")
UUID = bytes(range(17))


def dhcp_packet(message: int, options: dict[int, bytes], xid: int = 0x1234ABCD) -> bytes:
    header = _BOOTP.pack(1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4), bytes(4), bytes(4),
                         MAC, b"", b"")
    body = bytes([53, 1, message]) + b"".join(bytes([code, len(value)]) + value
                                              for code, value in options.items())
    return header + MAGIC_COOKIE + body + b"\xff"


PXE_BIOS = {60: b"PXEClient:Arch:00000:UNDI:002001", 93: b"\0\0", 97: UUID}
PXE_UEFI = {60: b"PXEClient:Arch:00007:UNDI:003016", 93: b"\0\7"}
IPXE = {**PXE_BIOS, 77: b"iPXE", 175: b"\xb1\x05\x01\x10\xec\x10\x0d"}
NOT_PXE = {60: b"udhcp 1.36.1"}


def test_clients_are_told_apart():
    kinds = {name: classify(parse_packet(dhcp_packet(1, options)))
             for name, options in [("bios", PXE_BIOS), ("uefi", PXE_UEFI), ("ipxe", IPXE),
                                   ("other", NOT_PXE), ("none", {})]}
    assert kinds == {"bios": Client.BIOS, "uefi": Client.UEFI_X64, "ipxe": Client.IPXE,
                     "other": None, "none": None}


def test_an_offer_carries_boot_options_and_no_address():
    request = parse_packet(dhcp_packet(1, PXE_BIOS))
    server = bytes([10, 77, 0, 2])
    reply = build_reply(request, MessageType.OFFER, server, "undionly.kpxe", Client.BIOS)
    op, _, _, _, xid, _, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, _, file = \
        _BOOTP.unpack_from(reply)
    assert (op, xid, flags) == (2, 0x1234ABCD, 0x8000)
    assert yiaddr == bytes(4), "a ProxyDHCP offer never hands out an address"
    assert (ciaddr, giaddr, siaddr) == (bytes(4), bytes(4), server)
    assert chaddr[:6] == MAC
    assert file.rstrip(b"\0") == b"undionly.kpxe"
    options = parse_packet(reply).options
    assert options[Option.MESSAGE_TYPE] == bytes([MessageType.OFFER])
    assert options[Option.SERVER_ID] == server
    assert options[Option.VENDOR_CLASS] == b"PXEClient"
    assert options[Option.CLIENT_UUID] == UUID
    assert options[Option.VENDOR_OPTIONS] == bytes([6, 1, 8, 255])
    for client in (Client.IPXE, Client.UEFI_X64):  # no PXE menu options for these
        other = parse_packet(build_reply(request, MessageType.OFFER, server, "x", client))
        assert Option.VENDOR_OPTIONS not in other.options


# --- network namespaces: ProxyDHCP beside dnsmasq, QEMU on a tap --------------------


class Lan:
    """A bridge in namespace WIRE with a tap for QEMU, and two hosts on veths:
    SITE (10.77.0.1, the site's DHCP server) and BOOT (10.77.0.2, nbic serve).
    Everything lives in namespaces the test made, and goes with them."""

    SITE_ADDRESS, BOOT_ADDRESS = "10.77.0.1", "10.77.0.2"

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        prefix = f"nbic{os.getpid()}x{time.monotonic_ns() % 100000}"
        self.wire, self.site, self.boot = (f"{prefix}-{n}" for n in ("wire", "site", "boot"))
        self.processes: list[subprocess.Popen] = []
        self.made: list[str] = []

    def ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True)
        if result.returncode:
            raise AssertionError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def build(self) -> None:
        for namespace in (self.wire, self.site, self.boot):
            self.ip("netns", "add", namespace)
            self.made.append(namespace)
            self.ip("-n", namespace, "link", "set", "lo", "up")
        self.ip("-n", self.wire, "link", "add", "br0", "type", "bridge")
        self.ip("-n", self.wire, "link", "set", "br0", "up")
        for namespace, side, address in ((self.site, "site", self.SITE_ADDRESS),
                                         (self.boot, "boot", self.BOOT_ADDRESS)):
            self.ip("-n", self.wire, "link", "add", side, "type", "veth", "peer", "name", "eth0",
                    "netns", namespace)
            self.ip("-n", self.wire, "link", "set", side, "master", "br0", "up")
            self.ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            self.ip("-n", namespace, "link", "set", "eth0", "up")
        self.ip("-n", self.wire, "tuntap", "add", "dev", "tap0", "mode", "tap")
        self.ip("-n", self.wire, "link", "set", "tap0", "master", "br0", "up")

    def start(self, namespace: str, argv: list[str], log_name: str) -> Path:
        log_path = self.tmp_path / log_name
        with open(log_path, "wb") as log_file:
            self.processes.append(subprocess.Popen(
                ["ip", "netns", "exec", namespace, *argv], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT))
        return log_path

    def site_dhcp(self) -> Path:
        """dnsmasq handing out addresses only: no boot file, no PXE options."""
        log_path = self.start(self.site, [
            need("dnsmasq"), "--no-daemon", "--conf-file=/dev/null", "--port=0",
            "--interface=eth0", "--bind-interfaces", "--log-dhcp", "--log-facility=-",
            "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,10m",
            f"--dhcp-leasefile={self.tmp_path / 'leases'}",
            f"--pid-file={self.tmp_path / 'dnsmasq.pid'}", "--user=root", "--group=root",
        ], "dnsmasq.log")
        wait_for_line(log_path, r"sockets bound exclusively to interface eth0",
                      self.processes[-1])
        return log_path

    def serve(self, directory: Path, *options: str) -> Path:
        log_path = self.start(self.boot, [NBIC, "serve", str(directory), "--proxy-dhcp", "eth0",
                                          *options], "serve.log")
        wait_for_line(log_path, r"ProxyDHCP on eth0", self.processes[-1])
        return log_path

    def qemu_wrapper(self) -> str:
        """A QEMU that runs in WIRE, where the tap is."""
        wrapper = self.tmp_path / "qemu-in-wire"
        wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {self.wire} "
                           f"{shutil.which('qemu-system-x86_64')} \"$@\"\n")
        wrapper.chmod(0o755)
        return str(wrapper)

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for namespace in reversed(self.made):
            subprocess.run(["ip", "netns", "del", namespace], check=False)


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    need("ip")
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    network = Lan(tmp_path)
    try:
        network.build()
        yield network
    finally:
        network.destroy()
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert network.wire not in leftover and network.boot not in leftover


CLIENT = r"""
import json, socket, sys, time
port, sends, wait = int(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
sock.bind(("0.0.0.0", port))
for host, to_port, packet in sends:
    sock.sendto(bytes.fromhex(packet), (host, to_port))
replies, deadline = [], time.monotonic() + wait
while (left := deadline - time.monotonic()) > 0:
    sock.settimeout(left)
    try:
        data, peer = sock.recvfrom(2048)
    except TimeoutError:
        break
    replies.append([peer[0], peer[1], data.hex()])
print(json.dumps(replies))
"""


def exchange(lan: Lan, port: int, sends: list[tuple[str, int, bytes]], wait: float = 2.0
             ) -> list[tuple[str, int, bytes]]:
    """Datagrams sent from SITE's host (as a client would, from `port`) and the replies."""
    result = subprocess.run(
        ["ip", "netns", "exec", lan.site, sys.executable, "-c", CLIENT, str(port),
         json.dumps([[host, to, packet.hex()] for host, to, packet in sends]), str(wait)],
        capture_output=True, text=True, check=True)
    return [(host, peer_port, bytes.fromhex(data))
            for host, peer_port, data in json.loads(result.stdout)]


def test_proxy_dhcp_answers_pxe_clients_only_and_never_with_an_address(lan, tmp_path):
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "undionly.kpxe").write_bytes(b"a BIOS loader")
    serve_log = lan.serve(directory, "--http", "0.0.0.0:80")
    broadcast = "255.255.255.255"
    replies = exchange(lan, 68, [
        (broadcast, 67, dhcp_packet(1, PXE_BIOS, xid=1)),
        (broadcast, 67, dhcp_packet(1, IPXE, xid=2)),
        (broadcast, 67, dhcp_packet(1, NOT_PXE, xid=3)),
        (broadcast, 67, dhcp_packet(1, PXE_UEFI, xid=4)),  # no ipxe.efi in DIR
        # A REQUEST for the site server's offer is not ours to answer.
        (broadcast, 67, dhcp_packet(3, {**IPXE, 54: bytes([10, 77, 0, 1])}, xid=5)),
        (broadcast, 67, dhcp_packet(3, {**IPXE, 54: bytes([10, 77, 0, 2])}, xid=6)),
    ])
    by_xid = {_BOOTP.unpack_from(data)[4]: (host, port, data) for host, port, data in replies}
    assert sorted(by_xid) == [1, 2, 6]
    for xid, (host, port, data) in by_xid.items():
        assert (host, port) == (lan.BOOT_ADDRESS, 67)
        fields = _BOOTP.unpack_from(data)
        assert fields[8] == bytes(4), "yiaddr must stay 0.0.0.0"
        assert fields[9] == bytes([10, 77, 0, 2])
        message = parse_packet(data).options[Option.MESSAGE_TYPE][0]
        assert message == (MessageType.ACK if xid == 6 else MessageType.OFFER)
    assert by_xid[1][2][108:236].rstrip(b"\0") == b"undionly.kpxe"
    assert by_xid[2][2][108:236].rstrip(b"\0") == b"http://10.77.0.2:80/boot.ipxe"
    # Port 4011: a client with its address asks the boot server directly.
    replies = exchange(lan, 4011, [(lan.BOOT_ADDRESS, 4011, dhcp_packet(3, PXE_BIOS, xid=7))])
    assert [(host, port) for host, port, _ in replies] == [(lan.BOOT_ADDRESS, 4011)]
    assert parse_packet(replies[0][2]).options[Option.MESSAGE_TYPE][0] == MessageType.ACK
    wait_for_line(serve_log, r"a PXE UEFI x86-64 client is not answered: .* has no ipxe\.efi")


# --- QEMU: iPXE over HTTP from nbic serve, and by ProxyDHCP in namespaces ------------


@pytest.mark.boot
def test_qemu_boots_over_http_from_nbic_serve(tmp_path, bzimage, static_init):
    directory = netboot_dir(tmp_path, bzimage, static_init, MARKER)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen([NBIC, "serve", str(directory), "--http", "127.0.0.1:0"],
                                  stderr=log_file, stdin=subprocess.DEVNULL)
    try:
        port = wait_for_line(log_path, r"http://127\.0\.0\.1:(\d+)/", server).group(1)
        # The guest reaches the host's loopback as 10.0.2.2.
        net = NetBoot.user(f"http://10.0.2.2:{port}/boot.ipxe")
        result = boot(None, BootConfig(netboot=net, expect=(MARKER,), timeout=240))
        print(f"\n{format_result(result, tail_lines=15)}")
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
    assert result.outcome is BootOutcome.PASSED, format_result(result)
    served = log_path.read_text()
    for name in ("boot.ipxe", "vmlinuz", "initrd.img"):
        size = (directory / name).stat().st_size
        assert re.search(rf'"GET /{name} HTTP/1\.1" 200 {size} bytes', served), served


@pytest.mark.boot
@pytest.mark.parametrize("protocol", ["http", "tftp"])
def test_proxy_dhcp_boots_a_pxe_guest_beside_the_sites_dhcp(lan, tmp_path, bzimage,
                                                            static_init, protocol):
    directory = netboot_dir(tmp_path, bzimage, static_init, MARKER)
    dnsmasq_log = lan.site_dhcp()
    # Over TFTP alone iPXE gets tftp://...:69/boot.ipxe: nbic's TFTP server
    # then carries the kernel and initrd to a real PXE firmware.
    address = f"{lan.BOOT_ADDRESS}:{80 if protocol == 'http' else 69}"
    serve_log = lan.serve(directory, f"--{protocol}", address)
    config = BootConfig(netboot=NetBoot("tap,ifname=tap0,script=no,downscript=no"),
                        expect=(MARKER,), timeout=300, qemu=lan.qemu_wrapper())
    result = boot(None, config)
    print(f"\n{format_result(result, tail_lines=15)}")
    assert result.outcome is BootOutcome.PASSED, format_result(result)
    # The address came from dnsmasq, the boot file from nbic.
    leased = re.search(r"DHCPACK\(eth0\) (10\.77\.0\.\d+) 52:54:00:12:34:56",
                       dnsmasq_log.read_text())
    assert leased is not None, dnsmasq_log.read_text()
    assert f"net0: {leased.group(1)}/255.255.255.0" in result.console
    served = serve_log.read_text()
    print(served)  # shown with -s
    assert re.search(rf"proxydhcp offer 52:54:00:12:34:56 \(iPXE\): "
                     rf"{protocol}://10\.77\.0\.2:\d+/boot\.ipxe", served), served
    for name in ("boot.ipxe", "vmlinuz", "initrd.img"):
        size = (directory / name).stat().st_size
        line = rf'"GET /{name} HTTP/1\.1" 200 {size} bytes' if protocol == "http" else \
            rf'"RRQ {name} octet.*" ok {size} bytes'
        assert re.search(rf"{re.escape(leased.group(1))}:\d+ {line}", served), served


def test_stopping_the_servers_ends_and_logs_every_transfer(tree, nbic_log):
    """A client that stalls mid-transfer does not hold stop(), and each transfer
    is logged before stop() returns (none after, from a leftover thread)."""
    http = HttpServer(ServedDir(tree), ("127.0.0.1", 0))
    tftp = TftpServer(ServedDir(tree), ("127.0.0.1", 0))
    http.start()
    tftp.start()
    stalled_http = socket.create_connection(http.address)
    stalled_http.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled_http.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    stalled_http.recv(100)  # the transfer has begun; it is never read further
    idle_http = socket.create_connection(http.address)  # a connection with no request
    stalled_tftp = TftpClient(tftp.address)
    stalled_tftp.request(b"big", timeout=30)  # a long wait for each ACK, never sent
    assert stalled_tftp.receive()[0] == Opcode.OACK
    start = time.monotonic()
    http.stop()
    tftp.stop()
    assert time.monotonic() - start < 5
    assert any(re.search(r'^http 127\.0\.0\.1:\d+ "GET /big HTTP/1\.1" 200 \d+ bytes', line)
               for line in nbic_log.lines), nbic_log.lines
    assert any(re.search(r'^tftp 127\.0\.0\.1:\d+ "RRQ big octet timeout=30" '
                         r'abandoned: the server stopped', line)
               for line in nbic_log.lines), nbic_log.lines
    for connection in (stalled_http, idle_http):
        connection.close()
    stalled_tftp.close()
