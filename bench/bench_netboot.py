"""Network boot: QEMU's iPXE booting an image from a `nbic netboot` directory,
time from QEMU's start to /init's marker, over `nbic serve` HTTP against
QEMU's own TFTP server, for the bash demo image (the CI kernel) and the node
image (images/node, on its rootfs's own kernel); the node booted with -kernel
until the host has read its page through a port forward; and the HTTP
transfer rate of `nbic serve` against `python3 -m http.server` on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common import NBIC, REPO, ROOTFS_DIR, Result, need, workdir
from timing import Sample, best_of, run, show

from nbic.boot import (
    BootConfig,
    BootOutcome,
    BootResult,
    Fetch,
    Forward,
    NetBoot,
    Nic,
    boot,
    format_result,
)
from nbic.cpio.image import read_entries

KERNEL = os.environ.get("NBIC_BENCH_BZIMAGE", "/var/cache/nbic-ci/kernel/vmlinuz")
NODE_ADDRESS = "10.0.2.15"  # QEMU's user networking's DHCP gives the one guest this
TRANSFER_MB = 200


@dataclass(frozen=True)
class Bootable:
    name: str
    kernel: str  # a bzImage: what PXE loaders load
    image: str
    marker: str  # what its /init prints when it is up


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


def bash_image() -> Bootable:
    """The bash demo image, as ci/demo packs it, on the CI kernel."""
    image = workdir("netboot-bash.cpio.zst")
    run([NBIC, "-q", "pack", "--rootfs", ROOTFS_DIR, "--files-from", "images/bash/files.list",
         "--spec", "images/bash/extra.spec", "-o", image], cwd=REPO)
    return Bootable("bash", KERNEL, image, "NBIC-BOOT-OK")


def node_image() -> Bootable:
    """images/node as `nbic build` makes it (its rootfs built with Docker, a traced
    session with its modules, its rootfs's own kernel), from a copy of the recipe:
    a build writes its lock beside it."""
    recipe = workdir("recipes", "node")  # the directory's name is the image's
    shutil.rmtree(recipe, ignore_errors=True)
    shutil.copytree(os.path.join(REPO, "images", "node"), recipe)
    out = workdir("node-build")
    run([NBIC, "-q", "build", recipe, "-o", out, "--no-boot"])
    return Bootable("node", os.path.join(out, "node.vmlinuz"),
                    os.path.join(out, "node.cpio.zst"), f"NBIC-NODE-ADDRESS {NODE_ADDRESS}")


def boot_directory(bootable: Bootable) -> str:
    directory = workdir(f"netboot-{bootable.name}")
    run([NBIC, "-q", "netboot", directory, "--kernel", bootable.kernel, "--image",
         bootable.image, "--cmdline", "console=ttyS0 panic=-1"])
    return directory


def checked(config: BootConfig, image: Path | None = None) -> BootResult:
    result = boot(image, config)
    if result.outcome is not BootOutcome.PASSED or result.markers_seconds is None:
        raise RuntimeError(format_result(result))
    return result


def time_to_marker(net: NetBoot, marker: str) -> float:
    result = checked(BootConfig(netboot=net, expect=(marker,), timeout=300))
    assert result.markers_seconds is not None
    return result.markers_seconds


def bench_boot(bootable: Bootable, n: int) -> Result:
    need("qemu-system-x86_64")
    directory = boot_directory(bootable)
    tftp = NetBoot.user("boot.ipxe", tftp=Path(directory))
    t_tftp = best_of(lambda: time_to_marker(tftp, bootable.marker), n)
    port = free_port()
    with server([NBIC, "serve", directory, "--http", f"127.0.0.1:{port}"], port):
        http = NetBoot.user(f"http://10.0.2.2:{port}/boot.ipxe")
        t_http = best_of(lambda: time_to_marker(http, bootable.marker), n)
    initrd = os.path.getsize(os.path.join(directory, "initrd.img"))
    kernel = os.path.getsize(os.path.join(directory, "vmlinuz"))
    return Result(
        f"netboot {bootable.name} image, QEMU start -> /init marker: nbic serve HTTP vs "
        "QEMU's TFTP",
        t_http.best, t_tftp.best,
        nbic_cmd=f"nbic serve {directory} --http 127.0.0.1:{port}; qemu ... -netdev "
                 f"user,bootfile=http://10.0.2.2:{port}/boot.ipxe -boot n",
        peer_cmd=f"qemu ... -netdev user,tftp={directory},bootfile=boot.ipxe -boot n",
        notes=[f"best of {n}, no warm-up (each run a fresh QEMU); HTTP {t_http}; "
               f"TFTP {t_tftp}",
               f"kernel {kernel:,} B, initrd {initrd:,} B; QEMU under TCG; the time includes "
               "SeaBIOS, iPXE's DHCP and its prompts"])


def bench_node_page(node: Bootable, n: int) -> Result:
    """The node booted with -kernel and an e1000 NIC: until its marker, and until the
    host has read its page through the port forward."""
    need("qemu-system-x86_64")
    markers, pages = Sample(), Sample()
    for _ in range(n):
        port = free_port()
        result = checked(BootConfig(
            kernel=Path(node.kernel), nic=Nic("e1000", (Forward(port, 80),)),
            expect=(node.marker,), timeout=300,
            fetch=Fetch(f"http://127.0.0.1:{port}/", f"address: {NODE_ADDRESS}")),
            Path(node.image))
        assert result.markers_seconds is not None and result.fetch_seconds is not None
        markers.runs.append(result.markers_seconds)
        pages.runs.append(result.fetch_seconds)
    modules = [entry.name for entry in read_entries(node.image) if entry.name.endswith(".ko")]
    return Result(
        "node image, QEMU -kernel with an e1000 NIC: start -> page read through the "
        "port forward (no peer)",
        pages.best, None,
        nbic_cmd=f"nbic boot {node.image} --kernel {node.kernel} --hostfwd PORT:80 "
                 f"--expect '{node.marker}' --fetch http://127.0.0.1:PORT/",
        notes=[f"best of {n}; page {pages}; marker {markers}",
               f"image {os.path.getsize(node.image):,} B (zstd), "
               f"{len(modules)} module(s): {', '.join(sorted(modules))}; kernel "
               f"{os.path.getsize(node.kernel):,} B (the rootfs's /boot)"])


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
    node = node_image()
    return [bench_transfer(n), bench_boot(bash_image(), n), bench_boot(node, n),
            bench_node_page(node, n)]
