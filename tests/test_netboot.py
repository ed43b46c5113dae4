"""`nbic netboot`: the boot directory's layout, its determinism, what it
refuses, and QEMU's own PXE ROM (iPXE) booting it over QEMU's built-in TFTP.

The QEMU boots use the bzImage (PXE loads bzImages, not an ELF vmlinux) and
images that `nbic pack` makes from spec lists around the static test /init.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from boot_helpers import CMDLINE, netboot_dir, two_images

from nbic.boot import BootConfig, BootOutcome, NetBoot, boot, format_result
from nbic.cli import main
from nbic.cpio.image import read_entries
from nbic.errors import NbicError, UsageError
from nbic.netboot import (
    INITRD,
    IPXE_SCRIPT,
    KERNEL,
    NetbootConfig,
    check_cmdline,
    ipxe_script,
    pxelinux_config,
    write_netboot,
)
from nbic.output import atomic_output_at

MARKER = "NBIC-NETBOOT-MARKER"
EPOCH = 1_700_000_000


def fake_bzimage(path: Path) -> Path:
    """Enough of a bzImage for the layout: the setup header's magic."""
    data = bytearray(b"MZ" + bytes(0x300))
    data[0x202:0x206] = b"HdrS"
    path.write_bytes(bytes(data))
    return path


