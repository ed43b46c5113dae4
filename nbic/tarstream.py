"""Entries as tar members and back: a rootfs directory travels to Docker's
archive API as a tar stream, and rootfs tars are read as entries.
Standard library only.

A hardlink group is written as tar does it: data on the first name, later
names as links to it.
"""

from __future__ import annotations

import io
import math
import tarfile
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import BinaryIO

from nbic.cpio.archive import Member
from nbic.cpio.entry import Entry, FileType
from nbic.cpio.source import ChunkReader
from nbic.errors import FormatError

_TAR_TYPES = {FileType.FILE: tarfile.REGTYPE, FileType.DIR: tarfile.DIRTYPE,
              FileType.SYMLINK: tarfile.SYMTYPE, FileType.CHAR: tarfile.CHRTYPE,
              FileType.BLOCK: tarfile.BLKTYPE, FileType.FIFO: tarfile.FIFOTYPE}


def write_tar(out: BinaryIO, members: Iterable[Member]) -> int:
    """Write ordered members (see archive.order) as a tar stream; returns the count.

    Sockets cannot be stored in a tar and are skipped, as GNU tar does.
    """
    count = 0
    first_names: dict[object, str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for member in members:
            entry = member.entry
            if entry.type not in _TAR_TYPES:
                continue
            info = tarfile.TarInfo(entry.name)
            info.mode, info.uid, info.gid, info.mtime = entry.perm, entry.uid, entry.gid, \
                entry.mtime
            info.type = _TAR_TYPES[entry.type]
            info.linkname = entry.linkname
            info.devmajor, info.devminor = entry.rdevmajor, entry.rdevminor
            data = None
            if entry.type is FileType.FILE:
                if entry.nlink > 1 and entry.link_key is not None:
                    first = first_names.setdefault(entry.link_key, entry.name)
                    if first != entry.name:
                        info.type, info.linkname = tarfile.LNKTYPE, first
                if info.type == tarfile.REGTYPE:
                    info.size = entry.size
                    data = member.source
            if data is not None and info.size:
                with data() as stream:
                    archive.addfile(info, stream)
            else:
                info.size = 0
                archive.addfile(info)
            count += 1
    return count


def entry_from_tarinfo(name: str, info: tarfile.TarInfo) -> Entry | None:
    """The entry for a tar member, or None for a type cpio cannot hold. A hardlink
    member comes back as a plain file: each reader keys its group its own way."""
    if not math.isfinite(info.mtime):  # a PAX mtime may say inf or nan
        raise FormatError(f"{name}: mtime {info.mtime} is not a time")
    base = Entry(name, FileType.FILE, perm=info.mode & 0o7777, uid=info.uid, gid=info.gid,
                 mtime=int(info.mtime))
    if info.isreg() or info.islnk():
        return replace(base, size=info.size)
    if info.isdir():
        return replace(base, type=FileType.DIR, nlink=2)
    if info.issym():
        return replace(base, type=FileType.SYMLINK, linkname=info.linkname)
    if info.ischr() or info.isblk():
        kind = FileType.CHAR if info.ischr() else FileType.BLOCK
        return replace(base, type=kind, rdevmajor=info.devmajor, rdevminor=info.devminor)
    if info.isfifo():
        return replace(base, type=FileType.FIFO)
    return None


@contextmanager
def tar_members(chunks: Iterable[bytes]
                ) -> Iterator[Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]]:
    """The members of a tar stream given in chunks: (member, data) pairs, each
    member's data readable until the next is taken."""
    stream = io.BufferedReader(ChunkReader(iter(chunks)), 1 << 20)
    with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8",
                      errors="surrogateescape") as archive:
        yield ((info, typing.cast(BinaryIO, archive.extractfile(info)) if info.isreg() else None)
               for info in archive)
