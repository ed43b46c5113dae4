"""`nbic netboot`: lay out a directory that network boot firmware boots from.

    DIR/vmlinuz               the kernel (a bzImage), copied
    DIR/initrd.img            the images, concatenated in the order given
    DIR/boot.ipxe             iPXE script: kernel, initrd, boot (relative names)
    DIR/pxelinux.cfg/default  the same for PXELINUX
    DIR/NAME                  each --loader file (undionly.kpxe, pxelinux.0, ...)

Several images become ONE initrd file rather than one per image: one
transfer, and one name that every loader (iPXE, PXELINUX, GRUB, UEFI HTTP
boot) takes, where a list of initrds is spelt differently by each. The
kernel unpacks concatenated archives in order, later files over earlier ones,
and skips the NUL bytes that pad each image to a 4-byte boundary (an
uncompressed archive must start 4-byte aligned).

The scripts name files relative to themselves, so the same directory boots
over TFTP and HTTP: iPXE resolves a relative name against the script's own
URI, PXELINUX against its TFTP prefix.

Each file is written atomically into DIR and nothing else in DIR is touched:
DIR may be a served TFTP root holding other files. The scripts are written
last, so a client never gets a script naming files not yet written. Files
are opened under DIR's descriptor and never through a symlink, so nothing
is written outside DIR. Output is deterministic; with SOURCE_DATE_EPOCH set,
every file's mtime is that.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nbic.cpio.archive import source_date_epoch
from nbic.cpio.compress import detect
from nbic.cpio.newc import MAGIC_CRC, MAGIC_NEWC, MAGIC_ODC
from nbic.errors import NbicError, UsageError
from nbic.output import atomic_output_at

log = logging.getLogger("nbic")

HELP = "lay out a network boot directory: kernel, initrd, boot.ipxe, pxelinux.cfg/default"

KERNEL = "vmlinuz"
INITRD = "initrd.img"
IPXE_SCRIPT = "boot.ipxe"
PXELINUX_DIR = "pxelinux.cfg"
PXELINUX_CONFIG = "default"

# x86 boot protocol: a bzImage has "HdrS" at this offset (its setup header).
_BZIMAGE_MAGIC_OFFSET = 0x202
_BZIMAGE_MAGIC = b"HdrS"
_ALIGN = 4  # the kernel looks for an uncompressed cpio header at 4-byte offsets
_CHUNK = 1 << 20
# Words iPXE's shell would not pass through to the kernel: it expands ${...},
# starts a comment at a word beginning with #, and splits commands at these.
_IPXE_TERMINATORS = {"||", "&&", ";"}


@dataclass(frozen=True)
class NetbootConfig:
    directory: Path
    kernel: Path
    images: tuple[Path, ...]
    cmdline: str = ""
    loaders: tuple[Path, ...] = ()
    epoch: int | None = None


def ipxe_script(cmdline: str) -> str:
    # initrd= on the command line is how the EFI stub finds the initrd; a
    # BIOS boot gets it from iPXE and the kernel ignores the word.
    args = " ".join(["initrd=" + INITRD, *cmdline.split()])
    return f"#!ipxe\nkernel {KERNEL} {args}\ninitrd {INITRD}\nboot\n"


def pxelinux_config(cmdline: str) -> str:
    append = " ".join(cmdline.split())
    lines = ["DEFAULT nbic", "LABEL nbic", f"  KERNEL {KERNEL}", f"  INITRD {INITRD}"]
    if append:
        lines.append(f"  APPEND {append}")
    return "\n".join(lines) + "\n"


def check_cmdline(cmdline: str) -> None:
    """Refuse what a boot script would not hand to the kernel as written."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in cmdline):
        raise UsageError("--cmdline must be one line without control characters")
    if "${" in cmdline:
        raise UsageError("--cmdline must not contain '${': iPXE would expand it")
    for word in cmdline.split():
        if word.startswith("#") or word in _IPXE_TERMINATORS:
            raise UsageError(f"--cmdline word {word!r} would end the iPXE command")


