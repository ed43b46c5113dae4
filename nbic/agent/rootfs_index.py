"""The index of a cached rootfs, and the session's rootfs from it without a walk.

Walking a whole rootfs after every session costs more than a short session
itself. A cache volume never changes after its import, so its index is
written once, beside it; after a session only the overlay's upper layer (what
the session changed) is walked and laid over the index: new and changed
entries replace the lower ones, whiteouts delete them, and an opaque
directory hides everything below it in the lower layer.

Making every row an Entry costs more than a short session (some 15 ms for
bookworm's 6770): a row becomes one when it is first looked up, and a session
looks up a few hundred.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator, MutableMapping
from typing import Any

from nbic.cpio.entry import Entry, FileType
from nbic.tree import DirTree, _entry_from_stat

INDEX_FILE = "index.json"  # beside rootfs/ in a cache volume
_OPAQUE = (b"trusted.overlay.opaque", b"user.overlay.opaque")


def write_index(root: str, path: str) -> int:
    """Index the rootfs at `root` into `path`; returns the number of entries."""
    entries = DirTree(root).entries
    rows = [[entry.name, int(entry.type), entry.perm, entry.uid, entry.gid, entry.mtime,
             entry.size, entry.linkname, entry.rdevmajor, entry.rdevminor,
             None if entry.link_key is None else repr(entry.link_key)]
            for entry in entries.values()]
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as out:
        json.dump(rows, out, separators=(",", ":"))
    os.replace(temporary, path)
    return len(rows)


_TYPES = {int(kind): kind for kind in FileType}  # faster than FileType(n), per row
_SYMLINK = int(FileType.SYMLINK)


class IndexEntries(MutableMapping[str, Entry]):
    """An index's entries by name, each row made an Entry when first looked up."""

    def __init__(self, rows: list[list[Any]]):
        self._items: dict[str, Entry | list[Any]] = {row[0]: row for row in rows}

    def __getitem__(self, name: str) -> Entry:
        item = self._items[name]
        if isinstance(item, list):
            item = self._items[name] = Entry(
                item[0], _TYPES[item[1]], perm=item[2], uid=item[3], gid=item[4],
                mtime=item[5], size=item[6], linkname=item[7], rdevmajor=item[8],
                rdevminor=item[9], link_key=item[10])
        return item

    def get(self, name: str, default: Entry | None = None) -> Entry | None:  # type: ignore[override]
        return self[name] if name in self._items else default

    def walk_info(self, name: str) -> tuple[FileType, str] | None:
        """An entry's type and link target, without making it an Entry."""
        item = self._items.get(name)
        if item is None:
            return None
        return (_TYPES[item[1]], item[7]) if isinstance(item, list) else \
            (item.type, item.linkname)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __setitem__(self, name: str, entry: Entry) -> None:
        self._items[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def symlinks(self) -> Iterator[str]:
        """The names of the symlinks, told from the rows without making Entries."""
        for name, item in self._items.items():
            if (item[1] == _SYMLINK) if isinstance(item, list) else \
                    item.type is FileType.SYMLINK:
                yield name


class IndexTree(DirTree):
    """A directory tree whose entries come from an index."""

    entries: IndexEntries

    def __init__(self, root: str, entries: IndexEntries):
        super().__init__(root, entries)

    def symlinks(self) -> Iterator[str]:
        return self.entries.symlinks()

    def _walk_info(self, name: str) -> tuple[FileType, str] | None:
        return self.entries.walk_info(name)


def read_index(path: str) -> IndexEntries:
    with open(path, encoding="utf-8", errors="surrogateescape") as stream:
        return IndexEntries(json.load(stream))


def merged_tree(merged: str, index: str, upper: str) -> IndexTree:
    """The overlay at `merged` as a tree: the lower layer's index with the upper
    layer laid over it. Data is read through the merged mount."""
    entries = read_index(index)
    stack = [("", upper)]
    while stack:
        prefix, directory = stack.pop()
        for item in os.scandir(directory):
            name = f"{prefix}/{item.name}" if prefix else item.name
            info = item.stat(follow_symlinks=False)
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                _remove(entries, name)  # a whiteout: deleted in the session
                continue
            if stat.S_ISDIR(info.st_mode):
                if _opaque(item.path):
                    _remove(entries, name, keep_self=True)
                stack.append((name, item.path))
            elif name in entries and entries[name].type is FileType.DIR:
                _remove(entries, name)  # a directory replaced by a file
            entry = _entry_from_stat(name, info, item.path)
            if entry is not None:
                entries[name] = entry
    return IndexTree(merged, entries)


def _remove(entries: IndexEntries, name: str, *, keep_self: bool = False) -> None:
    prefix = name + "/"
    for other in [other for other in entries if other.startswith(prefix)]:
        del entries[other]
    if not keep_self:
        entries.pop(name, None)


def _opaque(path: str) -> bool:
    for attribute in _OPAQUE:
        with contextlib.suppress(OSError):
            if os.getxattr(path, attribute, follow_symlinks=False) == b"y":
                return True
    return False
