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
    entries: int
    data_bytes: int


def order(members: Iterable[Member], *, epoch: int | None = None) -> list[Member]:
    """Sort, renumber and group members; refuses two members with one name."""
    by_name: dict[str, Member] = {}
    for member in members:
        name = member.entry.name
        if name in by_name:
            raise NbicError(f"two entries for {member.entry.path}")
        by_name[name] = member
    names = sorted(by_name, key=sort_key)

    groups: dict[object, list[str]] = {}
    for name in names:
        entry = by_name[name].entry
        if entry.type is FileType.FILE and entry.link_key is not None:
            groups.setdefault(entry.link_key, []).append(name)

    # Any name of a group may carry the size and data source (a tar stores them
    # on the first name); they all describe one inode.
    group_data = {
        key: (max(by_name[n].entry.size for n in group),
              next((by_name[n].source for n in group if by_name[n].source), None))
        for key, group in groups.items() if len(group) > 1
    }

    result = []
    inodes: dict[object, int] = {}
    for name in names:
        member = by_name[name]
        entry = member.entry
        source = member.source
        if entry.type is FileType.FILE and entry.link_key in group_data:
            group = groups[entry.link_key]
            ino = inodes.setdefault(entry.link_key, len(inodes) + 1)
            size, group_source = group_data[entry.link_key]
            # One copy of the data, on the last name, where the kernel and GNU
            # cpio expect it; the others are empty headers under the same inode.
            last = name == group[-1]
            entry = replace(entry, ino=ino, nlink=len(group), size=size if last else 0)
            source = group_source if last else None
        else:
            ino = inodes.setdefault(("name", name), len(inodes) + 1)
            entry = replace(entry, ino=ino, nlink=2 if entry.type is FileType.DIR else 1)
        entry = replace(entry, mtime=_clamp_mtime(entry, epoch), devmajor=0, devminor=0)
        result.append(Member(entry, source))
    return result


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


def write_archive(out: BinaryIO, members: Iterable[Member], *, epoch: int | None = None
                  ) -> ArchiveStats:
    """Order `members` and write them as one newc archive to `out`."""
    writer = NewcWriter(out)
    count = data_bytes = 0
    for member in order(members, epoch=epoch):
        entry = member.entry
        if entry.type is FileType.FILE and entry.size:
            if member.source is None:
                raise NbicError(f"{entry.path}: no data for a {entry.size}-byte file")
            with member.source() as data:
                writer.add(entry, data)
            data_bytes += entry.size
        else:
            writer.add(entry)
        count += 1
    writer.close()
    return ArchiveStats(count, data_bytes)


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
