"""Read-only views of a reference root filesystem: an index of every path
(as cpio Entry records) plus a way to read file data.

The host never follows a rootfs symlink: a directory is walked without
following links and files are opened component by component with O_NOFOLLOW;
a tar is read with tarfile and never extracted. Symlinks are resolved against
the index only (see `Tree.resolve`), with chroot semantics.
"""

from __future__ import annotations

import abc
import functools
import io
import logging
import os
import stat
import sys
import tarfile
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, BinaryIO

from nbic.cpio.entry import Entry, FileType, ancestors, split_path
from nbic.cpio.newc import PATH_MAX
from nbic.cpio.spec import escape_location, root_location
from nbic.errors import FormatError, RootfsError
from nbic.tarstream import entry_from_tarinfo

if TYPE_CHECKING:
    from pathlib import Path  # annotations only: pathlib is 3 ms of the agent's start

log = logging.getLogger("nbic")

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

    def __init__(self, entries: MutableMapping[str, Entry], description: str):
        self.entries = entries
        self.description = description

    @functools.cached_property
    def hardlinks(self) -> dict[object, list[str]]:
        """link_key -> the names of that hardlinked file (wanted only when an
        image takes a hardlinked file: it reads every entry)."""
        groups: dict[object, list[str]] = {}
        for name, entry in self.entries.items():
            if entry.link_key is not None:
                groups.setdefault(entry.link_key, []).append(name)
        return groups

    def symlinks(self) -> Iterator[str]:
        """The names of the rootfs's symlinks."""
        return (name for name, entry in self.entries.items() if entry.type is FileType.SYMLINK)

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
            found = self._walk_info(name)
            if found is None:
                return Resolution(None, tuple(via))
            kind, linkname = found
            if kind is FileType.SYMLINK and (pending or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return Resolution(None, tuple(via))
                via.append(name)
                if linkname.startswith("/"):
                    current = ""
                pending.extendleft(reversed(split_path(linkname)))
                continue
            if pending:
                if kind is not FileType.DIR:
                    return Resolution(None, tuple(via))
                via.append(name)
            current = name
        return Resolution(current or ".", tuple(via))

    def _walk_info(self, name: str) -> tuple[FileType, str] | None:
        """What resolve() needs of an entry: its type and link target (an index
        tells them without making an Entry; resolving all of a rootfs's
        symlinks for each image would make a thousand)."""
        entry = self.entries.get(name)
        return None if entry is None else (entry.type, entry.linkname)

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

    def __init__(self, root: str | Path, entries: MutableMapping[str, Entry] | None = None):
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
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


def _walk(root: str) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    stack = [("", root)]
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


TAR_HEADER_LIMIT = 1 << 20  # extended headers (PAX, GNU long names, sparse maps) of one member
TAR_GLOBAL_HEADER_LIMIT = 4 << 10  # PAX global headers: tarfile copies them into every member
TAR_SPARSE_LIMIT = 1024  # regions of one sparse member


def tar_compression(head: bytes):
    """How a rootfs tar is compressed (a Compression, or None for plain), from its
    first 512 bytes. A block with a valid tar header checksum is a plain tar,
    whatever its first member's name looks like ("BZh..." is a fine name)."""
    from nbic.cpio.compress import detect

    try:
        tarfile.TarInfo.frombuf(head[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return detect(head)
    return None


class _BoundedFile(io.RawIOBase):
    """The file tarfile reads from, with a limit on how far reading may go while
    a member's headers are parsed: tarfile reads a PAX header, a GNU long name or
    a sparse map whole, however large its header says it is."""

    def __init__(self, raw, *, seekable: bool, where: Callable[[int], str]):
        super().__init__()
        self._raw = raw
        self._seekable = seekable
        self._where = where
        self._position = 0
        self.limit: int | None = None
        self.header_start = 0

    def read(self, size: int = -1) -> bytes:
        if self.limit is not None and (size < 0 or self._position + size > self.limit):
            raise FormatError(f"the headers of the member at {self._where(self.header_start)} "
                              f"run past {TAR_HEADER_LIMIT >> 20} MiB", self.header_start)
        data = self._raw.read(size)
        self._position += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("seek")
        self._position = self._raw.seek(offset, whence)
        return self._position

    def tell(self) -> int:
        return self._position


class _TarMembers:
    """The members of one pass over a tar, with the bounds and checks tarfile
    lacks: a limit on each member's headers, and an end that must be a real
    end-of-archive marker followed by nothing but zeros (tarfile stops, without
    a word, at a corrupt header or at any data after the marker). Malformed
    input raises FormatError naming the byte offset."""

    def __init__(self, raw, *, seekable: bool, decompressed: bool):
        self._decompressed = decompressed
        self._file = _BoundedFile(raw, seekable=seekable, where=self.where)
        self._header_errors: list[tarfile.HeaderError] = []
        self._global_bytes = 0
        self._file.limit = TAR_HEADER_LIMIT
        self.archive = self._parse(lambda: self._open(seekable))

    def where(self, offset: int) -> str:
        return f"{'decompressed ' if self._decompressed else ''}byte {offset}"

    def _open(self, seekable: bool) -> tarfile.TarFile:
        checked = self._tarinfo_class()
        if seekable:
            return tarfile.open(fileobj=self._file, mode="r:", encoding="utf-8",
                                errors="surrogateescape", tarinfo=checked)
        return tarfile.open(fileobj=self._file, mode="r|", encoding="utf-8",
                            errors="surrogateescape", tarinfo=checked)

    def _tarinfo_class(self) -> type[tarfile.TarInfo]:
        members = self

        class CheckedTarInfo(tarfile.TarInfo):
            """Records why tarfile found no further header (it only returns None)."""

            __slots__ = ()

            @classmethod
            def fromtarfile(cls, archive):
                try:
                    return super().fromtarfile(archive)
                except tarfile.HeaderError as exc:
                    members._header_errors.append(exc)
                    raise

            @classmethod
            def frombuf(cls, buf, encoding, errors):
                info = super().frombuf(buf, encoding, errors)
                if info.type == tarfile.XGLTYPE:
                    members._global_bytes += max(info.size, 0)
                    if members._global_bytes > TAR_GLOBAL_HEADER_LIMIT:
                        start = members._file.header_start
                        raise FormatError(f"PAX global headers past {TAR_GLOBAL_HEADER_LIMIT}"
                                          f" bytes at {members.where(start)}", start)
                return info

        return CheckedTarInfo

    def _parse(self, step):
        """Run one step of tarfile's parsing; what hostile bytes make it raise
        becomes a FormatError at the offset of the header being read."""
        try:
            return step()
        except (tarfile.TarError, ValueError, OverflowError, EOFError) as exc:
            start = self._file.header_start
            raise FormatError(f"bad tar header at {self.where(start)}: {exc}", start) from None

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        archive = self.archive
        while True:
            start = self._file.header_start = archive.offset
            self._file.limit = start + TAR_HEADER_LIMIT + 2 * tarfile.RECORDSIZE
            try:
                info = self._parse(archive.next)
            finally:
                self._file.limit = None
            if info is None:
                self._check_end(start)
                return
            self._header_errors.clear()
            archive.members.clear()  # tarfile keeps every member; the caller keeps what it needs
            self._check_member(info)
            yield info

    def _check_member(self, info: tarfile.TarInfo) -> None:
        where = self.where(info.offset)
        if info.size < 0:
            raise FormatError(f"member {info.name!r} at {where} has a negative size",
                              info.offset)
        for what, text in (("name", info.name), ("link target", info.linkname)):
            if len(text.encode("utf-8", "surrogateescape")) > PATH_MAX:
                raise FormatError(f"member at {where}: {what} longer than PATH_MAX "
                                  f"({PATH_MAX})", info.offset)
        if len(info.sparse or ()) > TAR_SPARSE_LIMIT:
            raise FormatError(f"sparse member {info.name!r} at {where} has more than "
                              f"{TAR_SPARSE_LIMIT} regions", info.offset)
        info.pax_headers = {}  # read by tarfile already; not kept for every member

    def _check_end(self, start: int) -> None:
        # tarfile's own header errors, by type (typeshed does not list them).
        error = self._header_errors[-1] if self._header_errors else None
        if isinstance(error, tarfile.EOFHeaderError):  # type: ignore[attr-defined]
            self._check_zeros(start + tarfile.BLOCKSIZE)
        elif isinstance(error, tarfile.TruncatedHeaderError):  # type: ignore[attr-defined]
            raise FormatError(f"truncated tar header at {self.where(start)}", start)
        elif isinstance(error, tarfile.InvalidHeaderError):  # type: ignore[attr-defined]
            raise FormatError(f"corrupt tar header at {self.where(start)}: {error}", start)
        # EmptyHeaderError: the data ends right after a member, without an
        # end-of-archive marker; as for GNU tar, that is an end.

    def _check_zeros(self, position: int) -> None:
        """Only zeros may follow the end-of-archive marker: anything else is a
        corrupt header or further members tarfile would drop."""
        while chunk := self._parse(lambda: self.archive.fileobj.read(1 << 20)):
            rest = chunk.lstrip(b"\0")
            if rest:
                at = position + len(chunk) - len(rest)
                raise FormatError(f"data after the end-of-archive marker at {self.where(at)} "
                                  "(a corrupt header, or concatenated tars)", at)
            position += len(chunk)

    def close(self) -> None:
        self.archive.close()


class TarTree(Tree):
    """A rootfs tar, plain or compressed, from a file or standard input.

    A plain tar file is read in place: headers first, then each file's data by
    seeking. A compressed tar or a pipe can only be read front to back, so the
    index comes from one streaming pass and the selected files' data from a
    second pass into a spool file, from which the writer takes them in its own
    order. Either way, memory does not grow with the size of the data.

    The data of a regular file is found by the header offset of the member that
    holds it (for a hardlink, its target's at the time of the link): a name
    redefined later, or a link to a link, cannot lead tarfile anywhere else.
    Parent directories the tar lacks are added as GNU tar creates them (0755).
    """

    def __init__(self, path: str | Path):
        self._stream = self._open_source(path)
        self._label = "standard input" if str(path) == "-" else str(path)
        self._data_of: dict[str, int] = {}  # regular file -> offset of its data's member
        self._infos: dict[int, tarfile.TarInfo] = {}  # plain tar: those members
        self._plain: _TarMembers | None = None
        self._spool: BinaryIO | None = None
        self._spooled: dict[int, tuple[int, int]] = {}  # member offset -> spool range
        try:
            self._method = tar_compression(self._stream.read(tarfile.BLOCKSIZE))
            self._stream.seek(0)
            if self._method is None:
                self._plain = _TarMembers(self._stream, seekable=True, decompressed=False)
                entries = self._index(self._plain)
            else:
                with self._open_stream() as members:
                    entries = self._index(members)
        except (FormatError, OSError) as exc:
            self._stream.close()
            raise self._error(exc) from None
        super().__init__(entries, f"tar {self._label}")

    def _error(self, exc: Exception) -> RootfsError:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return RootfsError(f"cannot read rootfs tar {self._label}: {detail}")

    @staticmethod
    def _open_source(path: str | Path) -> BinaryIO:
        if str(path) == "-":
            # A pipe can be read once; keep a copy (compressed, as given) so the
            # data pass can run after the index pass.
            import tempfile  # here: the agent, which reads no tar, should not pay for it

            spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            while chunk := sys.stdin.buffer.read(1 << 20):
                spool.write(chunk)
            spool.seek(0)
            return spool
        try:
            return open(path, "rb")
        except OSError as exc:
            raise RootfsError(f"cannot open rootfs {path}: {exc.strerror}") from None

    @contextmanager
    def _open_stream(self) -> Iterator[_TarMembers]:
        from nbic.cpio.source import CHUNK, ByteSource, ChunkReader, DecompressedSource

        self._stream.seek(0)
        outer = ByteSource(self._stream, self._label)
        head = outer.peek(8)
        with DecompressedSource(outer, self._method, head) as inner:
            chunks = iter(lambda: inner.read_some(CHUNK), b"")
            members = _TarMembers(ChunkReader(chunks), seekable=False, decompressed=True)
            try:
                yield members
            finally:
                members.close()

    def _index(self, members: _TarMembers) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for info in members:
            parts = split_path(info.name)
            if not parts or ".." in parts:
                continue
            name = "/".join(parts)
            entry = self._entry(name, info, entries, members)
            if entry is not None:
                entries[name] = entry
            elif entries.pop(name, None) is not None:
                self._data_of.pop(name, None)  # redefined as what cpio cannot hold
        _add_missing_parents(entries)
        return entries

    def _entry(self, name: str, info: tarfile.TarInfo, entries: dict[str, Entry],
               members: _TarMembers) -> Entry | None:
        try:
            entry = entry_from_tarinfo(name, info)
        except FormatError as exc:
            raise FormatError(f"member at {members.where(info.offset)}: {exc}",
                              info.offset) from None
        if entry is None:
            return None
        if not info.islnk():
            if entry.type is FileType.FILE:
                self._data_of[name] = info.offset
                if self._plain is not None:
                    self._infos[info.offset] = info
            else:
                self._data_of.pop(name, None)
            return entry
        # A tar hardlink names a member before it: the link is another name of
        # that member's inode, whatever becomes of its name later.
        target = "/".join(split_path(info.linkname))
        first = entries.get(target)
        if first is None or first.type is FileType.DIR:
            log.warning("tar %s: /%s is a hardlink to /%s, which is not a file before it:"
                        " left out", self._label, name, target)
            return None
        if first.type is not FileType.FILE:
            return replace(first, name=name)  # a link to a symlink or a device node
        key = self._data_of[target]
        if first.link_key is None:
            entries[target] = replace(first, link_key=key)
        self._data_of[name] = key
        return replace(entry, size=first.size, link_key=key)

    def prefetch(self, names: Iterable[str]) -> None:
        if self._plain is not None:
            return
        wanted = {self._data_of[name] for name in names if name in self._data_of}
        wanted -= self._spooled.keys()
        if not wanted:
            return
        if self._spool is None:
            import tempfile  # as in _open_source

            self._spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        try:
            with self._open_stream() as members:
                for info in members:
                    if info.offset not in wanted:
                        continue
                    data = members.archive.extractfile(info)
                    self._spool.seek(0, io.SEEK_END)
                    start = self._spool.tell()
                    while chunk := data.read(1 << 20):
                        self._spool.write(chunk)
                    self._spooled[info.offset] = (start, self._spool.tell() - start)
                    wanted.discard(info.offset)
                    if not wanted:
                        break
        except (FormatError, OSError, tarfile.TarError) as exc:
            raise self._error(exc) from None
        self._spool.flush()

    def open(self, name: str) -> BinaryIO:
        offset = self._data_of.get(name)
        if offset is None:
            raise RootfsError(f"/{name} has no data in {self.description}")
        if self._plain is not None:
            return self._plain.archive.extractfile(self._infos[offset])
        if self._spool is None or offset not in self._spooled:
            raise RootfsError(f"/{name} was not prefetched from {self.description}")
        start, size = self._spooled[offset]
        return io.BufferedReader(_SpoolSlice(self._spool.fileno(), start, size))

    def close(self) -> None:
        self._stream.close()
        if self._spool:
            self._spool.close()


class _SpoolSlice(io.RawIOBase):
    """A file's range of the spool file, read with pread: several can be open at
    once. Seekable, as the ELF reader needs."""

    def __init__(self, fd: int, start: int, size: int):
        self._fd = fd
        self._start = start
        self._position = start
        self._end = start + size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._start, io.SEEK_CUR: self._position,
                io.SEEK_END: self._end}[whence]
        if base + offset < self._start:
            raise ValueError(f"negative seek position {base + offset - self._start}")
        self._position = base + offset
        return self._position - self._start

    def tell(self) -> int:
        return self._position - self._start

    def readinto(self, buffer) -> int:
        size = min(len(buffer), self._end - self._position)
        if size <= 0:
            return 0
        data = os.pread(self._fd, size, self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def _add_missing_parents(entries: dict[str, Entry]) -> None:
    """Directories a tar implies but lacks (`tar -cf r.tar init bin/busybox`
    has no member for bin), as GNU tar creates them when extracting."""
    for name in list(entries):
        for parent in reversed(ancestors(name)):
            if parent in entries:
                break
            entries[parent] = Entry(parent, FileType.DIR, perm=0o755, nlink=2)


def open_tree(source: str | Path) -> Tree:
    """A directory, a tar file (by name, also compressed), or "-" for a tar on stdin."""
    text = str(source)
    if text == "-":
        return TarTree("-")
    if os.path.isdir(source):
        return DirTree(source)
    if not os.path.exists(source):
        raise RootfsError(f"rootfs {source} does not exist")
    if os.path.isfile(source):
        return TarTree(source)
    raise RootfsError(f"rootfs {source} is neither a directory nor a tar file")

