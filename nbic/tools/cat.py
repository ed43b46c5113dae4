"""cpio-cat: one regular file of an image to standard output."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from nbic.cpio.entry import TYPE_NAMES, Entry, FileType, landing_name
from nbic.cpio.image import ImageReader
from nbic.errors import NbicError
from nbic.output import atomic_output, refuse_inputs

HELP = "print a regular file of an image"


@contextmanager
def rereadable(path: str) -> Iterator[Callable[[], ImageReader]]:
    """A factory of fresh readers over the same image, for tools that read it twice.
    Standard input is first copied to a temporary file."""
    if path != "-":
        streams: list[BinaryIO] = []

        def fresh() -> ImageReader:
            try:
                stream = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
            except OSError as exc:
                raise NbicError(f"cannot open image {path}: {exc.strerror}") from None
            streams.append(stream)
            return ImageReader(stream, path)

        try:
            yield fresh
        finally:
            for stream in streams:
                stream.close()
        return
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)

        def fresh_spool() -> ImageReader:
            spool.seek(0)
            return ImageReader(spool, "standard input")

        yield fresh_spool


def cat(path: str, member: str, out: BinaryIO) -> int:
    """Copy the content of regular file `member` of the image to `out`; returns its size."""
    wanted = landing_name(member)
    with rereadable(path) as fresh:
        found: Entry | None = None
        carriers: dict[object, Entry] = {}  # link_key -> last entry with the group's data
        for entry in fresh():
            if entry.link_key is not None and entry.size:
                carriers[entry.link_key] = entry
            if landing_name(entry.name) == wanted:
                found = entry
        shown = "/" if wanted == "." else "/" + wanted
        if found is None:
            raise NbicError(f"{shown}: no such entry in {path}")
        if found.type is FileType.SYMLINK:
            raise NbicError(f"{shown}: is a symlink to {found.linkname} "
                            "(cat the target instead)")
        if found.type is not FileType.FILE:
            raise NbicError(f"{shown}: is a {TYPE_NAMES[found.type]}, not a regular file")
        source = found
        if found.link_key is not None:
            source = carriers.get(found.link_key, found)
        if not source.size:
            return 0
        reader = fresh()
        copied = 0
        for entry in reader:
            if (entry.archive, entry.offset) == (source.archive, source.offset):
                for chunk in reader.chunks():
                    out.write(chunk)
                    copied += len(chunk)
                break
        return copied


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    parser.add_argument("path", help="the file to print, with or without a leading /")


def run(args: argparse.Namespace) -> int:
    refuse_inputs(["-"], [args.image])
    with atomic_output("-") as out:
        cat(args.image, args.path, out)
    return 0
