"""What the cpio tools share: lines out, and the names cpio-extract makes of an
image."""

from __future__ import annotations

import sys

from nbic.cpio.entry import TYPE_NAMES, Entry, FileType, ancestors, encode_name, split_path


def emit(line: str) -> None:
    """Print one line; names that are not valid UTF-8 go out as their original bytes."""
    try:
        sys.stdout.write(line + "\n")
    except UnicodeEncodeError:
        sys.stdout.flush()
        sys.stdout.buffer.write(encode_name(line + "\n"))


# --- what cpio-extract makes of an image ------------------------------------------

class Layout:
    """The names cpio-extract makes of an image in an empty directory, worked out on
    names alone: the one definition of which entries it refuses. The extractor
    asks it before touching the disk, and `cpio-list --spec` writes only what it
    keeps, so a spec list never points at a path that leads out of the tree."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}  # name -> the entry that made it last
        self._dirs = {"."}  # also those made as missing parents
        self._children: dict[str, int] = {}  # directory -> names directly in it

    def place(self, entry: Entry) -> str | None:
        """Record `entry`; or, when cpio-extract refuses it, say why."""
        if entry.name.startswith("/"):
            return "absolute name"
        parts = split_path(entry.name)
        if ".." in parts:
            return "name contains '..'"
        name = "/".join(parts) or "."
        if name == ".":
            if entry.type is not FileType.DIR:
                return f"it names the target itself but is a {TYPE_NAMES[entry.type]}"
            self.entries[name] = entry
            return None
        for parent in ancestors(name):
            if parent in self._dirs:
                continue
            other = self.entries.get(parent)
            if other is not None:
                what = "a symlink" if other.type is FileType.SYMLINK else "not a directory"
                return f"{parent} is {what} (nothing is written through it)"
            self._new_name(parent)
            self._dirs.add(parent)  # a missing parent, made as a directory
        if name in self._dirs:
            if entry.type is not FileType.DIR:
                if self._children.get(name):
                    return "a non-empty directory of that name is in the way"
                self._dirs.discard(name)
        elif name not in self.entries:
            self._new_name(name)
        if entry.type is FileType.DIR:
            self._dirs.add(name)
        self.entries[name] = entry
        return None

    def _new_name(self, name: str) -> None:
        parent = name.rsplit("/", 1)[0] if "/" in name else "."
        self._children[parent] = self._children.get(parent, 0) + 1
