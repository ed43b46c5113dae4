"""--modules: kernel modules, what modules.dep says they need, their firmware and
the index files, from a rootfs shaped like Debian's (modules built here with
gcc as ELF objects with a real .modinfo section)."""

import subprocess
from pathlib import Path

import pytest
from rootfs_factory import make_rootfs

from nbic.closure import plan
from nbic.errors import RootfsError, UsageError
from nbic.modules import closure, kernel_image, module_name
from nbic.selection import InitMode, Selection
from nbic.tree import DirTree

KVER = "6.1.0-99-amd64"
NET = "kernel/drivers/net/ethernet/intel"


def module(path, tmp_path, *modinfo: str):
    source = tmp_path / "module.c"
    source.write_text("".join(
        f'__attribute__((section(".modinfo"), used)) static const char m{index}[] = "{text}";\n'
        for index, text in enumerate(modinfo)) + "int init_module(void) { return 0; }\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-c", "-o", str(path), str(source)], check=True)


@pytest.fixture
def tree(tmp_path):
    root = make_rootfs(tmp_path / "rootfs")
    base = root / "usr/lib/modules" / KVER
    module(base / f"{NET}/e1000/e1000.ko", tmp_path, "license=GPL", "firmware=e1000/fw.bin",
           "firmware=e1000/absent.bin")
    module(base / f"{NET}/e1000e/e1000e.ko", tmp_path, "license=GPL")
    module(base / "kernel/drivers/net/mii.ko", tmp_path, "license=GPL")
    module(base / "kernel/fs/ext4/ext4.ko", tmp_path, "license=GPL")
    (base / "modules.dep").write_text(
        f"{NET}/e1000/e1000.ko: kernel/drivers/net/mii.ko\n"
        f"{NET}/e1000e/e1000e.ko:\nkernel/drivers/net/mii.ko:\nkernel/fs/ext4/ext4.ko:\n")
    (base / "modules.builtin").write_text("kernel/drivers/block/loop.ko\n")
    for index in ("modules.alias", "modules.dep.bin", "modules.order"):
        (base / index).write_text(index)
    (root / "usr/lib/firmware/e1000").mkdir(parents=True)
    (root / "usr/lib/firmware/e1000/fw.bin").write_bytes(b"firmware")
    return DirTree(root)


def test_a_module_brings_its_dependencies_firmware_and_the_index(tree):
    found = closure(tree, ("e1000",), None)
    base = f"/lib/modules/{KVER}"
    paths = {needed.path: needed.why for needed in found.needed}
    assert f"{base}/{NET}/e1000/e1000.ko" in paths
    assert paths[f"{base}/kernel/drivers/net/mii.ko"].endswith("needed by e1000 (modules.dep)")
    assert paths["/lib/firmware/e1000/fw.bin"] == "firmware of e1000"
    assert {f"{base}/modules.dep", f"{base}/modules.alias", f"{base}/modules.dep.bin"} <= set(paths)
    assert f"{base}/kernel/fs/ext4/ext4.ko" not in paths
    assert any("e1000/absent.bin" in warning for warning in found.warnings)


def test_globs_over_module_paths_and_builtin_names(tree):
    found = closure(tree, ("drivers/net/ethernet/intel/*",), None)
    names = {module_name(needed.path) for needed in found.needed if needed.path.endswith(".ko")}
    assert names == {"e1000", "e1000e", "mii"}
    assert "built into the kernel" in closure(tree, ("loop",), KVER).warnings[0]
    with pytest.raises(RootfsError, match="no such module"):
        closure(tree, ("nope",), None)
    with pytest.raises(RootfsError, match=r"--kernel-release 5\.10"):
        closure(tree, ("e1000",), "5.10")


def test_several_releases_need_a_choice(tree):
    (Path(tree.root) / "usr/lib/modules/6.1.0-98-amd64").mkdir()
    with pytest.raises(UsageError, match="--kernel-release"):
        closure(DirTree(tree.root), ("e1000",), None)


def test_modules_go_into_the_image_through_the_selection(tree):
    image = plan(tree, Selection(modules=("e1000",), init_mode=InitMode.NONE))
    assert f"usr/lib/modules/{KVER}/{NET}/e1000/e1000.ko" in image.entries
    assert "usr/lib/firmware/e1000/fw.bin" in image.entries
    assert image.reasons["usr/lib/firmware/e1000/fw.bin"] == \
        "kernel module: firmware of e1000"
    assert image.entries["lib"].linkname == "usr/lib"


def test_the_kernel_of_the_modules_is_the_rootfs_boot_vmlinuz_of_their_release(tree):
    with pytest.raises(RootfsError, match=f"no /boot/vmlinuz-{KVER} in .*install its package"):
        kernel_image(tree, None)
    (Path(tree.root) / "boot").mkdir()
    (Path(tree.root) / "boot" / f"vmlinuz-{KVER}").write_bytes(b"kernel")
    (Path(tree.root) / "boot" / "vmlinuz-5.10.0-1-amd64").write_bytes(b"another kernel")
    assert kernel_image(DirTree(tree.root), None) == (KVER, f"boot/vmlinuz-{KVER}")