def _check_kernel(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            f.seek(_BZIMAGE_MAGIC_OFFSET)
            magic = f.read(len(_BZIMAGE_MAGIC))
    except OSError as exc:
        raise NbicError(f"cannot read kernel {path}: {exc.strerror}") from None
    if magic != _BZIMAGE_MAGIC:
        raise UsageError(f"kernel {path} is not a bzImage (network boot loaders load "
                         "bzImages such as /boot/vmlinuz-*, not an ELF vmlinux)")


def _check_image(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise NbicError(f"cannot read image {path}: {exc.strerror}") from None
    if not head.startswith((MAGIC_NEWC, MAGIC_CRC, MAGIC_ODC)) and detect(head) is None:
        raise UsageError(f"image {path} is neither a cpio archive nor compressed data")


def _loader_names(loaders: tuple[Path, ...]) -> list[str]:
    ours = {KERNEL, INITRD, IPXE_SCRIPT, PXELINUX_DIR}
    names = [path.name for path in loaders]
    for path, name in zip(loaders, names, strict=True):
        if name in ours or name.startswith(".") or not name:
            raise UsageError(f"loader {path}: the name {name!r} is not free in the directory")
    if len(set(names)) != len(names):
        raise UsageError("two --loader files have the same name")
    return names


def _copy(source: Path, out: BinaryIO) -> int:
    try:
        with open(source, "rb") as f:
            shutil.copyfileobj(f, out, _CHUNK)
            return f.tell()
    except OSError as exc:
        raise NbicError(f"cannot read {source}: {exc.strerror}") from None


@contextmanager
def _directory(path: Path, *, parent_fd: int | None = None) -> Iterator[int]:
    """DIR (made if missing) open as a descriptor; never through a symlink
    when below an already open directory."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if parent_fd is not None:
        flags |= os.O_NOFOLLOW
    try:
        os.mkdir(path, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise NbicError(f"cannot make directory {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, flags, dir_fd=parent_fd)
    except OSError as exc:
        raise NbicError(f"{path} is not a directory nbic can write: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _finish(dir_fd: int, name: str, epoch: int | None) -> None:
    if epoch is not None:
        os.utime(name, (epoch, epoch), dir_fd=dir_fd, follow_symlinks=False)


def write_netboot(config: NetbootConfig) -> None:
    """Check every input, then write the directory; an error leaves no partial file."""
    check_cmdline(config.cmdline)
    if not config.images:
        raise UsageError("give at least one --image")
    _check_kernel(config.kernel)
    for image in config.images:
        _check_image(image)
    loader_names = _loader_names(config.loaders)
    epoch = config.epoch
    where = str(config.directory)
    with _directory(config.directory) as top:
        with atomic_output_at(top, KERNEL, where=where) as out:
            _copy(config.kernel, out)
        _finish(top, KERNEL, epoch)
        with atomic_output_at(top, INITRD, where=where) as out:
            for index, image in enumerate(config.images):
                size = _copy(image, out)
                if index + 1 < len(config.images):
                    out.write(b"\0" * (-size % _ALIGN))
        _finish(top, INITRD, epoch)
        for source, name in zip(config.loaders, loader_names, strict=True):
            with atomic_output_at(top, name, where=where) as out:
                _copy(source, out)
            _finish(top, name, epoch)
        with _directory(Path(PXELINUX_DIR), parent_fd=top) as pxelinux:
            with atomic_output_at(pxelinux, PXELINUX_CONFIG, where=where) as out:
                out.write(pxelinux_config(config.cmdline).encode())
            _finish(pxelinux, PXELINUX_CONFIG, epoch)
        _finish(top, PXELINUX_DIR, epoch)
        with atomic_output_at(top, IPXE_SCRIPT, where=where) as out:
            out.write(ipxe_script(config.cmdline).encode())
        _finish(top, IPXE_SCRIPT, epoch)
    log.info("wrote %s: %s, %s (%d image%s), %s, %s/%s%s", config.directory, KERNEL, INITRD,
             len(config.images), "" if len(config.images) == 1 else "s", IPXE_SCRIPT,
             PXELINUX_DIR, PXELINUX_CONFIG,
             "".join(f", {name}" for name in loader_names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, metavar="DIR",
                        help="boot directory to write (made if missing; other files in it "
                        "are left alone)")
    parser.add_argument("--kernel", type=Path, required=True,
                        help="kernel to boot: a bzImage (e.g. /boot/vmlinuz-*)")
    parser.add_argument("--image", type=Path, nargs="+", action="extend", required=True,
                        metavar="IMG",
                        help="initramfs image(s), concatenated in this order into initrd.img")
    parser.add_argument("--cmdline", metavar="ARGS", default="",
                        help="kernel command line (e.g. 'console=ttyS0')")
    parser.add_argument("--loader", type=Path, action="append", default=[], metavar="FILE",
                        help="also copy this boot loader into DIR under its own name, e.g. "
                        "/usr/lib/ipxe/undionly.kpxe for PXE ROMs (see nbic serve "
                        "--proxy-dhcp); repeatable")


def run(args: argparse.Namespace) -> int:
    write_netboot(NetbootConfig(
        directory=args.directory, kernel=args.kernel, images=tuple(args.image),
        cmdline=args.cmdline, loaders=tuple(args.loader), epoch=source_date_epoch()))
    return 0
