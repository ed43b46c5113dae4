"""images/node: a diskless node on Debian's own kernel. Its rootfs (the
Dockerfile: bookworm, linux-image-amd64, busybox-static, kmod) is built with
Docker; a traced session with `--modules e1000` makes the image and
`--kernel-out` takes the kernel from the rootfs's /boot. The image boots in
QEMU with an e1000 NIC on user networking: /init loads the module, gets
10.0.2.15 from QEMU's DHCP, prints it, and serves a page the host reads
through a port forward.
"""

from __future__ import annotations

import io
import socket
import struct
from pathlib import Path

import pytest
from docker_fixtures import TEST_TAG

from nbic.boot import BootConfig, BootOutcome, Fetch, Forward, Nic, boot, format_result
from nbic.cli import main
from nbic.cpio.image import read_entries
from nbic.modules import module_name
from nbic.tools import cat

REPO = Path(__file__).resolve().parent.parent
NODE = REPO / "images" / "node"
ROOTFS_IMAGE = f"nbic-test-node:{TEST_TAG}"
ADDRESS = "10.0.2.15"  # what QEMU's user networking's DHCP gives the one guest
MARKER = f"NBIC-NODE-ADDRESS {ADDRESS}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def node(docker_engine, tmp_path_factory) -> tuple[Path, Path]:
    """The node image and its kernel, as `nbic run` makes them from the recipe's
    rootfs, with the replay check."""
    docker_engine.images.build(path=str(NODE), tag=ROOTFS_IMAGE, rm=True)
    out = tmp_path_factory.mktemp("node")
    image, kernel = out / "node.cpio.zst", out / "node.vmlinuz"
    assert main(["-q", "run", "--rootfs", f"docker:{ROOTFS_IMAGE}",
                 "--script", str(NODE / "session.sh"), "--modules", "e1000", "--verify",
                 "--kernel-out", str(kernel), "-o", str(image)]) == 0
    return image, kernel


def _text(image: Path, name: str) -> str:
    out = io.BytesIO()
    cat(str(image), name, out)
    return out.getvalue().decode()


def test_the_node_holds_only_its_own_modules(node):
    image, kernel = node
    names = {entry.name for entry in read_entries(image)}
    (release,) = {name.split("/")[3] for name in names if name.startswith("usr/lib/modules/")
                  and name.count("/") >= 3}
    base = f"usr/lib/modules/{release}"
    dependencies = {}
    for line in _text(image, f"{base}/modules.dep").splitlines():
        module, _, needs = line.partition(":")
        dependencies[module] = needs.split()
    (e1000,) = [module for module in dependencies if module_name(module) == "e1000"]
    assert {name for name in names if name.endswith(".ko")} == \
        {f"{base}/{module}" for module in [e1000, *dependencies[e1000]]}
    assert {f"{base}/modules.dep", f"{base}/modules.dep.bin", f"{base}/modules.alias.bin",
            f"{base}/modules.builtin.bin"} <= names
    # The kernel is the rootfs's own, of the modules' release: its bzImage header
    # points (at 0x20e, from 0x200) to the version string that begins with it.
    data = kernel.read_bytes()
    assert data[0x202:0x206] == b"HdrS"
    version = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
    assert data[version:].startswith(release.encode() + b" ")


@pytest.mark.boot
def test_the_node_boots_takes_its_address_and_serves_its_page(node):
    image, kernel = node
    port = free_port()
    result = boot(image, BootConfig(
        kernel=kernel, nic=Nic("e1000", (Forward(port, 80),)), expect=(MARKER,),
        fetch=Fetch(f"http://127.0.0.1:{port}/", f"address: {ADDRESS}"), timeout=300))
    print(f"\n{format_result(result, tail_lines=15)}\nmarker {result.markers_seconds:.1f}s, "
          f"page {result.fetch_seconds:.1f}s")  # shown with -s
    assert result.outcome is BootOutcome.PASSED, format_result(result)
    assert "e1000 0000:00:03.0 eth0: Intel(R) PRO/1000 Network Connection" in result.console
    assert f"udhcpc: lease of {ADDRESS} obtained" in result.console
    assert result.page is not None and f"<title>nbic node {ADDRESS}</title>" in result.page
