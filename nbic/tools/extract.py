"""cpio-extract: an image into a directory, never outside it."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from nbic.cpio.entry import TYPE_NAMES, Entry, FileType, split_path
from nbic.cpio.image import ImageReader, open_image
from nbic.errors import FormatError, NbicError, UnsafePathError
from nbic.tools.common import Layout

log = logging.getLogger("nbic")

HELP = "extract an image into a directory, refusing unsafe names"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A handle on a name's own inode (a symlink stays a symlink), good for fstat and,
# through /proc/self/fd, for chmod, chown, utime and reopening.
_PIN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# Linux's dev_t keeps 12 bits of major and 20 of minor; newc has room for 32 each.
_MAX_MAJOR = (1 << 12) - 1
_MAX_MINOR = (1 << 20) - 1


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _identity(info: os.stat_result) -> tuple[int, int] | None:
    """A regular file's inode; None for anything else."""
    return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


_PROC_FDS = "/proc/self/fd"


def _via(fd: int) -> str:
    """A path to the inode `fd` holds, whatever its name leads to by now."""
    return f"{_PROC_FDS}/{fd}"


def _device_number(entry: Entry) -> int:
    if not entry.is_device:
        return 0
    if entry.rdevmajor > _MAX_MAJOR or entry.rdevminor > _MAX_MINOR:
        raise NbicError(f"cannot extract {entry.name!r}: device {entry.rdevmajor}:"
                        f"{entry.rdevminor} does not fit Linux's device numbers (major at "
                        f"most {_MAX_MAJOR}, minor at most {_MAX_MINOR})")
    return os.makedev(entry.rdevmajor, entry.rdevminor)


