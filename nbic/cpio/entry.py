"""Entry records shared by every reader and writer in nbic.

Names are stored the way the kernel's initramfs wants them: relative, no
leading "/" or "./" ("usr/bin/bash"); the root directory is ".".
Non-UTF-8 names survive as surrogate escapes, as os.fsdecode does.
"""

from __future__ import annotations

import enum
import stat
from collections.abc import Hashable
from dataclasses import dataclass, field

from nbic.errors import UnsafePathError

MAX_FIELD = 0xFFFF_FFFF  # every newc header field is 8 hex digits


class FileType(enum.IntEnum):
    FIFO = stat.S_IFIFO
    CHAR = stat.S_IFCHR
    DIR = stat.S_IFDIR
    BLOCK = stat.S_IFBLK
    FILE = stat.S_IFREG
    SYMLINK = stat.S_IFLNK
    SOCKET = stat.S_IFSOCK

    @classmethod
    def from_mode(cls, mode: int) -> FileType:
        return cls(stat.S_IFMT(mode))


TYPE_NAMES = {
    FileType.FIFO: "fifo", FileType.CHAR: "char device", FileType.DIR: "directory",
    FileType.BLOCK: "block device", FileType.FILE: "file", FileType.SYMLINK: "symlink",
    FileType.SOCKET: "socket",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One archive member. `size` is the data length: file content or symlink target."""

    name: str
    type: FileType
    perm: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    linkname: str = ""
    rdevmajor: int = 0
    rdevminor: int = 0
    nlink: int = 1
    ino: int = 0
    devmajor: int = 0
    devminor: int = 0
    # Identity of the source inode: entries sharing a key are one hardlinked file.
    link_key: Hashable | None = field(default=None, compare=False)
    # Where the reader found it: which cpio archive of the image, and its byte offset.
    archive: int = field(default=0, compare=False)
    offset: int = field(default=-1, compare=False)

    @property
    def mode(self) -> int:
        return int(self.type) | self.perm

    @property
    def path(self) -> str:
        """The absolute path this entry becomes in the booted root."""
        return "/" if self.name == "." else "/" + self.name

    @property
    def is_device(self) -> bool:
        return self.type in (FileType.CHAR, FileType.BLOCK)

    def mode_string(self) -> str:
        return stat.filemode(self.mode)


def split_path(path: str) -> list[str]:
    """Components of a path, ignoring empty and "." parts (".." is kept)."""
    return [part for part in path.split("/") if part not in ("", ".")]


def landing_name(name: str) -> str:
    """Where an archive entry lands: "./usr//bin" and "/usr/bin" are "usr/bin", "/" is "."."""
    return "/".join(split_path(name)) or "."


def normalize_name(path: str) -> str:
    """Archive name for a path: "/usr//bin/./bash" -> "usr/bin/bash", "/" -> ".".

    ".." is refused: a name must say where it lands without resolving anything.
    """
    parts = split_path(path)
    if ".." in parts:
        raise UnsafePathError(f"path contains '..': {path!r}")
    return "/".join(parts) or "."


def ancestors(name: str) -> list[str]:
    """All parent directory names of `name`, outermost first ("a", "a/b" for "a/b/c")."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))] if name != "." else []


def sort_key(name: str) -> bytes:
    """Order in which parents come before their children, siblings sorted bytewise.

    The name's bytes with each "/" made NUL: no name holds a NUL and it sorts
    before every other byte, so this orders like comparing the names
    component by component, in one C-level comparison.
    """
    if name == ".":
        return b""
    return name.encode("utf-8", "surrogateescape").replace(b"/", b"\0")


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
