"""`nbic serve DIR`: serve a boot directory (see `nbic netboot`) over HTTP
and TFTP, and answer PXE clients with ProxyDHCP, until interrupted.

Nothing outside DIR is ever served (nbic.serve.files). Loopback is the
default; with --proxy-dhcp IFACE the default is IFACE's address instead
(HTTP on port 80, TFTP on 69), where the booting machines reach it.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nbic.errors import NbicError, UsageError
from nbic.netboot import IPXE_SCRIPT
from nbic.serve.files import ServedDir
from nbic.serve.httpd import HttpServer
from nbic.serve.proxydhcp import ProxyDhcpServer, interface_address
from nbic.serve.tftpd import TftpServer

log = logging.getLogger("nbic")

HELP = "serve a boot directory over HTTP and TFTP, optionally with ProxyDHCP"

LOOPBACK = "127.0.0.1"
DEFAULT_HTTP_PORT = 8080
PROXY_HTTP_PORT, PROXY_TFTP_PORT = 80, 69


class _Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class ServeConfig:
    directory: Path
    http: tuple[str, int] | None
    tftp: tuple[str, int] | None
    proxy_dhcp: str | None = None  # interface


def parse_address(text: str, default_host: str = LOOPBACK) -> tuple[str, int]:
    """ADDR:PORT, :PORT or PORT (port 0: any free port)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
        address = str(ipaddress.IPv4Address(host or default_host))
    except ValueError:
        raise UsageError(f"{text!r} is not ADDR:PORT (an IPv4 address and a port)") from None
    return address, number


def _listening(what: str, address: tuple[str, int], make):
    try:
        return make()
    except OSError as exc:
        why = "needs root or CAP_NET_BIND_SERVICE" if exc.errno in (errno.EACCES, errno.EPERM) \
            else exc.strerror
        raise NbicError(f"cannot serve {what} on {address[0]}:{address[1]}: {why}") from None


def _ipxe_bootfile(config: ServeConfig, http: HttpServer | None, tftp: TftpServer | None,
                   server_ip: str) -> str:
    """The URL iPXE clients get: the script over HTTP (else TFTP) at an address
    they reach."""
    service, scheme = (http, "http") if http is not None else (tftp, "tftp")
    assert service is not None
    host, port = service.address
    if ipaddress.IPv4Address(host).is_loopback:
        raise UsageError(f"ProxyDHCP clients cannot reach {scheme.upper()} on loopback "
                         f"{host}: serve it on {config.proxy_dhcp}'s address")
    if host == "0.0.0.0":
        host = server_ip
    return f"{scheme}://{host}:{port}/{IPXE_SCRIPT}"


def serve(config: ServeConfig, stop: threading.Event) -> None:
    """Serve until `stop` is set."""
    served = ServedDir(config.directory)
    services: list[_Service] = []
    try:
        http = tftp = None
        if config.http is not None:
            http = _listening("HTTP", config.http, lambda: HttpServer(served, config.http))
            services.append(http)
        if config.tftp is not None:
            tftp = _listening("TFTP", config.tftp, lambda: TftpServer(served, config.tftp))
            services.append(tftp)
        if config.proxy_dhcp is not None:
            server_ip = interface_address(config.proxy_dhcp)
            bootfile = _ipxe_bootfile(config, http, tftp, server_ip)
            services.append(ProxyDhcpServer(served, config.proxy_dhcp, server_ip, bootfile))
        for service in services:
            service.start()
        if http is not None:
            log.info("serving %s over HTTP at http://%s:%d/", served.root, *http.address)
        if tftp is not None:
            log.info("serving %s over TFTP at tftp://%s:%d/", served.root, *tftp.address)
        if config.proxy_dhcp is not None:
            log.info("ProxyDHCP on %s (%s): iPXE clients get %s", config.proxy_dhcp, server_ip,
                     bootfile)
        stop.wait()
    finally:
        for service in reversed(services):
            service.stop()


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    http = parse_address(args.http) if args.http else None
    tftp = parse_address(args.tftp) if args.tftp else None
    if args.proxy_dhcp and not (http or tftp):
        server_ip = interface_address(args.proxy_dhcp)
        http, tftp = (server_ip, PROXY_HTTP_PORT), (server_ip, PROXY_TFTP_PORT)
    elif not (http or tftp):
        http = (LOOPBACK, DEFAULT_HTTP_PORT)
    return ServeConfig(directory=args.directory, http=http, tftp=tftp,
                       proxy_dhcp=args.proxy_dhcp)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, metavar="DIR",
                        help="directory to serve (e.g. made by nbic netboot)")
    parser.add_argument("--http", metavar="ADDR:PORT",
                        help=f"serve HTTP here (default, when neither --http nor --tftp is "
                        f"given: {LOOPBACK}:{DEFAULT_HTTP_PORT}; port 0: any free port)")
    parser.add_argument("--tftp", metavar="ADDR:PORT",
                        help="serve TFTP here (e.g. 0.0.0.0:69)")
    parser.add_argument("--proxy-dhcp", metavar="IFACE",
                        help="answer PXE clients on IFACE with boot files (never addresses); "
                        f"without --http/--tftp, serve both on IFACE's address (ports "
                        f"{PROXY_HTTP_PORT} and {PROXY_TFTP_PORT}); needs root")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT, SIGTERM or SIGHUP; exit 0."""
    config = config_from_args(args)
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in signals}
    try:
        serve(config, stop)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    log.info("stopped")
    return 0
