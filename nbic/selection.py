"""The selection: every option that decides what goes into an image, in one
frozen, JSON-serialisable object.

It is built once on the host, from the command line (or a recipe), and
carried to the in-container agent as it is (`nbic.serial`), so `pack`, `run`,
`verify` and `build` all read the same fields. The closure (nbic.closure)
turns a selection plus a rootfs (and, for `run`, what the session used) into
the image's entries.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nbic.cpio.archive import source_date_epoch
from nbic.cpio.spec import SpecItem, parse_spec
from nbic.devices import DeviceNode, parse_device
from nbic.errors import NbicError, SpecError, UsageError

if TYPE_CHECKING:
    import argparse  # annotations only: the agent never parses a command line
    from pathlib import Path  # the agent reads no lists: pathlib is 3 ms of its start


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
    """The paths of one file list (--files-from)."""

    name: str  # where it was read from, for the report
    paths: tuple[str, ...]


@dataclass(frozen=True)
class SpecList:
    """The lines of one gen_init_cpio spec list (--spec)."""

    name: str
    items: tuple[SpecItem, ...]


@dataclass(frozen=True)
class Selection:
    """Every option that decides what goes into an image."""

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


def read_file_list(path: str, base: Path | None = None) -> FileList:
    """Paths one per line; blank lines and `#` comments are skipped. A relative
    `path` is read from `base` (a recipe's directory) when given."""
    try:
        text = sys.stdin.read() if path == "-" else _located(path, base).read_text(
            encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise NbicError(f"cannot read file list {path}: {exc.strerror}") from None
    paths = tuple(line.strip() for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#"))
    return FileList(path, paths)


def read_spec_list(path: str, base: Path | None = None) -> SpecList:
    """A gen_init_cpio spec list. With `base`, the list and the relative `file`
    locations in it are found from there (a recipe's directory)."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else _located(path, base).read_bytes()
    except OSError as exc:
        raise NbicError(f"cannot read spec list {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: not UTF-8 (byte {exc.start})") from None
    spec_list = SpecList(path, tuple(parse_spec(text, source=path, env=os.environ)))
    return spec_list if base is None else relocated_spec(spec_list, lambda location: str(
        _located(location, base)))


def _located(path: str, base: Path | None) -> Path:
    from pathlib import Path

    return Path(path) if base is None else base / path


def relocated_spec(spec_list: SpecList, move: Callable[[str], str]) -> SpecList:
    """The spec list with every `file` location passed through `move`."""
    return replace(spec_list, items=tuple(
        replace(item, location=move(item.location),
                root=None if item.root is None else move(item.root))
        if item.location is not None else item for item in spec_list.items))


def relocated(selection: Selection, move: Callable[[str], str]) -> Selection:
    """The selection with the host paths its spec lists read passed through `move`
    (a lock keeps them relative to its recipe, so that it holds on any machine)."""
    return replace(selection, spec_lists=tuple(relocated_spec(spec_list, move)
                                               for spec_list in selection.spec_lists))


@dataclass(frozen=True)
class Option:
    """One option that decides what goes into an image: `--NAME` on the command
    line and `NAME` in a recipe's [selection] table, one definition for both."""

    name: str
    help: str
    metavar: str | None = None  # None: a flag
    repeatable: bool = False  # a list in a recipe
    several: bool = False  # one option takes several values (--modules a b)

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def check(self, value: Any, where: str) -> None:
        """A recipe's value has the type the command line would give."""
        if self.metavar is None:
            fits, what = isinstance(value, bool), "true or false"
        elif self.repeatable:
            fits = isinstance(value, list | tuple) and all(isinstance(item, str)
                                                            for item in value)
            what = "a list of strings"
        else:
            fits, what = value is None or isinstance(value, str), "a string"
        if not fits:
            raise UsageError(f"{where}{self.name}: must be {what}")


OPTIONS = (
    Option("files-from", "paths to include, one per line (# comments); repeatable",
           "LIST", repeatable=True),
    Option("spec", "a gen_init_cpio spec list to add (file locations are host paths; ${VAR} "
           "expands; below ${NBIC_ROOT} no symlink is followed); repeatable", "LIST",
           repeatable=True),
    Option("include", "also include rootfs paths matching GLOB (e.g. '/etc/ssl/*')", "GLOB",
           repeatable=True),
    Option("exclude", "leave out rootfs paths matching GLOB", "GLOB", repeatable=True),
    Option("include-bin", "a program of the rootfs with everything its ELF headers need "
           "(loader, libraries by RUNPATH and ld.so.conf); repeatable", "PATH",
           repeatable=True),
    Option("dev", "add a device node: a known name (ttyS0, zero, loop0, ...) or "
           "PATH:c|b:MAJOR:MINOR[:MODE]; /dev/console and /dev/null are always there", "DEV",
           repeatable=True),
    Option("modules", "kernel modules of the rootfs (names, or globs over module paths such "
           "as 'drivers/net/ethernet/intel/*') with what modules.dep says they need, their "
           "firmware and the module index; repeatable", "NAME", repeatable=True, several=True),
    Option("kernel-release", "the release under /lib/modules to take --modules from "
           "(default: the only one there)", "KVER"),
    Option("init", "program or script in the rootfs to boot as /init (default: the rootfs's "
           "/init, else its /chroot); 'none' for an image without /init or boot entries, "
           "to concatenate to another", "PATH|none"),
    Option("strict", "a listed path missing from the rootfs is an error"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that decide what goes into an image (pack, run, build's recipes)."""
    for option in OPTIONS:
        if option.metavar is None:
            parser.add_argument(f"--{option.name}", action="store_true", help=option.help)
        elif option.repeatable:
            parser.add_argument(f"--{option.name}", metavar=option.metavar,
                                action="extend" if option.several else "append",
                                nargs="+" if option.several else None, default=[],
                                help=option.help)
        else:
            parser.add_argument(f"--{option.name}", metavar=option.metavar, help=option.help)


def from_args(args: argparse.Namespace, *, verify: Verify = Verify.OFF) -> Selection:
    return from_mapping({option.name: getattr(args, option.dest) for option in OPTIONS},
                        verify=verify, epoch=source_date_epoch())


def from_mapping(values: Mapping[str, Any], *, verify: Verify = Verify.OFF,
                 epoch: int | None = None, base: Path | None = None,
                 where: str = "") -> Selection:
    """The selection from option values by their names (`files-from`, `dev`, ...),
    as the command line or a recipe's [selection] table gives them; `base` is
    where a recipe's relative list files are; `where` prefixes error messages."""
    options = {option.name: option for option in OPTIONS}
    for name, value in values.items():
        if name not in options:
            raise UsageError(f"{where}{name}: unknown key (known: {', '.join(options)})")
        options[name].check(value, where)
    files_from, spec = values.get("files-from", ()), values.get("spec", ())
    if [*files_from, *spec].count("-") > 1:
        raise UsageError("standard input can carry only one list")
    init = values.get("init")
    if init == "none":
        init_mode, init_path = InitMode.NONE, None
    elif init:
        init_mode, init_path = InitMode.PATH, init
    else:
        init_mode, init_path = InitMode.AUTO, None
    return Selection(
        file_lists=tuple(read_file_list(path, base) for path in files_from),
        spec_lists=tuple(read_spec_list(path, base) for path in spec),
        include=tuple(values.get("include", ())), exclude=tuple(values.get("exclude", ())),
        binaries=tuple(values.get("include-bin", ())),
        devices=tuple(parse_device(text) for text in values.get("dev", ())),
        modules=tuple(values.get("modules", ())), kernel_release=values.get("kernel-release"),
        init_mode=init_mode, init_path=init_path, strict=bool(values.get("strict", False)),
        verify=verify, epoch=epoch)
