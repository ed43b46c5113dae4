"""Network boot: QEMU's iPXE booting the bash image from a `nbic netboot`
directory, time from QEMU's start to /init's marker, over `nbic serve` HTTP
against QEMU's own TFTP server; and the HTTP transfer rate of `nbic serve`
against `python3 -m http.server` on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from common import NBIC, REPO, ROOTFS_DIR, Result, need, workdir
from timing import Sample, best_of, run, show

from nbic.boot import BootConfig, BootOutcome, NetBoot, boot, format_result

KERNEL = os.environ.get("NBIC_BENCH_BZIMAGE", "/var/cache/nbic-ci/kernel/vmlinuz")
MARKER = "NBIC-BOOT-OK"  # what images/bash/init prints
TRANSFER_MB = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(argv: list[str], port: int) -> Iterator[None]:
    """A server process, once it accepts connections on `port`."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{show(argv)} did not start listening on {port}")
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(10)


def boot_directory() -> str:
    """The bash demo image (as ci/demo packs it) in a netboot directory."""
    image = workdir("netboot-bash.cpio.zst")
    run([NBIC, "-q", "pack", "--rootfs", ROOTFS_DIR, "--files-from", "images/bash/files.list",
         "--spec", "images/bash/extra.spec", "-o", image], cwd=REPO)
    directory = workdir("netboot")
    run([NBIC, "-q", "netboot", directory, "--kernel", KERNEL, "--image", image,
         "--cmdline", "console=ttyS0 panic=-1"])
    return directory


def time_to_marker(net: NetBoot) -> float:
    result = boot(None, BootConfig(netboot=net, expect=(MARKER,), timeout=300))
    if result.outcome is not BootOutcome.PASSED or result.markers_seconds is None:
        raise RuntimeError(format_result(result))
    return result.markers_seconds


def bench_boot(n: int) -> Result:
    need("qemu-system-x86_64")
    directory = boot_directory()
    tftp = NetBoot.user("boot.ipxe", tftp=directory)
    t_tftp = best_of(lambda: time_to_marker(tftp), n)
    port = free_port()
    with server([NBIC, "serve", directory, "--http", f"127.0.0.1:{port}"], port):
        http = NetBoot.user(f"http://10.0.2.2:{port}/boot.ipxe")
        t_http = best_of(lambda: time_to_marker(http), n)
    initrd = os.path.getsize(os.path.join(directory, "initrd.img"))
    kernel = os.path.getsize(os.path.join(directory, "vmlinuz"))
    return Result(
        "netboot bash image, QEMU start -> /init marker: nbic serve HTTP vs QEMU's TFTP",
        t_http.best, t_tftp.best,
        nbic_cmd=f"nbic serve {directory} --http 127.0.0.1:{port}; qemu ... -netdev "
                 f"user,bootfile=http://10.0.2.2:{port}/boot.ipxe -boot n",
        peer_cmd=f"qemu ... -netdev user,tftp={directory},bootfile=boot.ipxe -boot n",
        notes=[f"best of {n}, no warm-up (each run a fresh QEMU); HTTP {t_http}; "
               f"TFTP {t_tftp}",
               f"kernel {kernel:,} B, initrd {initrd:,} B; QEMU under TCG; the time includes "
               "SeaBIOS, iPXE's DHCP and its prompts"])


def bench_transfer(n: int) -> Result:
    curl = need("curl")
    directory = workdir("http-serve")
    os.makedirs(directory, exist_ok=True)
    name = f"{TRANSFER_MB}M.bin"
    path = os.path.join(directory, name)
    if not os.path.exists(path) or os.path.getsize(path) != TRANSFER_MB << 20:
        with open(path, "wb") as f:
            for _ in range(TRANSFER_MB):
                f.write(os.urandom(1 << 20))

    def fetch(port: int) -> Sample:
        cmd = [curl, "-s", "-f", "-o", "/dev/null", f"http://127.0.0.1:{port}/{name}"]
        run(cmd)  # warm-up: the file in the page cache

        def action() -> None:
            run(cmd)

        return best_of(action, n)

    port = free_port()
    ours = [NBIC, "serve", directory, "--http", f"127.0.0.1:{port}"]
    with server(ours, port):
        t_ours = fetch(port)
    port = free_port()
    theirs = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
              "--directory", directory]
    with server(theirs, port):
        t_theirs = fetch(port)
    rate = TRANSFER_MB / t_ours.best, TRANSFER_MB / t_theirs.best
    return Result(
        f"HTTP GET of a {TRANSFER_MB} MB file on loopback (curl -o /dev/null)",
        t_ours.best, t_theirs.best, nbic_cmd=show(ours), peer_cmd=show(theirs),
        notes=[f"best of {n} after a warm-up; nbic {t_ours}; peer {t_theirs}",
               f"nbic {rate[0]:,.0f} MB/s, python3 -m http.server {rate[1]:,.0f} MB/s"])


def bench(n: int = 3) -> list[Result]:
    return [bench_transfer(n), bench_boot(n)]
