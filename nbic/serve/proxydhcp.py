"""ProxyDHCP: boot instructions for PXE clients beside the site's own DHCP
server, which alone hands out addresses (PXE specification 2.1; pixiecore
works the same way).

A PXE client's DHCPDISCOVER (vendor class "PXEClient") gets two offers: the
site server's with an address, and ours with NO address (yiaddr 0.0.0.0),
only vendor class "PXEClient", our address as next server (siaddr) and
server identifier, and the boot file. The client takes its address from the
site server and its boot file from us. Anything not from a PXE client is
ignored, and a DHCPREQUEST on port 67 only when it is addressed to us (a
"ProxyDHCPREQUEST"); requests to the site server are never answered.

Which boot file:
- iPXE (user class "iPXE", or its encapsulated option 175): the boot script
  URL (boot.ipxe over HTTP). iPXE takes an offer with next server and boot
  file as complete and asks nothing more.
- a plain PXE ROM on BIOS (client architecture 0): undionly.kpxe over TFTP,
  with PXE option 43 saying "boot the file named here, no boot server
  discovery". The iPXE it loads asks again, as iPXE, and gets the script.
- a UEFI x86-64 firmware (architecture 7 or 9): ipxe.efi, offered WITHOUT
  option 43; such firmware then asks on port 4011, and the answer there
  names the file again (pixiecore found this the form most UEFI firmware
  boots from).
A plain PXE client is answered only when its loader is in the served
directory (`nbic netboot --loader /usr/lib/ipxe/undionly.kpxe`).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass

from nbic.errors import NbicError, UsageError
from nbic.serve.files import RefusedError, ServedDir
from nbic.serve.udp import UdpLoop, udp_socket

log = logging.getLogger("nbic")

DHCP_PORT, CLIENT_PORT, PXE_PORT = 67, 68, 4011
BOOTREQUEST, BOOTREPLY = 1, 2
MAGIC_COOKIE = bytes([99, 130, 83, 99])
PXE_CLIENT = b"PXEClient"
BIOS_LOADER = "undionly.kpxe"
UEFI_LOADER = "ipxe.efi"

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr sname file
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_SIOCGIFADDR = 0x8915
# Option 43 for a plain PXE ROM: sub-option 6 (PXE_DISCOVERY_CONTROL) = 8,
# "download the boot file named in this offer; no boot server discovery".
_PXE_BOOT_THIS_FILE = bytes([6, 1, 8, 255])


class MessageType(enum.IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    ACK = 5


class Option(enum.IntEnum):
    PAD = 0
    VENDOR_OPTIONS = 43
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    VENDOR_CLASS = 60
    USER_CLASS = 77
    CLIENT_ARCH = 93
    CLIENT_UUID = 97
    IPXE = 175
    END = 255


class Client(enum.Enum):
    IPXE = "iPXE"
    BIOS = "PXE BIOS"
    UEFI_X64 = "PXE UEFI x86-64"


_ARCH = {0: Client.BIOS, 7: Client.UEFI_X64, 9: Client.UEFI_X64}  # RFC 4578 option 93


class MalformedError(Exception):
    """Not a BOOTP/DHCP request."""


@dataclass(frozen=True)
class Packet:
    op: int
    htype: int
    hlen: int
    xid: int
    flags: int
    ciaddr: bytes
    giaddr: bytes
    chaddr: bytes
    options: dict[int, bytes]

    @property
    def message_type(self) -> int | None:
        value = self.options.get(Option.MESSAGE_TYPE)
        return value[0] if value else None

    @property
    def mac(self) -> str:
        return ":".join(f"{b:02x}" for b in self.chaddr[:min(self.hlen, 16)])


def parse_packet(data: bytes) -> Packet:
    if len(data) < _HEADER.size + len(MAGIC_COOKIE):
        raise MalformedError("short packet")
    op, htype, hlen, _hops, xid, _secs, flags, ciaddr, _yiaddr, _siaddr, giaddr, chaddr, \
        _sname, _file = _HEADER.unpack_from(data)
    if data[_HEADER.size:_HEADER.size + 4] != MAGIC_COOKIE:
        raise MalformedError("no DHCP magic cookie")
    options: dict[int, bytes] = {}
    at = _HEADER.size + 4
    while at < len(data):
        code = data[at]
        if code == Option.PAD:
            at += 1
            continue
        if code == Option.END:
            break
        if at + 1 >= len(data) or at + 2 + data[at + 1] > len(data):
            raise MalformedError(f"option {code} runs past the packet")
        length = data[at + 1]
        # A repeated option continues the first (RFC 3396).
        options[code] = options.get(code, b"") + data[at + 2:at + 2 + length]
        at += 2 + length
    return Packet(op, htype, hlen, xid, flags, ciaddr, giaddr, chaddr, options)


def classify(packet: Packet) -> Client | None:
    """The kind of PXE client that sent `packet`; None for anything else."""
    if packet.op != BOOTREQUEST or not packet.options.get(Option.VENDOR_CLASS, b"").startswith(
            PXE_CLIENT):
        return None
    if b"iPXE" in packet.options.get(Option.USER_CLASS, b"") or Option.IPXE in packet.options:
        return Client.IPXE
    arch = packet.options.get(Option.CLIENT_ARCH, b"")
    return _ARCH.get(int.from_bytes(arch[:2], "big")) if len(arch) >= 2 else Client.BIOS


def _option(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def boot_file_field(bootfile: str) -> bytes:
    """The BOOTP `file` field's bytes: at most 127 and a NUL."""
    file = bootfile.encode()
    if len(file) >= 128:
        raise UsageError(f"boot file name {bootfile!r} does not fit a DHCP packet (127 bytes)")
    return file