def listing(directory: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every path below `directory`: (content or None for a directory, mode, mtime)."""
    result = {}
    for path in sorted(directory.rglob("*")):
        info = path.lstat()
        content = None if path.is_dir() else path.read_bytes()
        result[str(path.relative_to(directory))] = (content, info.st_mode, int(info.st_mtime))
    return result


# --- layout -------------------------------------------------------------------


def test_layout_is_deterministic_with_source_date_epoch(tmp_path, monkeypatch):
    kernel = fake_bzimage(tmp_path / "bzImage")
    images = [tmp_path / "a.cpio.gz", tmp_path / "b.cpio"]
    images[0].write_bytes(gzip.compress(b"070701" + bytes(100), mtime=0))
    images[1].write_bytes(b"070701" + b"x" * 33)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))

    def netboot(directory: Path) -> int:
        return main(["-q", "netboot", str(directory), "--kernel", str(kernel),
                     "--image", *map(str, images), "--cmdline", CMDLINE])

    assert netboot(tmp_path / "one") == 0
    os.utime(kernel, (EPOCH + 99, EPOCH + 99))  # the inputs' times do not matter
    assert netboot(tmp_path / "two") == 0
    one, two = listing(tmp_path / "one"), listing(tmp_path / "two")
    assert one == two
    assert sorted(one) == ["boot.ipxe", "initrd.img", "pxelinux.cfg", "pxelinux.cfg/default",
                           "vmlinuz"]
    assert {mtime for _, _, mtime in one.values()} == {EPOCH}
    assert one["vmlinuz"][0] == kernel.read_bytes()
    assert one["boot.ipxe"][0] == ipxe_script(CMDLINE).encode()


def test_scripts_name_files_relative_to_themselves():
    assert ipxe_script("console=ttyS0  quiet") == (
        "#!ipxe\n"
        "kernel vmlinuz initrd=initrd.img console=ttyS0 quiet\n"
        "initrd initrd.img\n"
        "boot\n")
    assert pxelinux_config("console=ttyS0") == (
        "DEFAULT nbic\nLABEL nbic\n  KERNEL vmlinuz\n  INITRD initrd.img\n"
        "  APPEND console=ttyS0\n")
    assert "APPEND" not in pxelinux_config("")


def test_images_are_concatenated_in_order_each_padded_to_four_bytes(tmp_path, static_init):
    first, second = two_images(tmp_path, static_init, MARKER)
    assert first.stat().st_size % 4, "the test needs a first image of unaligned length"
    write_netboot(NetbootConfig(tmp_path / "boot", fake_bzimage(tmp_path / "k"),
                                (first, second)))
    data = (tmp_path / "boot" / INITRD).read_bytes()
    pad = -first.stat().st_size % 4
    assert data == first.read_bytes() + b"\0" * pad + second.read_bytes()
    names = [entry.name for entry in read_entries(tmp_path / "boot" / INITRD)]
    assert "init" in names and "marker" in names


@pytest.mark.parametrize("cmdline", ["a\nb", "root=${x}", "quiet #comment", "a || b", "a ; b",
                                     "a && b", "tab\there"])
def test_command_lines_a_boot_script_would_change_are_refused(cmdline):
    with pytest.raises(UsageError):
        check_cmdline(cmdline)


def test_quotes_and_equals_pass_through():
    check_cmdline('console=ttyS0 init=/sbin/init foo="a b" path=$HOME a#b')


def test_refused_inputs_write_nothing(tmp_path):
    good_kernel = fake_bzimage(tmp_path / "bzImage")
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF" + bytes(0x300))
    image = tmp_path / "image.cpio"
    image.write_bytes(b"070701" + bytes(10))
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an image at all")
    target = tmp_path / "boot"
    cases = [
        (dict(kernel=vmlinux, images=(image,)), "not a bzImage"),
        (dict(kernel=good_kernel, images=(junk,)), "neither a cpio archive"),
        (dict(kernel=good_kernel, images=()), "at least one"),
        (dict(kernel=good_kernel, images=(image,), loaders=(tmp_path / "x" / IPXE_SCRIPT,)),
         "not free"),
        (dict(kernel=good_kernel, images=(image,), cmdline="a\nb"), "one line"),
    ]
    for fields, message in cases:
        with pytest.raises(UsageError, match=message):
            write_netboot(NetbootConfig(directory=target, **fields))
        assert not target.exists()
    assert main(["-q", "netboot", str(target), "--kernel", str(vmlinux),
                 "--image", str(image)]) == 1


def test_other_files_stay_and_symlinks_are_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me\n")
    target = tmp_path / "boot"
    target.mkdir()
    (target / "per-node.ipxe").write_text("#!ipxe\n")
    (target / KERNEL).symlink_to(outside / "precious")
    image = tmp_path / "image.cpio"
    image.write_bytes(b"070701" + bytes(10))
    loader = tmp_path / "undionly.kpxe"
    loader.write_bytes(b"loader")
    write_netboot(NetbootConfig(target, fake_bzimage(tmp_path / "k"), (image,),
                                loaders=(loader,)))
    assert (outside / "precious").read_text() == "keep me\n"
    assert not (target / KERNEL).is_symlink()
    assert (target / "per-node.ipxe").read_text() == "#!ipxe\n"
    assert (target / "undionly.kpxe").read_bytes() == b"loader"
    assert not [p for p in target.rglob(".*")], "a temporary file was left behind"


def test_a_symlinked_pxelinux_dir_is_not_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "boot"
    target.mkdir()
    (target / "pxelinux.cfg").symlink_to(outside)
    image = tmp_path / "image.cpio"
    image.write_bytes(b"070701" + bytes(10))
    with pytest.raises(NbicError, match=r"pxelinux\.cfg"):
        write_netboot(NetbootConfig(target, fake_bzimage(tmp_path / "k"), (image,)))
    assert list(outside.iterdir()) == []


def test_an_interrupted_write_leaves_no_file(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(KeyboardInterrupt), atomic_output_at(fd, "out") as stream:
            stream.write(b"half")
            raise KeyboardInterrupt
    finally:
        os.close(fd)
    assert list(tmp_path.iterdir()) == []


# --- QEMU's PXE ROM over QEMU's TFTP ---------------------------------------------


def _netboot_qemu(net: NetBoot, timeout: float = 240.0):
    result = boot(None, BootConfig(netboot=net, expect=(MARKER,), timeout=timeout))
    print(f"\n{format_result(result, tail_lines=15)}")  # shown with -s
    return result


@pytest.mark.boot
def test_qemu_pxe_rom_boots_the_directory_over_qemu_tftp(tmp_path, bzimage, static_init):
    directory = netboot_dir(tmp_path, bzimage, static_init, MARKER)
    result = _netboot_qemu(NetBoot.user(IPXE_SCRIPT, tftp=directory))
    assert result.outcome is BootOutcome.PASSED, format_result(result)
    assert result.init_exit == 0
    # iPXE fetched the script by TFTP, and the files it names relative to it.
    for fetched in ("tftp://10.0.2.2/boot.ipxe... ok", "vmlinuz... ok", "initrd.img... ok"):
        assert fetched in result.console


@pytest.mark.boot
def test_qemu_pxe_rom_without_a_boot_script_fails_promptly(tmp_path, bzimage, static_init):
    directory = netboot_dir(tmp_path, bzimage, static_init, MARKER)
    (directory / IPXE_SCRIPT).unlink()
    result = _netboot_qemu(NetBoot.user(IPXE_SCRIPT, tftp=directory), timeout=240.0)
    assert result.outcome is BootOutcome.FAILED, format_result(result)
    assert result.reason == ("the firmware found no bootable device (iPXE: "
                             "tftp://10.0.2.2/boot.ipxe... No such file or directory)")
    assert result.seconds < 60, "QEMU should end at the firmware's failure, not the timeout"
