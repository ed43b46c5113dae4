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
from typing import BinaryIO

from nbic.cpio.entry import Entry, FileType, encode_name, landing_name, sort_key, split_path
from nbic.cpio.image import ImageReader, open_image
from nbic.cpio.spec import format_spec
from nbic.errors import NbicError, UnsafePathError, UsageError
from nbic.usage import human_size, size_report

log = logging.getLogger("nbic")

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SIX_MONTHS = 6 * 30 * 24 * 60 * 60  # GNU cpio's notion of "recent"
_TYPE_NAMES = {
    FileType.FIFO: "fifo", FileType.CHAR: "char device", FileType.DIR: "directory",
    FileType.BLOCK: "block device", FileType.FILE: "file", FileType.SYMLINK: "symlink",
    FileType.SOCKET: "socket",
}


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


def _spec(state: dict[str, _Item]) -> str:
    """The image's final state as a spec list; files at ${NBIC_ROOT}/NAME, where
    cpio-extract puts them."""
    pairs = []
    for name in sorted(state, key=sort_key):
        entry = state[name].entry
        if ".." in name.split("/"):
            raise UnsafePathError(f"entry {entry.name!r} contains '..': no spec list for it")
        normalized = Entry(name, entry.type, perm=entry.perm, uid=entry.uid, gid=entry.gid,
                           linkname=entry.linkname, rdevmajor=entry.rdevmajor,
                           rdevminor=entry.rdevminor, link_key=entry.link_key)
        pairs.append((normalized, "${NBIC_ROOT}/" + name))
    return format_spec(pairs)


def _add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-v", "--verbose", action="store_true",
                      help="long listing, as `cpio -tv --numeric-uid-gid`")
    mode.add_argument("--spec", action="store_true",
                      help="a gen_init_cpio spec list that rebuilds the image from an "
                           "extracted tree (files at ${NBIC_ROOT}/NAME)")
    mode.add_argument("--segments", action="store_true",
                      help="one line per cpio archive: index, compression, byte offset, "
                           "entry count")


def run_list(args: argparse.Namespace) -> int:
    with open_image(args.image) as reader:
        if args.spec:
            # Whole before printed: an entry no spec list can hold leaves no half list.
            for line in _spec(_final_state(reader, hash_data=False)).splitlines():
                _emit(line)
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


def _safe_parts(name: str) -> list[str]:
    if name.startswith("/"):
        raise UnsafePathError(f"refusing to extract {name!r}: absolute name")
    parts = split_path(name)
    if ".." in parts:
        raise UnsafePathError(f"refusing to extract {name!r}: name contains '..'")
    return parts


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Extractor:
    """Writes entries below one directory, never outside it: every path is
    opened component by component from the target with O_NOFOLLOW."""

    def __init__(self, target: str):
        try:
            os.makedirs(target, exist_ok=True)
            self._root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise NbicError(f"cannot extract into {target}: {exc.strerror}") from None
        self._as_root = os.geteuid() == 0
        self._anchors: dict[object, list[str]] = {}  # link_key -> first extracted name
        self._dirs: dict[tuple[str, ...], Entry] = {}

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
        parts = _safe_parts(entry.name)
        if not parts:
            if entry.type is not FileType.DIR:
                raise NbicError(f"entry {entry.name!r} names the target itself but is a "
                                f"{_TYPE_NAMES[entry.type]}, not a directory")
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

    def _clear(self, parent: int, base: str, entry: Entry) -> None:
        """Remove what is in the way of `entry` (kernel semantics: later wins)."""
        info = _lstat(base, parent)
        if info is None:
            return
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(base, dir_fd=parent)
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
                if info is not None:
                    os.unlink(base, dir_fd=parent)
                os.mkdir(base, 0o700, dir_fd=parent)
            self._dirs[tuple(parts)] = entry
            return
        self._clear(parent, base, entry)
        if kind is FileType.FILE:
            self._add_file(parent, parts, entry, reader)
            return
        if kind is FileType.SYMLINK:
            os.symlink(entry.linkname, base, dir_fd=parent)
            if self._as_root:
                os.chown(base, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(base, (entry.mtime, entry.mtime), dir_fd=parent, follow_symlinks=False)
            return
        if kind is FileType.FIFO:
            os.mkfifo(base, 0o600, dir_fd=parent)
        elif not self._as_root:
            log.warning("%s: skipping %s (creating it needs root)", entry.name,
                        _TYPE_NAMES[kind])
            return
        else:
            os.mknod(base, int(kind) | 0o600, os.makedev(entry.rdevmajor, entry.rdevminor),
                     dir_fd=parent)
        # A node we just created, in a directory opened without following symlinks.
        if self._as_root:
            os.chown(base, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(base, entry.perm, dir_fd=parent)
        os.utime(base, (entry.mtime, entry.mtime), dir_fd=parent, follow_symlinks=False)

    def _link_to_anchor(self, parent: int, base: str, entry: Entry) -> bool:
        """Make `base` another name of its hardlink group's first name, if that exists."""
        anchor = self._anchors.get(entry.link_key)
        if anchor is None:
            return False
        anchor_parent = self._parent(anchor, entry, create=False)
        if anchor_parent is None:
            return False
        try:
            info = _lstat(anchor[-1], anchor_parent)
            if info is None or not stat.S_ISREG(info.st_mode):
                return False
            os.link(anchor[-1], base, src_dir_fd=anchor_parent, dst_dir_fd=parent,
                    follow_symlinks=False)
            return True
        finally:
            os.close(anchor_parent)

    def _add_file(self, parent: int, parts: list[str], entry: Entry, reader: ImageReader
                  ) -> None:
        base = parts[-1]
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        if entry.link_key is not None and self._link_to_anchor(parent, base, entry):
            # Data (usually on the last name) goes into the shared inode.
            flags |= os.O_TRUNC if entry.size else 0
            try:
                fd = os.open(base, flags, dir_fd=parent)
            except PermissionError:  # the group's mode is already set (not root)
                os.chmod(base, 0o600, dir_fd=parent)
                fd = os.open(base, flags, dir_fd=parent)
        else:
            fd = os.open(base, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=parent)
            if entry.link_key is not None:
                self._anchors[entry.link_key] = parts
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

    def finish(self) -> None:
        """Directory modes, owners and mtimes, deepest first (children are done)."""
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
                raise NbicError(f"cannot set the mode of {entry.name!r}: {exc.strerror}"
                                ) from None


def extract(path: str, target: str) -> int:
    """Extract the image at `path` ("-": standard input) below `target`;
    returns the number of entries."""
    extractor = _Extractor(target)
    count = 0
    try:
        with open_image(path) as reader:
            for entry in reader:
                extractor.add(entry, reader)
                count += 1
        extractor.finish()
    finally:
        extractor.close()
    return count


def _add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    parser.add_argument("dir", help="directory to extract into (created if missing)")


def run_extract(args: argparse.Namespace) -> int:
    extract(args.image, args.dir)
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
    if args.by_package:
        # Imported here: the rootfs readers cost the other tools' start-up time.
        from nbic.packages import package_report

        report = package_report(args.image, args.by_package)
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
        return [f"type {_TYPE_NAMES[a.type]} -> {_TYPE_NAMES[b.type]}"]
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
            raise NbicError(f"{shown}: is a {_TYPE_NAMES[found.type]}, not a regular file")
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
    cat(args.image, args.path, sys.stdout.buffer)
    sys.stdout.buffer.flush()
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
