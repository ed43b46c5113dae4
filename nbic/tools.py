"""The cpio tools: list, extract, du, diff and cat for initramfs images.

Every tool reads whatever nbic.cpio.image.ImageReader reads: one cpio archive
or several concatenated segments, plain or compressed, from a file or from
standard input ("-"). Where a name occurs more than once, the last occurrence
wins, as when the kernel unpacks the image.

`COMMANDS` maps a tool name to (help, add_arguments(parser), run(args) -> exit
status); nbic.cli turns it into `nbic cpio NAME` and the `cpio-NAME` scripts.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from nbic.cpio.entry import (
    TYPE_NAMES,
    Entry,
    FileType,
    ancestors,
    encode_name,
    landing_name,
    sort_key,
    split_path,
)
from nbic.cpio.image import ImageReader, open_image
from nbic.cpio.spec import format_spec, root_location
from nbic.errors import FormatError, NbicError, UnsafePathError, UsageError
from nbic.output import atomic_output, refuse_inputs
from nbic.usage import SizeReport, human_size, size_report

if TYPE_CHECKING:
    from nbic.packages import PackageReport

log = logging.getLogger("nbic")

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SIX_MONTHS = 6 * 30 * 24 * 60 * 60  # GNU cpio's notion of "recent"


# --- input and output ---------------------------------------------------------

@contextmanager
def _rereadable(path: str) -> Iterator[Callable[[], ImageReader]]:
    """A factory of fresh readers over the same image, for tools that read it twice.
    Standard input is first copied to a temporary file."""
    if path != "-":
        streams: list[BinaryIO] = []

        def fresh() -> ImageReader:
            try:
                stream = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
            except OSError as exc:
                raise NbicError(f"cannot open image {path}: {exc.strerror}") from None
            streams.append(stream)
            return ImageReader(stream, path)

        try:
            yield fresh
        finally:
            for stream in streams:
                stream.close()
        return
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)

        def fresh_spool() -> ImageReader:
            spool.seek(0)
            return ImageReader(spool, "standard input")

        yield fresh_spool


def _emit(line: str) -> None:
    """Print one line; names that are not valid UTF-8 go out as their original bytes."""
    try:
        sys.stdout.write(line + "\n")
    except UnicodeEncodeError:
        sys.stdout.flush()
        sys.stdout.buffer.write(encode_name(line + "\n"))


def _key(name: str) -> str:
    """The name an entry lands at: "./usr//bin" and "/usr/bin" are "usr/bin"."""
    return landing_name(name)


# --- the final state of an image (last occurrence wins) ----------------------

@dataclass
class _Item:
    entry: Entry
    size: int  # data size, hardlink groups resolved (symlinks: target length)
    digest: str  # sha256 of the data, hardlink groups resolved ("" when not hashed)


def _final_state(reader: ImageReader, *, hash_data: bool) -> dict[str, _Item]:
    """Every name of the image with the entry that wins for it and its data."""
    final: dict[str, tuple[Entry, int, str]] = {}
    groups: dict[object, tuple[int, str]] = {}  # link_key -> data of the group
    for entry in reader:
        digest = ""
        if entry.type is FileType.FILE and hash_data:
            hasher = hashlib.sha256()
            for chunk in reader.chunks():
                hasher.update(chunk)
            digest = hasher.hexdigest()
        if entry.link_key is not None and entry.size > 0:
            groups[entry.link_key] = (entry.size, digest)
        name = _key(entry.name)
        final.pop(name, None)  # keep dict order = order of the winning occurrences
        final[name] = (entry, entry.size, digest)
    result = {}
    for name, (entry, size, digest) in final.items():
        if entry.type is FileType.FILE:
            if entry.link_key is not None:
                size, digest = groups.get(entry.link_key, (0, _EMPTY_SHA256))
            elif hash_data and not size:
                digest = _EMPTY_SHA256
        result[name] = _Item(entry, size, digest)
    return result


# --- what cpio-extract makes of an image ------------------------------------------

class _Layout:
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


# --- list ----------------------------------------------------------------------

def _cpio_date(mtime: int, now: float) -> str:
    """The date column of `cpio -tv` (from ctime(3) in the local time zone)."""
    when = time.localtime(mtime)
    day = f"{_MONTHS[when.tm_mon - 1]} {when.tm_mday:2d}"
    if now - mtime > _SIX_MONTHS or now - mtime < 0:
        return f"{day}  {when.tm_year}"
    return f"{day} {when.tm_hour:02d}:{when.tm_min:02d}"


def long_format(entry: Entry, now: float | None = None) -> str:
    """One line of GNU `cpio -tv --numeric-uid-gid`."""
    now = int(time.time()) if now is None else now
    size = (f"{entry.rdevmajor:3d}, {entry.rdevminor:3d}" if entry.is_device
            else f"{entry.size:8d}")
    line = (f"{entry.mode_string()} {entry.nlink:3d} {entry.uid:<8d} {entry.gid:<8d} "
            f"{size} {_cpio_date(entry.mtime, now)} {entry.name}")
    if entry.type is FileType.SYMLINK:
        line += f" -> {entry.linkname}"
    return line


def _spec(reader: ImageReader) -> tuple[str, int]:
    """The spec list of the tree cpio-extract makes of the image, with files at
    ${NBIC_ROOT}/NAME, where it puts them. An entry it does not write is left
    out, with a warning; returns the list and how many were left out."""
    layout = _Layout()
    left_out = 0
    for entry in reader:
        reason = layout.place(entry)
        if reason is not None:
            left_out += 1
            log.warning("%s: %r left out: cpio-extract does not write it (%s)",
                        reader.location(entry), entry.name, reason)
    pairs = []
    for name in sorted(layout.entries, key=sort_key):
        entry = layout.entries[name]
        normalized = Entry(name, entry.type, perm=entry.perm, uid=entry.uid, gid=entry.gid,
                           linkname=entry.linkname, rdevmajor=entry.rdevmajor,
                           rdevminor=entry.rdevminor, link_key=entry.link_key)
        pairs.append((normalized, root_location(name)))
    return format_spec(pairs), left_out


def _add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-v", "--verbose", action="store_true",
                      help="long listing, as `cpio -tv --numeric-uid-gid`")
    mode.add_argument("--spec", action="store_true",
                      help="a gen_init_cpio spec list that rebuilds the image from the "
                           "tree cpio-extract makes of it (files at ${NBIC_ROOT}/NAME); "
                           "an entry cpio-extract refuses is left out, with a warning "
                           "and exit status 1")
    mode.add_argument("--segments", action="store_true",
                      help="one line per cpio archive: index, compression, byte offset, "
                           "entry count")


def run_list(args: argparse.Namespace) -> int:
    refuse_inputs(["-"], [args.image])
    with open_image(args.image) as reader:
        if args.spec:
            # Whole before printed: an entry no spec list can hold leaves no half list.
            text, left_out = _spec(reader)
            for line in text.splitlines():
                _emit(line)
            if left_out:
                sys.stdout.flush()
                name = "standard input" if args.image == "-" else args.image
                raise NbicError(f"{name}: {left_out} " + (
                    "entry left out of the spec list (cpio-extract does not write it)"
                    if left_out == 1 else
                    "entries left out of the spec list (cpio-extract does not write them)"))
        elif args.segments:
            counts: dict[int, int] = {}
            for entry in reader:
                counts[entry.archive] = counts.get(entry.archive, 0) + 1
            for segment in reader.segments:
                _emit(f"{segment.index} {segment.compression.value} {segment.offset} "
                      f"{counts.get(segment.index, 0)}")
        elif args.verbose:
            now = int(time.time())  # time(NULL), as GNU cpio
            for entry in reader:
                _emit(long_format(entry, now))
        else:
            for entry in reader:
                _emit(entry.name)
    sys.stdout.flush()
    return 0


# --- extract -------------------------------------------------------------------

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
        self._layout = _Layout()

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


def _add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    parser.add_argument("dir", help="directory to extract into (created if missing)")


def run_extract(args: argparse.Namespace) -> int:
    result = extract(args.image, args.dir)
    if result.skipped:
        name = "standard input" if args.image == "-" else args.image
        raise NbicError(f"{name}: {result.skipped} of {result.entries} entries were not "
                        "extracted")
    return 0


# --- du --------------------------------------------------------------------------

def _add_du_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    parser.add_argument("--depth", type=int, default=2, metavar="N",
                        help="directory levels to show (default 2)")
    parser.add_argument("--top", type=int, default=20, metavar="N",
                        help="how many of the largest files to show (default 20)")
    parser.add_argument("--by-package", metavar="ROOTFS",
                        help="each Debian package's share instead, by the dpkg database of "
                             "the rootfs (a directory or a tar) the image was made from")
    parser.add_argument("-b", "--bytes", action="store_true", help="sizes in bytes")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object (schema: docs/size-reports.md)")


def run_du(args: argparse.Namespace) -> int:
    if args.depth < 0 or args.top < 0:
        raise UsageError("--depth and --top must not be negative")
    refuse_inputs(["-"], [args.image])
    if args.by_package:
        # Imported here: the rootfs readers cost the other tools' start-up time.
        from nbic.packages import package_report

        report: PackageReport | SizeReport = package_report(args.image, args.by_package)
    else:
        report = size_report(args.image, depth=args.depth, top=args.top, top_directories=None)
    if args.json:
        _emit(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.format(str if args.bytes else human_size).splitlines():
            _emit(line)
    sys.stdout.flush()
    return 0


# --- diff ------------------------------------------------------------------------

def _describe_changes(old: _Item, new: _Item, *, mtime: bool) -> list[str]:
    a, b = old.entry, new.entry
    if a.type is not b.type:
        return [f"type {TYPE_NAMES[a.type]} -> {TYPE_NAMES[b.type]}"]
    changes = []
    if a.perm != b.perm:
        changes.append(f"mode {a.perm:04o} -> {b.perm:04o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        changes.append(f"owner {a.uid}:{a.gid} -> {b.uid}:{b.gid}")
    if a.type is FileType.FILE:
        if old.size != new.size:
            changes.append(f"size {old.size} -> {new.size}")
        elif old.digest != new.digest:
            changes.append("content")
    if a.type is FileType.SYMLINK and a.linkname != b.linkname:
        changes.append(f"target {a.linkname} -> {b.linkname}")
    if a.is_device and (a.rdevmajor, a.rdevminor) != (b.rdevmajor, b.rdevminor):
        changes.append(f"device {a.rdevmajor},{a.rdevminor} -> {b.rdevmajor},{b.rdevminor}")
    if mtime and a.mtime != b.mtime:
        changes.append(f"mtime {_iso(a.mtime)} -> {_iso(b.mtime)}")
    return changes


def _iso(when: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def diff_images(path_a: str, path_b: str, *, mtime: bool = False) -> list[str]:
    """The difference lines between two images (empty when they are equal)."""
    if path_a == "-" and path_b == "-":
        raise UsageError("only one of the two images can be standard input")
    with open_image(path_a) as reader:
        state_a = _final_state(reader, hash_data=True)
    with open_image(path_b) as reader:
        state_b = _final_state(reader, hash_data=True)
    lines = []
    for name in sorted(state_a.keys() | state_b.keys(), key=sort_key):
        if name not in state_a:
            lines.append(f"+ {name}")
        elif name not in state_b:
            lines.append(f"- {name}")
        else:
            changes = _describe_changes(state_a[name], state_b[name], mtime=mtime)
            if changes:
                lines.append(f"~ {name}: {', '.join(changes)}")
    return lines


def _add_diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="the old image (\"-\" for standard input)")
    parser.add_argument("b", metavar="B", help="the new image")
    parser.add_argument("--mtime", action="store_true", help="also compare mtimes")
    # Like diff(1): 1 means "different", so trouble must say 2.
    parser.set_defaults(error_status=2)


def run_diff(args: argparse.Namespace) -> int:
    refuse_inputs(["-"], [args.a, args.b])
    lines = diff_images(args.a, args.b, mtime=args.mtime)
    for line in lines:
        _emit(line)
    sys.stdout.flush()
    return 1 if lines else 0


# --- cat -------------------------------------------------------------------------

def cat(path: str, member: str, out: BinaryIO) -> int:
    """Copy the content of regular file `member` of the image to `out`; returns its size."""
    wanted = _key(member)
    with _rereadable(path) as fresh:
        found: Entry | None = None
        carriers: dict[object, Entry] = {}  # link_key -> last entry with the group's data
        for entry in fresh():
            if entry.link_key is not None and entry.size:
                carriers[entry.link_key] = entry
            if _key(entry.name) == wanted:
                found = entry
        shown = "/" if wanted == "." else "/" + wanted
        if found is None:
            raise NbicError(f"{shown}: no such entry in {path}")
        if found.type is FileType.SYMLINK:
            raise NbicError(f"{shown}: is a symlink to {found.linkname} "
                            "(cat the target instead)")
        if found.type is not FileType.FILE:
            raise NbicError(f"{shown}: is a {TYPE_NAMES[found.type]}, not a regular file")
        source = found
        if found.link_key is not None:
            source = carriers.get(found.link_key, found)
        if not source.size:
            return 0
        reader = fresh()
        copied = 0
        for entry in reader:
            if (entry.archive, entry.offset) == (source.archive, source.offset):
                for chunk in reader.chunks():
                    out.write(chunk)
                    copied += len(chunk)
                break
        return copied


def _add_cat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    parser.add_argument("path", help="the file to print, with or without a leading /")


def run_cat(args: argparse.Namespace) -> int:
    refuse_inputs(["-"], [args.image])
    with atomic_output("-") as out:
        cat(args.image, args.path, out)
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "list": ("list the entries of an image, like cpio -t", _add_list_arguments, run_list),
    "extract": ("extract an image into a directory, refusing unsafe names",
                _add_extract_arguments, run_extract),
    "du": ("show where the bytes of an image are", _add_du_arguments, run_du),
    "diff": ("compare two images entry by entry (exit 1 when they differ)",
             _add_diff_arguments, run_diff),
    "cat": ("print a regular file of an image", _add_cat_arguments, run_cat),
}
