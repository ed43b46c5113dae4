"""Read-only views of a reference root filesystem: an index of every path
(as cpio Entry records) plus a way to read file data.

The host never follows a rootfs symlink: a directory is walked without
following links and files are opened component by component with O_NOFOLLOW;
a tar is read with tarfile and never extracted. Symlinks are resolved against
the index only (see `Tree.resolve`), with chroot semantics.
"""

from __future__ import annotations

import abc
import io
import os
import stat
import sys
import tarfile
import tempfile
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from nbic.cpio.entry import Entry, FileType, split_path
from nbic.cpio.spec import escape_location, root_location
from nbic.errors import RootfsError
from nbic.tarstream import entry_from_tarinfo

MAX_SYMLINK_HOPS = 40  # as the kernel's ELOOP limit


@dataclass(frozen=True)
class Resolution:
    """Where a path leads inside the rootfs.

    `target` is the physical name reached (None if the path is missing, loops,
    or passes through a non-directory); `via` lists every symlink followed
    and directory passed on the way, which an image needs for the path to work.
    """

    target: str | None
    via: tuple[str, ...]


class Tree(abc.ABC):
    """The index shared by all rootfs kinds; subclasses supply the data."""

    def __init__(self, entries: dict[str, Entry], description: str):
        self.entries = entries
        self.description = description
        self.hardlinks: dict[object, list[str]] = {}
        for name, entry in entries.items():
            if entry.link_key is not None:
                self.hardlinks.setdefault(entry.link_key, []).append(name)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def resolve(self, path: str, *, follow_last: bool = True) -> Resolution:
        pending = deque(split_path(path))
        current = ""  # "" is the root
        via: list[str] = []
        hops = 0
        while pending:
            part = pending.popleft()
            if part == "..":
                current = current.rsplit("/", 1)[0] if "/" in current else ""
                continue
            name = f"{current}/{part}" if current else part
            entry = self.entries.get(name)
            if entry is None:
                return Resolution(None, tuple(via))
            if entry.type is FileType.SYMLINK and (pending or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return Resolution(None, tuple(via))
                via.append(name)
                if entry.linkname.startswith("/"):
                    current = ""
                pending.extendleft(reversed(split_path(entry.linkname)))
                continue
            if pending:
                if entry.type is not FileType.DIR:
                    return Resolution(None, tuple(via))
                via.append(name)
            current = name
        return Resolution(current or ".", tuple(via))

    def hardlink_names(self, name: str) -> list[str]:
        entry = self.entries.get(name)
        if entry is None or entry.link_key is None:
            return [name]
        return self.hardlinks[entry.link_key]

    def prefetch(self, names: Iterable[str]) -> None:  # noqa: B027 - optional hook
        """Make the data of `names` readable; only needed for streamed tars."""

    @abc.abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A readable stream of a regular file's bytes."""

    def location(self, name: str) -> str:
        """Where a spec list's `file` line finds this file's bytes (as the line's
        text: a literal `${` is escaped)."""
        return root_location(name)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open files; the index stays usable."""

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class EmptyTree(Tree):
    """No rootfs at all: an image made of spec lists alone."""

    def __init__(self) -> None:
        super().__init__({}, "no rootfs")

    def open(self, name: str) -> BinaryIO:
        raise RootfsError(f"/{name}: there is no rootfs to read it from")


class DirTree(Tree):
    """A rootfs directory on the host, walked for its index unless one is given
    (the agent keeps one of each cached rootfs; see nbic.agent.rootfs_index).

    Files are opened component by component with O_NOFOLLOW, from the
    directories of the last file opened: an image is written in path order,
    so most opens reuse those directories and cost one system call.
    """

    def __init__(self, root: str | Path, entries: dict[str, Entry] | None = None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise RootfsError(f"rootfs {root} is not a directory")
        super().__init__(_walk(self.root) if entries is None else entries,
                         f"directory {self.root}")
        # (name, fd) of the root and of each directory down to the last file's parent
        self._dirs: list[tuple[str, int]] = []
        self._finalizer = weakref.finalize(self, _close_all, self._dirs)

    def open(self, name: str) -> BinaryIO:
        *parents, base = name.split("/")
        try:
            fd = os.open(base, _OPEN_FLAGS, dir_fd=self._directory(parents))
        except OSError as exc:
            raise RootfsError(f"cannot read /{name} in {self.root}: {exc.strerror}") from None
        return os.fdopen(fd, "rb", buffering=0)

    def _directory(self, parts: list[str]) -> int:
        """An fd of the directory `parts` below the root, reached without
        following a symlink; the fds of its path stay open for the next call."""
        dirs = self._dirs
        if not dirs:
            dirs.append(("", os.open(self.root, _OPEN_FLAGS | os.O_DIRECTORY)))
        kept = 1
        while kept < len(dirs) and kept <= len(parts) and dirs[kept][0] == parts[kept - 1]:
            kept += 1
        _close_all(dirs, keep=kept)
        for part in parts[kept - 1 :]:
            dirs.append((part, os.open(part, _OPEN_FLAGS | os.O_DIRECTORY,
                                       dir_fd=dirs[-1][1])))
        return dirs[-1][1]

    def location(self, name: str) -> str:
        return escape_location(f"{self.root}/{name}")

    def close(self) -> None:
        _close_all(self._dirs)


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _close_all(dirs: list[tuple[str, int]], keep: int = 0) -> None:
    while len(dirs) > keep:
        os.close(dirs.pop()[1])


def _walk(root: Path) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    stack = [("", str(root))]
    while stack:
        prefix, directory = stack.pop()
        try:
            listing = list(os.scandir(directory))
        except OSError as exc:
            raise RootfsError(f"cannot list {directory}: {exc.strerror}") from None
        for item in listing:
            name = f"{prefix}/{item.name}" if prefix else item.name
            info = item.stat(follow_symlinks=False)
            entry = _entry_from_stat(name, info, item.path)
            if entry is None:
                continue
            entries[name] = entry
            if entry.type is FileType.DIR:
                stack.append((name, item.path))
    return entries


def _entry_from_stat(name: str, info: os.stat_result, host_path: str) -> Entry | None:
    try:
        file_type = FileType.from_mode(info.st_mode)
    except ValueError:
        return None
    linkname = os.readlink(host_path) if file_type is FileType.SYMLINK else ""
    is_file = file_type is FileType.FILE
    return Entry(
        name=name, type=file_type, perm=stat.S_IMODE(info.st_mode), uid=info.st_uid,
        gid=info.st_gid, mtime=int(info.st_mtime), size=info.st_size if is_file else 0,
        linkname=linkname,
        rdevmajor=os.major(info.st_rdev) if info.st_rdev else 0,
        rdevminor=os.minor(info.st_rdev) if info.st_rdev else 0,
        link_key=(info.st_dev, info.st_ino) if is_file and info.st_nlink > 1 else None)


class TarTree(Tree):
    """A rootfs tar, plain or compressed, from a file or standard input.

    A plain tar file is read in place: headers first, then each file's data by
    seeking. A compressed tar or a pipe can only be read front to back, so the
    index comes from one streaming pass and the selected files' data from a
    second pass into a spool (memory, then an anonymous temporary file), from
    which the writer takes them in its own order.
    """

    def __init__(self, path: str | Path):
        self._stream = self._open_source(path)
        self._random_access: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._spool: tempfile.SpooledTemporaryFile | None = None
        self._spooled: dict[str, tuple[int, int]] = {}
        self._label = label = "standard input" if str(path) == "-" else str(path)
        head = self._stream.read(6)
        self._stream.seek(0)
        from nbic.cpio.compress import detect

        self._compressed = detect(head) is not None
        try:
            if self._compressed:
                entries = self._index(self._open_stream())
            else:
                self._random_access = tarfile.open(  # noqa: SIM115 - closed with the stream
                    fileobj=self._stream, mode="r:",
                                                   encoding="utf-8", errors="surrogateescape")
                entries = self._index(self._random_access)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise RootfsError(f"cannot read rootfs tar {label}: {exc}") from None
        super().__init__(entries, f"tar {label}")

    @staticmethod
    def _open_source(path: str | Path) -> BinaryIO:
        if str(path) == "-":
            # A pipe can be read once; keep a copy (compressed, as given) so the
            # data pass can run after the index pass.
            spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            while chunk := sys.stdin.buffer.read(1 << 20):
                spool.write(chunk)
            spool.seek(0)
            return spool
        try:
            return open(path, "rb")
        except OSError as exc:
            raise RootfsError(f"cannot open rootfs {path}: {exc.strerror}") from None

    def _open_stream(self) -> tarfile.TarFile:
        from nbic.cpio.compress import decompressor_for, detect
        from nbic.cpio.source import CHUNK, ByteSource, ChunkReader, DecompressedSource

        self._stream.seek(0)
        outer = ByteSource(self._stream, self._label)
        head = outer.peek(8)
        method = detect(head)
        inner = DecompressedSource(outer, decompressor_for(method, head), method.value)
        chunks = iter(lambda: inner.read_some(CHUNK), b"")
        return tarfile.open(fileobj=ChunkReader(chunks), mode="r|", encoding="utf-8",
                            errors="surrogateescape")

    def _index(self, archive: tarfile.TarFile) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for info in archive:
            name = "/".join(split_path(info.name))
            if not name or ".." in name.split("/"):
                continue
            entry = _entry_from_tarinfo(name, info, entries)
            if entry is None:
                continue
            entries[name] = entry
            self._members[name] = info
        return entries

    def prefetch(self, names: Iterable[str]) -> None:
        if not self._compressed:
            return
        # The data lives on the tar member that first stored the inode.
        wanted = {self._data_name(name) for name in names}
        wanted -= self._spooled.keys()
        if not wanted:
            return
        if self._spool is None:
            self._spool = tempfile.SpooledTemporaryFile(max_size=256 << 20)  # noqa: SIM115
        with self._open_stream() as archive:
            for info in archive:
                name = "/".join(split_path(info.name))
                if name in wanted and info.isreg():
                    data = archive.extractfile(info)
                    self._spool.seek(0, io.SEEK_END)
                    start = self._spool.tell()
                    while chunk := data.read(1 << 20):
                        self._spool.write(chunk)
                    self._spooled[name] = (start, info.size)

    def _data_name(self, name: str) -> str:
        entry = self.entries[name]
        return entry.link_key if isinstance(entry.link_key, str) else name

    def open(self, name: str) -> BinaryIO:
        data_name = self._data_name(name)
        if self._random_access is not None:
            data = self._random_access.extractfile(self._members[data_name])
            if data is None:
                raise RootfsError(f"/{name} has no data in {self.description}")
            return data
        if data_name not in self._spooled:
            raise RootfsError(f"/{name} was not prefetched from {self.description}")
        start, size = self._spooled[data_name]
        self._spool.seek(start)
        return io.BytesIO(self._spool.read(size))

    def close(self) -> None:
        self._stream.close()
        if self._spool:
            self._spool.close()


def _entry_from_tarinfo(name: str, info: tarfile.TarInfo, seen: dict[str, Entry]
                        ) -> Entry | None:
    if not info.islnk():
        return entry_from_tarinfo(name, info)
    # A tar hardlink names the member that holds the data; the group is keyed
    # by that first name.
    target = "/".join(split_path(info.linkname))
    first = seen.get(target)
    if first is None or first.type is not FileType.FILE:
        return None
    if first.link_key is None:
        seen[target] = first = replace(first, link_key=target)
    return replace(entry_from_tarinfo(name, info), size=first.size, link_key=first.link_key)


def open_tree(source: str | Path) -> Tree:
    """A directory, a tar file (by name, also compressed), or "-" for a tar on stdin."""
    text = str(source)
    if text == "-":
        return TarTree("-")
    path = Path(source)
    if path.is_dir():
        return DirTree(path)
    if not path.exists():
        raise RootfsError(f"rootfs {source} does not exist")
    if path.is_file():
        return TarTree(path)
    raise RootfsError(f"rootfs {source} is neither a directory nor a tar file")

