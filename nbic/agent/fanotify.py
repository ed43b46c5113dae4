"""The fanotify tracer: every file opened or executed on the session's overlay
filesystem, by any process, including ones that unshare their mounts.

One FAN_MARK_FILESYSTEM mark on the overlay; each event's fd names the file
through /proc/self/fd; after a file's first event an ignore mark on its inode
keeps the rest of the session fast. A queue overflow or a read error makes the
trace fail: a silently short trace would give a silently broken image.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import struct
import threading

from nbic.agent.syscalls import close_in_background, fanotify_init, fanotify_mark
from nbic.errors import NbicError

FAN_CLASS_NOTIF = 0x0
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_UNLIMITED_QUEUE = 0x10
FAN_UNLIMITED_MARKS = 0x20
FAN_MARK_ADD = 0x1
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_IGNORED_SURV_MODIFY = 0x40
FAN_MARK_FILESYSTEM = 0x100
FAN_OPEN = 0x20
FAN_OPEN_EXEC = 0x1000
FAN_Q_OVERFLOW = 0x4000
FAN_ONDIR = 0x40000000
FAN_EVENT_ON_CHILD = 0x08000000
AT_FDCWD = -100
FAN_NOFD = -1

# Opens only: every file a session reads it opened after the mark, and an access
# event per read() (each with an fd the kernel opens for it) is what made
# tracing cost more than the session before a file's ignore mark was in place.
EVENTS = FAN_OPEN | FAN_OPEN_EXEC
_METADATA = struct.Struct("=IBBHQii")
_DELETED = " (deleted)"


class TraceError(NbicError):
    """The trace is incomplete; no image may be made from it."""


class FanotifyTracer:
    def __init__(self, mount_point: str, *, bounded_queue: bool = False):
        self._root = mount_point.rstrip("/")
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_MARKS
        if not bounded_queue:
            flags |= FAN_UNLIMITED_QUEUE
        self._bounded = bounded_queue
        event_flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_LARGEFILE", 0)
        self._fd = fanotify_init(flags, event_flags)  # EPERM: not permitted here
        fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
                      EVENTS | FAN_ONDIR | FAN_EVENT_ON_CHILD, AT_FDCWD, mount_point)
        # path -> (call, program): the first use of each file.
        self.uses: dict[str, tuple[str, str]] = {}
        # pid -> the program it executed, from exec events: a short-lived process
        # is often gone before its events are read.
        self._programs: dict[int, str] = {}
        self.error: str | None = None
        # Written to by finish(): wakes the reader at once instead of at its next poll.
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="fanotify", daemon=True)

    def start(self) -> None:
        if not self._bounded:
            self._thread.start()

    def _run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.register(self._wake_read, select.POLLIN)
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._fd in ready:
                    self._drain()
                if self._wake_read in ready:
                    return
        except (OSError, TraceError) as exc:
            self.error = str(exc)

    def _drain(self) -> None:
        while True:
            try:
                buffer = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise TraceError(f"reading fanotify events failed: {exc}") from None
            if not buffer:
                return
            self._parse(buffer)

    def _parse(self, buffer: bytes) -> None:
        offset = 0
        while offset + _METADATA.size <= len(buffer):
            length, _version, _reserved, _meta_len, mask, fd, pid = \
                _METADATA.unpack_from(buffer, offset)
            offset += length
            if mask & FAN_Q_OVERFLOW:
                raise TraceError("the fanotify event queue overflowed: the trace is incomplete")
            if fd == FAN_NOFD:
                continue
            try:
                self._record(fd, mask, pid)
            finally:
                os.close(fd)

    def _inside(self, path: str) -> str | None:
        if path == self._root or path.startswith(self._root + "/"):
            return path[len(self._root):] or "/"
        return None

    def _program(self, pid: int) -> str:
        """The program of the process that caused an event, as the session names it."""
        if pid in self._programs:
            return self._programs[pid]
        try:
            return self._inside(os.readlink(f"/proc/{pid}/exe")) or "?"
        except OSError:
            return "a process gone since"

    def _record(self, fd: int, mask: int, pid: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(_DELETED):
            return
        inside = self._inside(path)
        if inside is not None and mask & FAN_OPEN_EXEC:
            # The process becomes this program (ld.so is opened for exec too, after it).
            self._programs.setdefault(pid, inside)
            self.uses.setdefault(inside, ("exec", inside))
        elif inside is not None and inside not in self.uses:
            self.uses[inside] = ("open", self._program(pid))
        # Later events for this inode say nothing new: stop them at the source.
        ignore = EVENTS | (FAN_ONDIR if mask & FAN_ONDIR else 0)
        with contextlib.suppress(OSError):  # only a speed-up; the event is recorded
            fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK |
                          FAN_MARK_IGNORED_SURV_MODIFY, ignore, fd, None)

    def finish(self) -> dict[str, tuple[str, str]]:
        """Stop after the session's processes are gone: drain all that is queued."""
        os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)
        try:
            self._drain()
        except (OSError, TraceError) as exc:
            self.error = self.error or str(exc)
        finally:
            close_in_background(self._fd)
        if self.error:
            raise TraceError(self.error)
        return self.uses
