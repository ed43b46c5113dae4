"""`nbic pack`: an image from a rootfs (directory or tar) and file lists, on
the host, with no container and no root.

The recipe: read the lists, index the rootfs, compute the closure, lay over
any spec-list entries, then write the cpio through the compressor into a
temporary file that is renamed into place.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from nbic.closure import DEFAULT_DEVICES, ClosureConfig, parse_device, select
from nbic.cpio.archive import ArchiveStats, Member, order, source_date_epoch
from nbic.cpio.compress import (
    CompressionSpec,
    compression_for_path,
    parse_compression,
)
from nbic.cpio.entry import Entry, FileType, ancestors
from nbic.cpio.spec import SpecItem, format_spec, parse_spec
from nbic.errors import NbicError, SpecError, UsageError
from nbic.output import atomic_output, write_image
from nbic.tree import Tree, opened_tree

log = logging.getLogger("nbic")

HELP = "build an image from a rootfs directory or tar and file lists, on the host"


@dataclass(frozen=True)
class PackConfig:
    output: str | None
    rootfs: str | None = None
    file_lists: tuple[str, ...] = ()
    spec_lists: tuple[str, ...] = ()
    closure: ClosureConfig = field(default_factory=ClosureConfig)
    compression: CompressionSpec | None = None  # None: by the output's suffix
    epoch: int | None = None
    emit_spec: str | None = None


@dataclass(frozen=True)
class PackResult:
    output: str | None
    stats: ArchiveStats | None
    image_bytes: int | None
    compression: CompressionSpec | None


def read_file_list(path: str) -> list[str]:
    """Paths one per line; blank lines and `#` comments are skipped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(
            encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise NbicError(f"cannot read file list {path}: {exc.strerror}") from None
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def read_spec_list(path: str) -> list[SpecItem]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise NbicError(f"cannot read spec list {path}: {exc.strerror}") from None
    return parse_spec(text, source=path, env=os.environ)


def _host_file(location: str):
    return lambda: open(location, "rb")


@dataclass
class Plan:
    """Every member of an image, and where the bytes of its files are."""

    members: dict[str, Member] = field(default_factory=dict)
    locations: dict[str, str] = field(default_factory=dict)  # as a spec list names them
    from_tree: set[str] = field(default_factory=set)  # files read from the rootfs

    def add(self, member: Member, location: str = "") -> None:
        name = member.entry.name
        self.members[name] = member
        self.from_tree.discard(name)
        if location:
            self.locations[name] = location
        else:
            self.locations.pop(name, None)


def spec_plan(items: Iterable[SpecItem]) -> Plan:
    """Members for spec lines, each file with the location its line names."""
    result = Plan()
    for item in items:
        entry = item.entry
        if entry.type is not FileType.FILE:
            result.add(Member(entry))
            continue
        try:
            info = os.stat(item.location)
        except OSError as exc:
            raise SpecError(f"line {item.line}: {item.location}: {exc.strerror}") from None
        key = ("spec", entry.name) if item.hardlinks else None
        for name in (entry.name, *item.hardlinks):
            file_entry = Entry(name, FileType.FILE, perm=entry.perm, uid=entry.uid,
                               gid=entry.gid, mtime=int(info.st_mtime), size=info.st_size,
                               link_key=key)
            result.add(Member(file_entry, _host_file(item.location)), item.location)
    return result


def plan(tree: Tree | None, wanted: list[str], specs: list[SpecItem], config: ClosureConfig
         ) -> Plan:
    from_spec = spec_plan(specs)
    result = Plan()
    if tree is not None:
        init_provided = config.init_provided or "init" in from_spec.members
        selection = select(tree, wanted, replace(config, init_provided=init_provided))
        for name, entry in selection.entries.items():
            if entry.type is FileType.FILE and name not in selection.synthesized:
                result.add(Member(entry, lambda name=name: tree.open(name)),
                           tree.location(name))
                result.from_tree.add(name)
            else:
                result.add(Member(entry))
    elif wanted:
        raise UsageError("--files-from needs --rootfs to take the files from")
    elif "init" not in from_spec.members:
        log.warning("the spec lists give no /init: the kernel will have nothing to run")
    for name, member in from_spec.members.items():
        result.add(member, from_spec.locations.get(name, ""))
    # The kernel does not create missing parents: an entry under one is lost.
    for name in list(result.members):
        for parent in ancestors(name):
            if parent in result.members:
                continue
            existing = tree.get(parent) if tree is not None else None
            if existing is None or existing.type is not FileType.DIR:
                existing = Entry(parent, FileType.DIR, perm=0o755)
            result.add(Member(existing))
    return result


def emit_spec(image: Plan) -> str:
    """The spec list of what would be packed."""
    return format_spec((member.entry, image.locations.get(member.entry.name, ""))
                       for member in order(image.members.values()))


def pack(config: PackConfig) -> PackResult:
    wanted = [path for list_path in config.file_lists for path in read_file_list(list_path)]
    specs = [item for spec_path in config.spec_lists for item in read_spec_list(spec_path)]
    if config.rootfs is None and not specs:
        raise UsageError("nothing to pack: give --rootfs (with lists) or --spec")
    if config.output is None and config.emit_spec is None:
        raise UsageError("give -o OUTPUT, or --emit-spec FILE")
    if config.rootfs == "-" and ("-" in config.file_lists or "-" in config.spec_lists):
        raise UsageError("standard input cannot carry both the rootfs and a list")

    tree_context = opened_tree(config.rootfs) if config.rootfs else None
    with tree_context or nullcontext() as tree:
        image = plan(tree, wanted, specs, config.closure)
        if config.emit_spec:
            with atomic_output(config.emit_spec) as out:
                out.write(emit_spec(image).encode("utf-8", "surrogateescape"))
        if config.output is None:
            return PackResult(None, None, None, None)
        if tree is not None:
            tree.prefetch(image.from_tree)
        compression = config.compression or compression_for_path(config.output)
        stats, size = write_image(config.output, image.members.values(), compression,
                                  epoch=config.epoch)
    log.info("wrote %s: %d entries, %d bytes of file data, %s bytes as %s", config.output,
             stats.entries, stats.data_bytes, size if size is not None else "?", compression)
    return PackResult(config.output, stats, size, compression)


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """What goes in besides the listed or traced files, and how it is compressed:
    the options `nbic pack` and `nbic run` share."""
    parser.add_argument("--files-from", metavar="LIST", action="append", default=[],
                        help="paths to include, one per line (# comments); repeatable")
    parser.add_argument("--include", metavar="GLOB", action="append", default=[],
                        help="also include rootfs paths matching GLOB (e.g. '/etc/ssl/*')")
    parser.add_argument("--exclude", metavar="GLOB", action="append", default=[],
                        help="leave out rootfs paths matching GLOB")
    parser.add_argument("--dev", metavar="DEV", action="append", default=[],
                        help="add a device node: a known name (ttyS0, zero, loop0, ...) or "
                        "PATH:c|b:MAJOR:MINOR[:MODE]; /dev/console and /dev/null are "
                        "always there")
    parser.add_argument("--init", metavar="PATH",
                        help="program or script in the rootfs to boot as /init (default: "
                        "the rootfs's /init, else its /chroot)")
    parser.add_argument("--strict", action="store_true",
                        help="a listed path missing from the rootfs is an error")
    parser.add_argument("--compress", metavar="NAME[:LEVEL]",
                        help="zstd (default level 19), gzip, xz, lz4 or none; default: by "
                        "the output's suffix (.zst, .gz, .xz, .lz4; else none)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rootfs", metavar="SRC",
                        help="reference rootfs: a directory, a tar (.tar, .tar.gz, .tar.xz, "
                        ".tar.zst) or - for a tar on standard input")
    parser.add_argument("--spec", metavar="LIST", action="append", default=[],
                        help="a gen_init_cpio spec list to add (file locations are host "
                        "paths; ${VAR} expands); repeatable")
    add_selection_arguments(parser)
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="image to write (.cpio, .cpio.zst, .gz, .xz, .lz4; - for stdout)")
    parser.add_argument("--emit-spec", metavar="FILE",
                        help="write the spec list of what would be packed")


def config_from_args(args: argparse.Namespace) -> PackConfig:
    closure = ClosureConfig(
        include=tuple(args.include), exclude=tuple(args.exclude),
        devices=DEFAULT_DEVICES + tuple(parse_device(text) for text in args.dev),
        init=args.init, strict=args.strict)
    return PackConfig(output=args.output, rootfs=args.rootfs,
                      file_lists=tuple(args.files_from), spec_lists=tuple(args.spec),
                      closure=closure,
                      compression=parse_compression(args.compress) if args.compress else None,
                      epoch=source_date_epoch(),
                      emit_spec=args.emit_spec)


def run(args: argparse.Namespace) -> int:
    pack(config_from_args(args))
    return 0