def build_reply(request: Packet, message: MessageType, server: bytes, bootfile: str,
                client: Client) -> bytes:
    """Our answer: boot instructions and no address (yiaddr stays 0.0.0.0)."""
    file = boot_file_field(bootfile)
    header = _HEADER.pack(BOOTREPLY, request.htype, request.hlen, 0, request.xid, 0,
                          request.flags, request.ciaddr, bytes(4), server, request.giaddr,
                          request.chaddr, b"", file)
    options = [_option(Option.MESSAGE_TYPE, bytes([message])),
               _option(Option.SERVER_ID, server),
               _option(Option.VENDOR_CLASS, PXE_CLIENT)]
    if Option.CLIENT_UUID in request.options:  # PXE: echo the client's machine id
        options.append(_option(Option.CLIENT_UUID, request.options[Option.CLIENT_UUID]))
    if client is Client.BIOS:
        options.append(_option(Option.VENDOR_OPTIONS, _PXE_BOOT_THIS_FILE))
    return header + MAGIC_COOKIE + b"".join(options) + bytes([Option.END])


def interface_address(name: str) -> str:
    """The IPv4 address of network interface `name`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR,
                                 struct.pack("256s", name.encode()[:15]))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise UsageError(f"no network interface {name!r}") from None
            raise UsageError(f"interface {name} has no IPv4 address") from None
    return socket.inet_ntoa(answer[20:24])


class ProxyDhcpServer:
    """ProxyDHCP on one interface (ports 67 and 4011) until `stop()`."""

    def __init__(self, served: ServedDir, interface: str, address: str, ipxe_bootfile: str):
        self.served = served
        self.interface = interface
        self.address = address
        self.ipxe_bootfile = ipxe_bootfile
        boot_file_field(ipxe_bootfile)  # refused now rather than at the first client
        self._server_id = ipaddress.IPv4Address(address).packed
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._loops: list[UdpLoop] = []
        try:
            for port, handle in ((DHCP_PORT, self._dhcp), (PXE_PORT, self._pxe)):
                sock = udp_socket(("0.0.0.0", port), device=interface, broadcast=True)
                self._loops.append(UdpLoop(sock, handle, f"proxydhcp:{port}"))
        except OSError as exc:
            self.stop()
            why = "needs root or CAP_NET_BIND_SERVICE and CAP_NET_RAW" \
                if exc.errno in (errno.EACCES, errno.EPERM) else exc.strerror
            raise NbicError(f"cannot listen for DHCP on {interface} "
                            f"(UDP {DHCP_PORT} and {PXE_PORT}): {why}") from None

    def start(self) -> None:
        for loop in self._loops:
            loop.start()

    def stop(self) -> None:
        for loop in self._loops:
            loop.stop()

    def _dhcp(self, data: bytes, peer: tuple[str, int]) -> None:
        """Port 67: offer to a PXE client's DISCOVER; acknowledge a REQUEST sent to us."""
        packet, client = self._pxe_request(data)
        if packet is None or client is None:
            return
        if packet.message_type == MessageType.DISCOVER:
            message = MessageType.OFFER
        elif packet.message_type == MessageType.REQUEST and \
                packet.options.get(Option.SERVER_ID) == self._server_id:
            message = MessageType.ACK
        else:
            return
        if packet.giaddr != bytes(4):  # relayed: answer through the relay agent
            target = (socket.inet_ntoa(packet.giaddr), DHCP_PORT)
        elif packet.ciaddr != bytes(4):
            target = (socket.inet_ntoa(packet.ciaddr), CLIENT_PORT)
        else:
            target = ("255.255.255.255", CLIENT_PORT)
        self._answer(self._loops[0], packet, client, message, target)

    def _pxe(self, data: bytes, peer: tuple[str, int]) -> None:
        """Port 4011: a PXE client asks us for its boot file directly."""
        packet, client = self._pxe_request(data)
        if packet is not None and client is not None and \
                packet.message_type == MessageType.REQUEST:
            self._answer(self._loops[1], packet, client, MessageType.ACK, peer)

    def _pxe_request(self, data: bytes) -> tuple[Packet | None, Client | None]:
        try:
            packet = parse_packet(data)
        except MalformedError:
            return None, None
        return packet, classify(packet)

    def _answer(self, loop: UdpLoop, packet: Packet, client: Client, message: MessageType,
                target: tuple[str, int]) -> None:
        bootfile = self._bootfile(client)
        if bootfile is None:
            return
        loop.sock.sendto(build_reply(packet, message, self._server_id, bootfile, client), target)
        log.info("proxydhcp %s %s (%s): %s", message.name.lower(), packet.mac, client.value,
                 bootfile)

    def _bootfile(self, client: Client) -> str | None:
        if client is Client.IPXE:
            return self.ipxe_bootfile
        loader = BIOS_LOADER if client is Client.BIOS else UEFI_LOADER
        try:
            served = self.served.open(loader.encode())
        except RefusedError:
            with self._lock:
                if loader not in self._warned:
                    self._warned.add(loader)
                    log.warning("proxydhcp: a %s client is not answered: %s has no %s "
                                "(nbic netboot --loader)", client.value, self.served.root,
                                loader)
            return None
        os.close(served.fd)
        return loader
