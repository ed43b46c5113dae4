"""Deterministic archive assembly: the same members give the same bytes.

Entries are sorted with parents before children, inodes renumbered from 1,
hardlinked names grouped under one inode with the data on the last name (as
gen_init_cpio and GNU cpio do), and mtimes clamped to SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import BinaryIO

from nbic.cpio.entry import MAX_FIELD, Entry, FileType, sort_key
from nbic.cpio.newc import NewcWriter
from nbic.errors import NbicError, UsageError

log = logging.getLogger("nbic")

DataSource = Callable[[], AbstractContextManager[BinaryIO]]


@dataclass(frozen=True)
class Member:
    """An entry to write and, for a regular file, where its bytes come from."""

    entry: Entry
    source: DataSource | None = None


@dataclass(frozen=True)
class ArchiveStats:
    """What an archive written holds."""

    entries: int
    data_bytes: int


def order(members: Iterable[Member]) -> list[Member]:
    """Sort members with parents first and count each hardlink group's names into
    nlink (directories 2, others 1). Refuses two members with one name."""
    by_name: dict[str, Member] = {}
    for member in members:
        name = member.entry.name
        if name in by_name:
            raise NbicError(f"two entries for {member.entry.path}")
        by_name[name] = member
    names = sorted(by_name, key=sort_key)
    group_sizes: dict[object, int] = {}
    for name in names:
        entry = by_name[name].entry
        if entry.type is FileType.FILE and entry.link_key is not None:
            group_sizes[entry.link_key] = group_sizes.get(entry.link_key, 0) + 1
    result = []
    for name in names:
        member = by_name[name]
        entry = member.entry
        if entry.type is FileType.FILE and group_sizes.get(entry.link_key, 0) > 1:
            member = Member(replace(entry, nlink=group_sizes[entry.link_key]), member.source)
        elif entry.link_key is not None or entry.nlink != _nlink(entry.type):
            member = Member(replace(entry, nlink=_nlink(entry.type), link_key=None),
                            member.source)
        result.append(member)
    return result


def _nlink(file_type: FileType) -> int:
    """A lone name's link count, as gen_init_cpio writes it."""
    return 2 if file_type is FileType.DIR else 1


def _clamp_mtime(entry: Entry, epoch: int | None) -> int:
    mtime = entry.mtime
    if epoch is not None and mtime > epoch:
        return epoch
    if mtime > MAX_FIELD:
        log.warning("%s: mtime past 2106 clamped to the newc maximum", entry.path)
        return MAX_FIELD
    if mtime < 0:
        log.warning("%s: mtime before 1970 clamped to 0", entry.path)
        return 0
    return mtime


class _Group:
    """A hardlink group being written: names left to see, and where its data is."""

    def __init__(self, ino: int, names: int):
        self.ino = ino
        self.remaining = names
        self.size = 0
        self.source: DataSource | None = None


class _Assembler:
    """Writes ordered members: renumbers inodes from 1, clamps mtimes, and puts
    a hardlink group's data on its last name."""

    def __init__(self, out: BinaryIO, epoch: int | None):
        self._writer = NewcWriter(out)
        self._epoch = epoch
        self._next_ino = 1
        self._groups: dict[object, _Group] = {}
        self.entries = 0
        self.data_bytes = 0

    def _ino(self) -> int:
        self._next_ino += 1
        return self._next_ino - 1

    def add(self, member: Member) -> None:
        entry = member.entry
        if entry.type is FileType.FILE and entry.nlink > 1 and entry.link_key is not None:
            self._add_hardlink(entry, member.source)
        else:
            self._write(entry, member.source, self._ino(), _nlink(entry.type), entry.size)

    def _add_hardlink(self, entry: Entry, source: DataSource | None) -> None:
        group = self._groups.get(entry.link_key)
        if group is None:
            group = self._groups[entry.link_key] = _Group(self._ino(), entry.nlink)
        group.remaining -= 1
        group.size = max(group.size, entry.size)
        if source is not None and group.source is None:
            group.source = source
        if group.remaining:
            self._write(entry, None, group.ino, entry.nlink, 0)
            return
        del self._groups[entry.link_key]
        self._write(entry, group.source, group.ino, entry.nlink, group.size)

    def _write(self, entry: Entry, source: DataSource | None, ino: int, nlink: int,
               size: int) -> None:
        """Write the entry renumbered: the writer takes the new fields as they
        are, without a copy of the entry (the costliest Python call here)."""
        mtime = _clamp_mtime(entry, self._epoch)
        if entry.type is FileType.FILE and size:
            if source is None:
                raise NbicError(f"{entry.path}: no data for a {size}-byte file")
            with source() as data:
                self._writer.add(entry, data, ino=ino, nlink=nlink, mtime=mtime, size=size)
            self.data_bytes += size
        else:
            self._writer.add(entry, ino=ino, nlink=nlink, mtime=mtime, size=size)
        self.entries += 1

    def close(self) -> None:
        if self._groups:
            missing = ", ".join(sorted(str(key) for key in self._groups))
            raise NbicError(f"hardlink groups ended early (fewer names than nlink): {missing}")
        self._writer.close()


def write_archive(out: BinaryIO, members: Iterable[Member], *, epoch: int | None = None
                  ) -> ArchiveStats:
    """Write `members` as one newc archive, in the deterministic order."""
    assembler = _Assembler(out, epoch)
    for member in order(members):
        assembler.add(member)
    assembler.close()
    return ArchiveStats(assembler.entries, assembler.data_bytes)


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH from the environment (reproducible-builds.org)."""
    text = os.environ.get("SOURCE_DATE_EPOCH")
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH must be an integer, not {text!r}") from None
    if value < 0:
        raise UsageError("SOURCE_DATE_EPOCH must not be negative")
    return value
