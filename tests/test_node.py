"""images/node: a diskless node on Debian's own kernel, built by `nbic build`
from its recipe. The rootfs (bookworm, linux-image-amd64, busybox-static,
kmod) is built with Docker; the session with `modules = ["e1000"]` makes the
image and the build writes the rootfs's kernel of the modules' release beside
it. The boot check boots that kernel in QEMU with an e1000 NIC on user
networking: /init loads the module, gets 10.0.2.15 from QEMU's DHCP, prints
it, and serves a page the host reads through a port forward.

The recipe is copied first: a build writes its lock beside it, and a test
must not rewrite the repository's lock.
"""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import pytest

from nbic import lock
from nbic.boot import BootOutcome
from nbic.build import BuildConfig, Built, build
from nbic.cpio.image import read_entries
from nbic.modules import module_name
from nbic.tools.cat import cat

REPO = Path(__file__).resolve().parent.parent
ADDRESS = "10.0.2.15"  # what QEMU's user networking's DHCP gives the one guest


@pytest.fixture(scope="module")
def node(docker_engine, tmp_path_factory) -> tuple[Path, Built]:
    """The recipe's copy and its build (session, replay check, boot check, lock)."""
    work = tmp_path_factory.mktemp("node")
    recipe = work / "node"
    shutil.copytree(REPO / "images" / "node", recipe)
    return recipe, build(recipe, BuildConfig(output_dir=work / "out"))


def _text(image: Path, name: str) -> str:
    out = io.BytesIO()
    cat(str(image), name, out)
    return out.getvalue().decode()


def test_the_node_holds_only_its_own_modules_and_its_kernel_is_theirs(node):
    _, built = node
    names = {entry.name for entry in read_entries(built.image)}
    (release,) = {name.split("/")[3] for name in names if name.startswith("usr/lib/modules/")
                  and name.count("/") >= 3}
    base = f"usr/lib/modules/{release}"
    dependencies = {}
    for line in _text(built.image, f"{base}/modules.dep").splitlines():
        module, _, needs = line.partition(":")
        dependencies[module] = needs.split()
    (e1000,) = [module for module in dependencies if module_name(module) == "e1000"]
    assert {name for name in names if name.endswith(".ko")} == \
        {f"{base}/{module}" for module in [e1000, *dependencies[e1000]]}
    assert {f"{base}/modules.dep", f"{base}/modules.dep.bin", f"{base}/modules.alias.bin",
            f"{base}/modules.builtin.bin"} <= names
    # OUTDIR/NAME.vmlinuz is the rootfs's kernel of the modules' release: its
    # bzImage header points (at 0x20e, from 0x200) to a version string that
    # begins with the release.
    kernel = built.image.with_name("node.vmlinuz").read_bytes()
    assert kernel[0x202:0x206] == b"HdrS"
    version = struct.unpack_from("<H", kernel, 0x20E)[0] + 0x200
    assert kernel[version:].startswith(release.encode() + b" ")


@pytest.mark.boot
def test_the_node_boots_takes_its_address_and_serves_its_page(node):
    _, built = node
    result = built.boot
    assert result is not None and result.outcome is BootOutcome.PASSED, result
    print(f"\nimage {built.image_bytes:,} B; marker {result.markers_seconds:.1f}s, "
          f"page {result.fetch_seconds:.1f}s")  # shown with -s
    assert "e1000 0000:00:03.0 eth0: Intel(R) PRO/1000 Network Connection" in result.console
    assert f"udhcpc: lease of {ADDRESS} obtained" in result.console
    assert f"NBIC-NODE-ADDRESS {ADDRESS}" in result.console
    assert result.page is not None and f"<title>nbic node {ADDRESS}</title>" in result.page
    assert result.reason.endswith(f"answered with 'address: {ADDRESS}'")


def test_a_locked_rebuild_gives_the_same_image_and_kernel(node, tmp_path):
    recipe, built = node
    again = build(recipe, BuildConfig(output_dir=tmp_path, locked=True, boot=False))
    assert again.image.read_bytes() == built.image.read_bytes()
    assert (tmp_path / "node.vmlinuz").read_bytes() == \
        built.image.with_name("node.vmlinuz").read_bytes()
    assert lock.load(recipe / "nbic.lock").image.sha256 == lock.sha256_file(again.image)
