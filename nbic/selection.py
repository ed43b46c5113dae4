"""The selection: every option that decides what goes into an image, in one
frozen, JSON-serialisable object.

It is built once on the host, from the command line (or a recipe), and
carried to the in-container agent as it is (`nbic.serial`), so `pack`, `run`,
`verify` and `build` all read the same fields. The closure (nbic.closure)
turns a selection plus a rootfs (and, for `run`, what the session used) into
the image's entries.
"""

from __future__ import annotations

import argparse
import enum
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nbic.cpio.archive import source_date_epoch
from nbic.cpio.spec import SpecItem, parse_spec
from nbic.devices import DeviceNode, parse_device
from nbic.errors import NbicError, SpecError, UsageError


class InitMode(enum.Enum):
    AUTO = "auto"  # the rootfs's /init, else its /chroot; for `run`, else the session itself
    PATH = "path"  # --init PATH: a program or script in the rootfs
    NONE = "none"  # --init none: no /init and no boot entries (a segment for concatenation)


class Verify(enum.Enum):
    OFF = "off"
    CHECK = "check"  # replay the check on the image alone; a failure fails the run
    FIX = "fix"  # ... and add what the replay missed from the rootfs, then replay again


@dataclass(frozen=True)
class FileList:
    name: str  # where it was read from, for the report
    paths: tuple[str, ...]


@dataclass(frozen=True)
class SpecList:
    name: str
    items: tuple[SpecItem, ...]


@dataclass(frozen=True)
class Selection:
    file_lists: tuple[FileList, ...] = ()
    spec_lists: tuple[SpecList, ...] = ()
    include: tuple[str, ...] = ()  # globs over absolute rootfs paths
    exclude: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()  # --include-bin: programs with their ELF closure
    devices: tuple[DeviceNode, ...] = ()  # --dev, beyond those a boot needs
    modules: tuple[str, ...] = ()  # kernel modules (names or path globs), with their needs
    kernel_release: str | None = None  # whose modules; default: the rootfs's only one
    init_mode: InitMode = InitMode.AUTO
    init_path: str | None = None  # with InitMode.PATH
    strict: bool = False  # a listed path missing from the rootfs is an error
    verify: Verify = Verify.OFF
    epoch: int | None = None  # SOURCE_DATE_EPOCH

    def listed_paths(self) -> Iterator[tuple[str, str]]:
        """(path, list name) for every path of the file lists."""
        for file_list in self.file_lists:
            for path in file_list.paths:
                yield path, file_list.name

    def spec_locations(self) -> list[str]:
        """The distinct host files the spec lists' `file` lines read, in order."""
        seen: dict[str, None] = {}
        for spec_list in self.spec_lists:
            for item in spec_list.items:
                if item.location is not None:
                    seen.setdefault(item.location, None)
        return list(seen)

    def gives_init(self) -> bool:
        return any(item.entry.name == "init" for spec_list in self.spec_lists
                   for item in spec_list.items)


def read_file_list(path: str) -> FileList:
    """Paths one per line; blank lines and `#` comments are skipped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(
            encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise NbicError(f"cannot read file list {path}: {exc.strerror}") from None
    paths = tuple(line.strip() for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#"))
    return FileList(path, paths)


def read_spec_list(path: str) -> SpecList:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise NbicError(f"cannot read spec list {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: not UTF-8 (byte {exc.start})") from None
    return SpecList(path, tuple(parse_spec(text, source=path, env=os.environ)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that decide what goes into an image (pack, run, verify --fix)."""
    parser.add_argument("--files-from", metavar="LIST", action="append", default=[],
                        help="paths to include, one per line (# comments); repeatable")
    parser.add_argument("--spec", metavar="LIST", action="append", default=[],
                        help="a gen_init_cpio spec list to add (file locations are host "
                        "paths; ${VAR} expands; below ${NBIC_ROOT} no symlink is followed); "
                        "repeatable")
    parser.add_argument("--include", metavar="GLOB", action="append", default=[],
                        help="also include rootfs paths matching GLOB (e.g. '/etc/ssl/*')")
    parser.add_argument("--exclude", metavar="GLOB", action="append", default=[],
                        help="leave out rootfs paths matching GLOB")
    parser.add_argument("--include-bin", metavar="PATH", action="append", default=[],
                        help="a program of the rootfs with everything its ELF headers need "
                        "(loader, libraries by RUNPATH and ld.so.conf); repeatable")
    parser.add_argument("--dev", metavar="DEV", action="append", default=[],
                        help="add a device node: a known name (ttyS0, zero, loop0, ...) or "
                        "PATH:c|b:MAJOR:MINOR[:MODE]; /dev/console and /dev/null are "
                        "always there")
    parser.add_argument("--modules", metavar="NAME", action="extend", nargs="+", default=[],
                        help="kernel modules of the rootfs (names, or globs over module "
                        "paths such as 'drivers/net/ethernet/intel/*') with what modules.dep "
                        "says they need, their firmware and the module index; repeatable")
    parser.add_argument("--kernel-release", metavar="KVER",
                        help="the release under /lib/modules to take --modules from "
                        "(default: the only one there)")
    parser.add_argument("--init", metavar="PATH|none",
                        help="program or script in the rootfs to boot as /init (default: "
                        "the rootfs's /init, else its /chroot); 'none' for an image without "
                        "/init or boot entries, to concatenate to another")
    parser.add_argument("--strict", action="store_true",
                        help="a listed path missing from the rootfs is an error")


def from_args(args: argparse.Namespace, *, verify: Verify = Verify.OFF) -> Selection:
    lists = [*args.files_from, *args.spec]
    if lists.count("-") > 1:
        raise UsageError("standard input can carry only one list")
    if args.init == "none":
        init_mode, init_path = InitMode.NONE, None
    elif args.init:
        init_mode, init_path = InitMode.PATH, args.init
    else:
        init_mode, init_path = InitMode.AUTO, None
    return Selection(
        file_lists=tuple(read_file_list(path) for path in args.files_from),
        spec_lists=tuple(read_spec_list(path) for path in args.spec),
        include=tuple(args.include), exclude=tuple(args.exclude),
        binaries=tuple(args.include_bin),
        devices=tuple(parse_device(text) for text in args.dev),
        modules=tuple(args.modules), kernel_release=args.kernel_release,
        init_mode=init_mode, init_path=init_path, strict=args.strict, verify=verify,
        epoch=source_date_epoch())
