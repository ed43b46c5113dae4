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
import os
import stat
from collections.abc import Iterator, MutableMapping

from nbic.cpio.entry import Entry, FileType
from nbic.errors import NbicError
from nbic.tree import DirTree, _entry_from_stat

INDEX_FILE = "index"  # beside rootfs/ in a cache volume
_OPAQUE = (b"trusted.overlay.opaque", b"user.overlay.opaque")


def write_index(root: str, path: str) -> int:
    """Index the rootfs at `root` into `path`; returns the number of entries."""
    entries = DirTree(root).entries
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as out:
        out.write(RECORD.join(f"{entry.name}{RECORD}{_row(entry)}" for entry in entries.values()))
    os.replace(temporary, path)
    return len(entries)


# The index is one text: name, row, name, row... separated by NUL, which no
# name or link target holds. A row is the entry's fields joined by \x01: first
# its type as one character (resolving a path reads the types of the names on
# its way without parsing their rows), last its link target (the one field
# that may hold \x01). Reading it is one split, some 0.2 us a row where JSON
# took 0.7 (bookworm's 6770 rows: 1.5 ms, not 5); a row is parsed when first
# looked up, and a session looks up a few hundred.
RECORD = "\0"
FIELD = "\x01"
_FIELDS = 10
_CODES = {FileType.FILE: "-", FileType.DIR: "d", FileType.SYMLINK: "l", FileType.CHAR: "c",
          FileType.BLOCK: "b", FileType.FIFO: "p", FileType.SOCKET: "s"}
_TYPES = {code: kind for kind, code in _CODES.items()}
_SYMLINK_CODE = _CODES[FileType.SYMLINK]


def _row(entry: Entry) -> str:
    key = "" if entry.link_key is None else repr(entry.link_key)
    return FIELD.join(map(str, (_CODES[entry.type], entry.perm, entry.uid, entry.gid,
                                entry.mtime, entry.size, entry.rdevmajor, entry.rdevminor, key,
                                entry.linkname)))


class IndexEntries(MutableMapping[str, Entry]):
    """An index's entries by name, each row made an Entry when first looked up."""

    def __init__(self, rows: dict[str, Entry | str], path: str):
        self._items = rows
        self._path = path  # named when a row turns out damaged

    def __getitem__(self, name: str) -> Entry:
        item = self._items[name]
        if isinstance(item, str):
            try:
                kind, perm, uid, gid, mtime, size, major, minor, key, linkname = \
                    item.split(FIELD, _FIELDS - 1)
                item = self._items[name] = Entry(
                    name, _TYPES[kind], perm=int(perm), uid=int(uid), gid=int(gid),
                    mtime=int(mtime), size=int(size), linkname=linkname,
                    rdevmajor=int(major), rdevminor=int(minor), link_key=key or None)
            except (ValueError, KeyError):
                raise damaged(self._path) from None
        return item

    def get(self, name: str, default: Entry | None = None) -> Entry | None:  # type: ignore[override]
        return self[name] if name in self._items else default

    def walk_info(self, name: str) -> tuple[FileType, str] | None:
        """An entry's type and link target, without making it an Entry."""
        item = self._items.get(name)
        if item is None:
            return None
        if isinstance(item, Entry):
            return item.type, item.linkname
        kind = _TYPES.get(item[:1])
        if kind is None:
            raise damaged(self._path)
        return kind, item.split(FIELD, _FIELDS - 1)[-1] if kind is FileType.SYMLINK else ""

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
            if item[:1] == _SYMLINK_CODE if isinstance(item, str) else \
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
        text = stream.read()
    fields = text.split(RECORD) if text else []
    if len(fields) % 2:
        raise damaged(path)
    rows: dict[str, Entry | str] = dict(zip(fields[::2], fields[1::2], strict=True))
    return IndexEntries(rows, path)


def damaged(path: str) -> NbicError:
    """A cut or garbled index (told as it is read: rows are parsed when looked up)."""
    return NbicError(f"the rootfs index {path} is damaged: remove the volume "
                     "(`nbic rootfs rm` or `nbic gc`) and run again")


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
