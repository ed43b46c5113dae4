"""The wire format between the in-container agent and the host: a tar stream
of the image's entries, already in final order and closed over (parents,
links, device nodes, /init). Standard library only: the agent writes it, the
host converts it to cpio in tarfile's stream mode without touching the disk.

A hardlink group travels as tar does it (data on the first name, later names
as links to it) and each name carries the group's size in the PAX record
`NBIC.nlink`, so the host knows which name is the last, where cpio wants the data.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import BinaryIO

from nbic.cpio.archive import Member
from nbic.cpio.entry import Entry, FileType, split_path
from nbic.errors import FormatError

NLINK_RECORD = "NBIC.nlink"

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
                    info.pax_headers = {NLINK_RECORD: str(entry.nlink)}
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


def members_from_tar(stream: BinaryIO, *, on_member: Callable[[Entry], None] | None = None
                     ) -> Iterator[Member]:
    """Members of an agent tar stream, in its order, for write_archive(presorted=True).

    Each member's data can be read only while it is the current one: the
    writer takes it before asking for the next.
    """
    try:
        archive = tarfile.open(fileobj=stream, mode="r|", encoding="utf-8",  # noqa: SIM115
                               errors="surrogateescape")
    except tarfile.TarError as exc:
        raise FormatError(f"bad image stream from the session: {exc}") from None
    with archive:
        try:
            for info in archive:
                entry = _entry(info)
                if on_member:
                    on_member(entry)
                source = None
                if info.isreg() and info.size:
                    source = _reader(archive, info)
                yield Member(entry, source)
        except tarfile.TarError as exc:
            raise FormatError(f"bad image stream from the session: {exc}") from None


def _reader(archive: tarfile.TarFile, info: tarfile.TarInfo):
    return lambda: archive.extractfile(info)


def entry_from_tarinfo(name: str, info: tarfile.TarInfo) -> Entry | None:
    """The entry for a tar member, or None for a type cpio cannot hold. A hardlink
    member comes back as a plain file: each reader keys its group its own way."""
    common = {"perm": info.mode & 0o7777, "uid": info.uid, "gid": info.gid,
              "mtime": int(info.mtime)}
    if info.isreg() or info.islnk():
        return Entry(name, FileType.FILE, size=info.size, **common)
    if info.isdir():
        return Entry(name, FileType.DIR, nlink=2, **common)
    if info.issym():
        return Entry(name, FileType.SYMLINK, linkname=info.linkname, **common)
    if info.ischr() or info.isblk():
        kind = FileType.CHAR if info.ischr() else FileType.BLOCK
        return Entry(name, kind, rdevmajor=info.devmajor, rdevminor=info.devminor, **common)
    if info.isfifo():
        return Entry(name, FileType.FIFO, **common)
    return None


def _entry(info: tarfile.TarInfo) -> Entry:
    name = "/".join(split_path(info.name)) or "."
    entry = entry_from_tarinfo(name, info)
    if entry is None:
        raise FormatError(f"unexpected tar member type {info.type!r} for {name}")
    nlink = int(info.pax_headers.get(NLINK_RECORD, "1"))
    if entry.type is FileType.FILE and nlink > 1:
        key = "/".join(split_path(info.linkname)) if info.islnk() else name
        entry = replace(entry, nlink=nlink, link_key=key)
    return entry