class _Extractor:
    """Writes entries below one directory, never outside it. Every path is opened
    component by component from the target with O_NOFOLLOW. A node made by name
    (symlink, FIFO, device, a further hardlink) gets its owner, mode and data
    through a descriptor checked to hold that very node: another user who can
    write to the target may swap any name for a symlink or a hardlink at any time.
    """

    def __init__(self, target: str):
        if not os.path.isdir(_PROC_FDS):
            raise NbicError(f"cannot extract: /proc is not mounted (attributes are set "
                            f"through {_PROC_FDS})")
        try:
            os.makedirs(target, exist_ok=True)
            self._root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise NbicError(f"cannot extract into {target}: {exc.strerror}") from None
        self._euid = os.geteuid()
        self._as_root = self._euid == 0
        # link_key -> the group's first extracted name and its inode, while it stays
        self._anchors: dict[object, tuple[list[str], tuple[int, int]]] = {}
        self._anchored: dict[tuple[str, ...], object] = {}  # first name -> link_key
        self._dirs: dict[tuple[str, ...], Entry] = {}
        self._layout = Layout()

    def close(self) -> None:
        os.close(self._root)

    def _parent(self, parts: list[str], entry: Entry, *, create: bool = True) -> int | None:
        """An fd of the directory holding parts[-1]; missing parents are created."""
        fd = os.dup(self._root)
        try:
            for depth, part in enumerate(parts[:-1], 1):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/".join(parts[:depth])
                    info = _lstat(part, fd)
                    what = "a symlink" if info and stat.S_ISLNK(info.st_mode) else \
                        "not a directory"
                    raise UnsafePathError(f"refusing to extract {entry.name!r}: {where} is "
                                          f"{what} (nothing is written through it)") from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def add(self, entry: Entry, reader: ImageReader) -> None:
        """Extract one entry. An NbicError other than the reader's FormatError means
        this entry was not extracted and the next one can be."""
        reason = self._layout.place(entry)
        if reason is not None:
            raise UnsafePathError(f"refusing to extract {entry.name!r}: {reason}")
        parts = split_path(entry.name)
        if not parts:
            self._dirs[()] = entry
            return
        try:
            parent = self._parent(parts, entry)
            assert parent is not None
            try:
                self._add_at(parent, parts, entry, reader)
            finally:
                os.close(parent)
        except OSError as exc:
            raise NbicError(f"cannot extract {entry.name!r}: {exc.strerror}") from None

    def _clear(self, parent: int, parts: list[str], entry: Entry) -> None:
        """Remove what is in the way of `entry` (kernel semantics: later wins)."""
        base = parts[-1]
        info = _lstat(base, parent)
        if info is None:
            return
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(base, dir_fd=parent)
            # Its inode number may come back for another file: no longer an anchor.
            link_key = self._anchored.pop(tuple(parts), None)
            if link_key is not None:
                del self._anchors[link_key]
            return
        try:
            os.rmdir(base, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise NbicError(f"cannot extract {entry.name!r}: a non-empty directory of "
                                "that name is in the way") from None
            raise

    def _add_at(self, parent: int, parts: list[str], entry: Entry, reader: ImageReader
                ) -> None:
        base = parts[-1]
        kind = entry.type
        if kind is FileType.DIR:
            info = _lstat(base, parent)
            if info is None or not stat.S_ISDIR(info.st_mode):
                self._clear(parent, parts, entry)
                os.mkdir(base, 0o700, dir_fd=parent)
            self._dirs[tuple(parts)] = entry
            return
        if kind in (FileType.CHAR, FileType.BLOCK, FileType.SOCKET) and not self._as_root:
            raise NbicError(f"cannot extract {entry.name!r}: creating a {TYPE_NAMES[kind]} "
                            "needs root")
        device = _device_number(entry)
        self._clear(parent, parts, entry)
        if kind is FileType.FILE:
            self._add_file(parent, parts, entry, reader)
            return
        if kind is FileType.SYMLINK:
            os.symlink(entry.linkname, base, dir_fd=parent)
        elif kind is FileType.FIFO:
            os.mkfifo(base, 0o600, dir_fd=parent)
        else:
            os.mknod(base, int(kind) | 0o600, device, dir_fd=parent)

        def made_here(info: os.stat_result) -> bool:
            return (stat.S_IFMT(info.st_mode) == kind and info.st_nlink == 1
                    and info.st_uid == self._euid
                    and (not entry.is_device or info.st_rdev == device))

        pin = self._pin(parent, base, entry, made_here)
        try:
            if self._as_root:
                os.chown(_via(pin), entry.uid, entry.gid)
            if kind is not FileType.SYMLINK:  # a symlink has no mode of its own
                os.chmod(_via(pin), entry.perm)
            os.utime(_via(pin), (entry.mtime, entry.mtime))
        finally:
            os.close(pin)

    @staticmethod
    def _pin(parent: int, base: str, entry: Entry,
             expected: Callable[[os.stat_result], bool]) -> int:
        """An O_PATH descriptor of `base`, checked by `expected` to be the node this
        run just put there."""
        try:
            fd = os.open(base, _PIN_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            if expected(os.fstat(fd)):
                return fd
            os.close(fd)
        raise UnsafePathError(f"{entry.name!r} was replaced or removed by someone else "
                              "while it was extracted; left alone")

    def _link_to_anchor(self, parent: int, base: str, entry: Entry) -> tuple[int, int] | None:
        """Make `base` another name of its hardlink group's first name, if that still
        holds the group's inode; returns the inode's identity."""
        found = self._anchors.get(entry.link_key)
        if found is None:
            return None
        anchor, identity = found
        try:
            anchor_parent = self._parent(anchor, entry, create=False)
        except UnsafePathError:
            return None  # a later entry made a parent of the first name a symlink
        if anchor_parent is None:
            return None
        try:
            info = _lstat(anchor[-1], anchor_parent)
            if info is None or _identity(info) != identity:
                return None  # gone, or changed by someone else
            os.link(anchor[-1], base, src_dir_fd=anchor_parent, dst_dir_fd=parent,
                    follow_symlinks=False)
            return identity
        finally:
            os.close(anchor_parent)

    def _open_linked(self, parent: int, base: str, entry: Entry, identity: tuple[int, int]
                     ) -> int:
        """A writable descriptor of a name just linked, checked to be the group's inode."""
        pin = self._pin(parent, base, entry, lambda info: _identity(info) == identity)
        try:
            try:
                fd = os.open(_via(pin), os.O_WRONLY | os.O_CLOEXEC)
            except PermissionError:  # the group's mode is already set (not root)
                os.chmod(_via(pin), 0o600)
                fd = os.open(_via(pin), os.O_WRONLY | os.O_CLOEXEC)
        finally:
            os.close(pin)
        if entry.size:  # the group's data (usually on its last name) goes in whole
            os.ftruncate(fd, 0)
        return fd

    def _add_file(self, parent: int, parts: list[str], entry: Entry, reader: ImageReader
                  ) -> None:
        base = parts[-1]
        identity = self._link_to_anchor(parent, base, entry) \
            if entry.link_key is not None else None
        if identity is not None:
            fd = self._open_linked(parent, base, entry, identity)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(base, flags, 0o600, dir_fd=parent)
            if entry.link_key is not None:
                info = os.fstat(fd)
                self._anchors[entry.link_key] = (parts, (info.st_dev, info.st_ino))
                self._anchored[tuple(parts)] = entry.link_key
        try:
            for chunk in reader.chunks():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            self._set_attributes(fd, entry)
        finally:
            os.close(fd)

    def _set_attributes(self, fd: int, entry: Entry) -> None:
        if self._as_root:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.perm)
        os.utime(fd, (entry.mtime, entry.mtime))

    def finish(self) -> list[tuple[Entry, str]]:
        """Directory modes, owners and mtimes, deepest first (children are done);
        returns the directories that could not be set, with why. A directory is
        opened by name without following symlinks: whatever directory holds the
        name by then gets them, always one inside the target."""
        failed = []
        for parts, entry in sorted(self._dirs.items(), key=lambda item: -len(item[0])):
            try:
                if not parts:
                    fd = os.dup(self._root)
                else:
                    parent = self._parent(list(parts), entry, create=False)
                    if parent is None:
                        continue
                    try:
                        fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
                    except OSError:
                        continue  # replaced by a later entry
                    finally:
                        os.close(parent)
                try:
                    self._set_attributes(fd, entry)
                finally:
                    os.close(fd)
            except UnsafePathError:
                continue  # a parent was replaced by a symlink later on
            except OSError as exc:
                failed.append((entry, f"cannot set the mode of {entry.name!r}: "
                                      f"{exc.strerror}"))
        return failed


@dataclass(frozen=True)
class ExtractResult:
    entries: int
    skipped: int  # entries not extracted (each reported in a warning)


def extract(path: str, target: str) -> ExtractResult:
    """Extract the image at `path` ("-": standard input) below `target`, as GNU cpio
    does: an entry that cannot be extracted gets a warning naming it and its byte
    offset, and the rest goes on. Directory modes are set at the end, also when
    the image breaks off (its FormatError is raised after that)."""
    extractor = _Extractor(target)
    entries = skipped = 0
    try:
        with open_image(path) as reader:
            try:
                for entry in reader:
                    entries += 1
                    try:
                        extractor.add(entry, reader)
                    except FormatError:
                        raise
                    except NbicError as exc:
                        skipped += 1
                        log.warning("%s: %s", reader.location(entry), exc)
            finally:
                for entry, message in extractor.finish():
                    skipped += 1
                    log.warning("%s: %s", reader.location(entry), message)
    finally:
        extractor.close()
    return ExtractResult(entries, skipped)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    parser.add_argument("dir", help="directory to extract into (created if missing)")


def run(args: argparse.Namespace) -> int:
    result = extract(args.image, args.dir)
    if result.skipped:
        name = "standard input" if args.image == "-" else args.image
        raise NbicError(f"{name}: {result.skipped} of {result.entries} entries were not "
                        "extracted")
    return 0
