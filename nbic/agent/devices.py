"""Which device nodes the session opened, and what they are.

fanotify reports no event for a device node (it would have to open the device
to hand out an event fd), and the container's /dev is not the overlay anyway.
inotify does report opens of device nodes: one IN_ONESHOT watch per node of
the session's /dev (at most one event each), read after the session. The
ptrace tracer sees them as paths under /dev like any other file.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct

from nbic.agent.syscalls import close_in_background
from nbic.cpio.entry import FileType
from nbic.devices import DeviceNode

IN_OPEN = 0x20
IN_ONESHOT = 0x80000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)


class DeviceWatch:
    """One-shot open watches on the device nodes under `dev` (the session's /dev)."""

    def __init__(self, dev: str):
        self._dev = dev
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._watches: dict[int, str] = {}
        for name in _device_names(dev):
            wd = _libc.inotify_add_watch(self._fd, os.fsencode(f"{dev}/{name}"),
                                         IN_OPEN | IN_ONESHOT)
            if wd >= 0:
                self._watches[wd] = name

    def opened(self) -> list[str]:
        """Names (relative to /dev) of the nodes opened so far."""
        names = []
        while True:
            try:
                buffer = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset + _EVENT.size <= len(buffer):
                wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
                offset += _EVENT.size + length
                if mask & IN_OPEN and wd in self._watches:
                    names.append(self._watches[wd])
        return sorted(set(names))

    def close(self) -> None:
        close_in_background(self._fd)


def _device_names(dev: str) -> list[str]:
    """Device nodes below /dev, by name relative to it; of devpts only ptmx (the
    terminals themselves belong to the session, not the image)."""
    names = []
    for directory, subdirs, files in os.walk(dev):
        relative = os.path.relpath(directory, dev)
        if relative in ("shm", "mqueue"):
            subdirs.clear()
            continue
        for name in files:
            path = name if relative == "." else f"{relative}/{name}"
            if relative == "pts" and name != "ptmx":
                continue
            if _node(f"{dev}/{path}") is not None:
                names.append(path)
    return names


def _node(path: str) -> tuple[FileType, int, int, int] | None:
    try:
        info = os.stat(path)  # /dev/ptmx may be a link to pts/ptmx
    except OSError:
        return None
    if not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)):
        return None
    kind = FileType.CHAR if stat.S_ISCHR(info.st_mode) else FileType.BLOCK
    return kind, os.major(info.st_rdev), os.minor(info.st_rdev), stat.S_IMODE(info.st_mode)


def device_node(dev: str, name: str) -> DeviceNode | None:
    """The image's node for a device the session opened as /dev/NAME (followed
    where it is a link, as /dev/ptmx -> pts/ptmx is in containers)."""
    if name.startswith("pts/"):
        if name != "pts/ptmx":
            return None
        name = "ptmx"
    found = _node(f"{dev}/{name}")
    if found is None:
        return None
    kind, major, minor, perm = found
    if name == "ptmx":
        perm = 0o666  # devpts's own ptmx is 0000: the usable mode of /dev/ptmx
    return DeviceNode(f"dev/{name}", kind, major, minor, perm)
