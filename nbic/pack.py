"""`nbic pack`: an image from a rootfs (directory or tar) and a selection, on the
host, with no container and no root.

The recipe: read the selection, index the rootfs, compute the closure, then
write the cpio through the compressor into a temporary file that is renamed
into place.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from nbic import progress
from nbic import selection as selections
from nbic.closure import ImagePlan, Origin, plan
from nbic.cpio.archive import ArchiveStats, Member, order
from nbic.cpio.compress import CompressionSpec
from nbic.cpio.entry import FileType
from nbic.cpio.spec import format_spec
from nbic.errors import UsageError
from nbic.output import (
    add_compression_argument,
    atomic_output,
    compression_from_args,
    refuse_inputs,
    write_image,
)
from nbic.selection import InitMode, Selection
from nbic.tree import EmptyTree, Tree, open_tree

log = logging.getLogger("nbic")

HELP = "build an image from a rootfs directory or tar and file lists, on the host"


@dataclass(frozen=True)
class PackConfig:
    output: str | None
    rootfs: str | None = None
    selection: Selection = field(default_factory=Selection)
    compression: CompressionSpec | None = None
    emit_spec: str | None = None


@dataclass(frozen=True)
class PackResult:
    output: str | None
    stats: ArchiveStats | None
    image_bytes: int | None
    compression: CompressionSpec | None


def emit_spec(image: ImagePlan, tree: Tree) -> str:
    """The spec list of what would be packed."""
    return format_spec((member.entry, image.location(tree, member.entry.name))
                       for member in order(image.members(tree)))


def pack(config: PackConfig) -> PackResult:
    selection = config.selection
    if config.rootfs is None and not selection.spec_lists:
        raise UsageError("nothing to pack: give --rootfs (with lists) or --spec")
    if config.rootfs is None and (selection.file_lists or selection.binaries
                                  or selection.include):
        raise UsageError("--files-from, --include and --include-bin need --rootfs")
    if config.output is None and config.emit_spec is None:
        raise UsageError("give -o OUTPUT, or --emit-spec FILE")
    list_names = [item.name for item in selection.file_lists] + \
        [item.name for item in selection.spec_lists]
    if config.rootfs == "-" and "-" in list_names:
        raise UsageError("standard input cannot carry both the rootfs and a list")
    refuse_inputs([config.output, config.emit_spec],
                  [config.rootfs, *(item.name for item in selection.file_lists),
                   *(item.name for item in selection.spec_lists), *selection.spec_locations()])

    if config.rootfs is None and selection.init_mode is InitMode.AUTO:
        # Spec lists alone describe the whole image (a round trip of one): add nothing.
        if not selection.gives_init():
            log.warning("the spec lists give no /init: the kernel will have nothing to run")
        selection = replace(selection, init_mode=InitMode.NONE)
    with open_tree(config.rootfs) if config.rootfs else EmptyTree() as tree:
        image = plan(tree, selection)
        if config.emit_spec:
            with atomic_output(config.emit_spec) as out:
                out.write(emit_spec(image, tree).encode("utf-8", "surrogateescape"))
        if config.output is None:
            return PackResult(None, None, None, None)
        tree.prefetch(data.path for data in image.data.values() if data.origin is Origin.TREE)
        compression = config.compression
        assert compression is not None
        members = image.members(tree)
        total = sum(member.entry.size for member in members
                    if member.entry.type is FileType.FILE)
        with progress.bar(f"writing {os.path.basename(config.output)}", total) as advance:
            stats, size = write_image(config.output, _counted(members, advance), compression,
                                      epoch=selection.epoch)
    log.info("wrote %s: %d entries, %d bytes of file data, %s bytes as %s", config.output,
             stats.entries, stats.data_bytes, size if size is not None else "?", compression)
    return PackResult(config.output, stats, size, compression)


def _counted(members: list[Member], advance: progress.Advance) -> Iterator[Member]:
    """The members, each one's file data counted once it is written (when the
    next is asked for)."""
    for member in members:
        yield member
        if member.entry.type is FileType.FILE:
            advance(member.entry.size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rootfs", metavar="SRC",
                        help="reference rootfs: a directory, a tar (.tar, .tar.gz, .tar.xz, "
                        ".tar.zst) or - for a tar on standard input")
    selections.add_arguments(parser)
    add_compression_argument(parser)
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="image to write (.cpio, .cpio.zst, .gz, .xz, .lz4; - for stdout)")
    parser.add_argument("--emit-spec", metavar="FILE",
                        help="write the spec list of what would be packed")


def config_from_args(args: argparse.Namespace) -> PackConfig:
    return PackConfig(output=args.output, rootfs=args.rootfs,
                      selection=selections.from_args(args),
                      compression=compression_from_args(args, args.output or ""),
                      emit_spec=args.emit_spec)


def run(args: argparse.Namespace) -> int:
    pack(config_from_args(args))
    return 0
