"""The index of a cached rootfs, and the session's rootfs from it without a walk.

Walking a whole rootfs after every session costs more than a short session
itself. A cache volume never changes after its import, so its index is
written once, beside it; after a session only the overlay's upper layer (what
the session changed) is walked and laid over the index: new and changed
entries replace the lower ones, whiteouts delete them, and an opaque
directory hides everything below it in the lower layer.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat

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


def read_index(path: str) -> dict[str, Entry]:
    with open(path, encoding="utf-8", errors="surrogateescape") as stream:
        rows = json.load(stream)
    types = {int(kind): kind for kind in FileType}  # faster than FileType(n), per row
    return {row[0]: Entry(row[0], types[row[1]], perm=row[2], uid=row[3], gid=row[4],
                          mtime=row[5], size=row[6], linkname=row[7], rdevmajor=row[8],
                          rdevminor=row[9], link_key=row[10]) for row in rows}


def merged_tree(merged: str, index: str, upper: str) -> DirTree:
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
    return DirTree(merged, entries)


def _remove(entries: dict[str, Entry], name: str, *, keep_self: bool = False) -> None:
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
