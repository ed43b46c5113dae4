"""cpio-list: the entries of an image, like cpio -t (-v: cpio -tv), its
segments, or a spec list that rebuilds it."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from nbic.cpio.entry import Entry, FileType, sort_key
from nbic.cpio.image import ImageReader, open_image
from nbic.cpio.spec import format_spec, root_location
from nbic.errors import NbicError
from nbic.output import refuse_inputs
from nbic.tools.common import Layout, emit

log = logging.getLogger("nbic")

HELP = "list the entries of an image, like cpio -t"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SIX_MONTHS = 6 * 30 * 24 * 60 * 60  # GNU cpio's notion of "recent"

def _cpio_date(mtime: int, now: float) -> str:
    """The date column of `cpio -tv` (from ctime(3) in the local time zone)."""
    when = time.localtime(mtime)
    day = f"{_MONTHS[when.tm_mon - 1]} {when.tm_mday:2d}"
    if now - mtime > _SIX_MONTHS or now - mtime < 0:
        return f"{day}  {when.tm_year}"
    return f"{day} {when.tm_hour:02d}:{when.tm_min:02d}"


def long_format(entry: Entry, now: float | None = None) -> str:
    """One line of GNU `cpio -tv --numeric-uid-gid`."""
    now = int(time.time()) if now is None else now
    size = (f"{entry.rdevmajor:3d}, {entry.rdevminor:3d}" if entry.is_device
            else f"{entry.size:8d}")
    line = (f"{entry.mode_string()} {entry.nlink:3d} {entry.uid:<8d} {entry.gid:<8d} "
            f"{size} {_cpio_date(entry.mtime, now)} {entry.name}")
    if entry.type is FileType.SYMLINK:
        line += f" -> {entry.linkname}"
    return line


def _spec(reader: ImageReader) -> tuple[str, int]:
    """The spec list of the tree cpio-extract makes of the image, with files at
    ${NBIC_ROOT}/NAME, where it puts them. An entry it does not write is left
    out, with a warning; returns the list and how many were left out."""
    layout = Layout()
    left_out = 0
    for entry in reader:
        reason = layout.place(entry)
        if reason is not None:
            left_out += 1
            log.warning("%s: %r left out: cpio-extract does not write it (%s)",
                        reader.location(entry), entry.name, reason)
    pairs = []
    for name in sorted(layout.entries, key=sort_key):
        entry = layout.entries[name]
        normalized = Entry(name, entry.type, perm=entry.perm, uid=entry.uid, gid=entry.gid,
                           linkname=entry.linkname, rdevmajor=entry.rdevmajor,
                           rdevminor=entry.rdevminor, link_key=entry.link_key)
        pairs.append((normalized, root_location(name)))
    return format_spec(pairs), left_out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-v", "--verbose", action="store_true",
                      help="long listing, as `cpio -tv --numeric-uid-gid`")
    mode.add_argument("--spec", action="store_true",
                      help="a gen_init_cpio spec list that rebuilds the image from the "
                           "tree cpio-extract makes of it (files at ${NBIC_ROOT}/NAME); "
                           "an entry cpio-extract refuses is left out, with a warning "
                           "and exit status 1")
    mode.add_argument("--segments", action="store_true",
                      help="one line per cpio archive: index, compression, byte offset, "
                           "entry count")


def run(args: argparse.Namespace) -> int:
    refuse_inputs(["-"], [args.image])
    with open_image(args.image) as reader:
        if args.spec:
            # Whole before printed: an entry no spec list can hold leaves no half list.
            text, left_out = _spec(reader)
            for line in text.splitlines():
                emit(line)
            if left_out:
                sys.stdout.flush()
                name = "standard input" if args.image == "-" else args.image
                raise NbicError(f"{name}: {left_out} " + (
                    "entry left out of the spec list (cpio-extract does not write it)"
                    if left_out == 1 else
                    "entries left out of the spec list (cpio-extract does not write them)"))
        elif args.segments:
            counts: dict[int, int] = {}
            for entry in reader:
                counts[entry.archive] = counts.get(entry.archive, 0) + 1
            for segment in reader.segments:
                emit(f"{segment.index} {segment.compression.value} {segment.offset} "
                      f"{counts.get(segment.index, 0)}")
        elif args.verbose:
            now = int(time.time())  # time(NULL), as GNU cpio
            for entry in reader:
                emit(long_format(entry, now))
        else:
            for entry in reader:
                emit(entry.name)
    sys.stdout.flush()
    return 0
