"""The served directory: a request names a file, and only a regular file
inside DIR is ever opened.

A name is split at "/"; empty parts are skipped, so a leading "/" means
DIR's top, never the host's root. A NUL byte or a ".." part is refused
outright. The file is then reached one part at a time under directory
descriptors with O_NOFOLLOW, so the kernel never follows a symlink for us: a
symlink is read and followed here, and only while it stays inside DIR (a
relative target whose ".." parts never climb above DIR's top). An absolute
target, or one that climbs out, is refused. If a part is swapped for a
symlink between the look and the open, the open fails: nothing leaks.

DIR itself is opened by its path on every request, so a directory that
`nbic netboot` or anyone else rewrites is served as it is now.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from nbic.errors import NbicError

MAX_SYMLINK_HOPS = 40  # as the kernel's ELOOP limit

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refusal(enum.Enum):
    BAD_NAME = "bad name"  # NUL, a ".." part, undecodable
    OUTSIDE = "leads outside the served directory"  # a symlink out of DIR
    NOT_FOUND = "not found"
    NOT_A_FILE = "not a regular file"
    UNREADABLE = "permission denied"


class RefusedError(NbicError):
    """A request that is not answered with a file; `refusal` says why."""

    def __init__(self, refusal: Refusal, name: bytes):
        self.refusal = refusal
        super().__init__(f"{name!r}: {refusal.value}")


@dataclass(frozen=True)
class ServedFile:
    """An open regular file; the caller closes `fd`."""

    fd: int
    size: int
    mtime: float


class ServedDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NbicError(f"{root} is not a directory")

    def open(self, name: bytes) -> ServedFile:
        """The regular file `name` names inside the directory (see the module's rules)."""
        if b"\0" in name or b".." in name.split(b"/"):
            raise RefusedError(Refusal.BAD_NAME, name)
        try:
            top = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise RefusedError(Refusal.NOT_FOUND, name) from None
        stack = [top]  # descriptors from DIR's top down to the current directory
        try:
            fd = _walk(stack, deque(name.split(b"/")), name)
        finally:
            for dir_fd in stack:
                os.close(dir_fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # it changed since it was looked at
            os.close(fd)
            raise RefusedError(Refusal.NOT_A_FILE, name)
        return ServedFile(fd, info.st_size, info.st_mtime)


def _walk(stack: list[int], pending: deque[bytes], name: bytes) -> int:
    """Follow `pending` parts from the directory on top of `stack` to a regular
    file and open it; directories entered are pushed on `stack`."""
    hops = 0
    while pending:
        part = pending.popleft()
        if part in (b"", b"."):
            continue
        if part == b"..":  # only ever from a symlink's target
            if len(stack) == 1:
                raise RefusedError(Refusal.OUTSIDE, name)
            os.close(stack.pop())
            continue
        try:
            info = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise RefusedError(Refusal.NOT_FOUND, name)
                target = os.readlink(part, dir_fd=stack[-1])
                if target.startswith(b"/"):
                    raise RefusedError(Refusal.OUTSIDE, name)
                pending.extendleft(reversed(target.split(b"/")))
            elif stat.S_ISDIR(info.st_mode):
                stack.append(os.open(part, _OPEN | os.O_DIRECTORY, dir_fd=stack[-1]))
            elif any(rest not in (b"", b".") for rest in pending):
                raise RefusedError(Refusal.NOT_FOUND, name)  # a file used as a directory
            elif not stat.S_ISREG(info.st_mode):
                raise RefusedError(Refusal.NOT_A_FILE, name)  # never open a FIFO or device
            else:
                return os.open(part, _OPEN | os.O_NONBLOCK, dir_fd=stack[-1])
        except OSError as exc:
            raise _refusal(exc, name) from None
    raise RefusedError(Refusal.NOT_A_FILE, name)  # the name ends at a directory


def _refusal(exc: OSError, name: bytes) -> RefusedError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return RefusedError(Refusal.UNREADABLE, name)
    # ENOENT; ELOOP or ENOTDIR when a part was swapped since it was looked at.
    return RefusedError(Refusal.NOT_FOUND, name)
