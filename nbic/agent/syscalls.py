"""The few Linux system calls the agent needs that os does not offer."""

from __future__ import annotations

import ctypes
import os
import threading

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.fanotify_init.argtypes = (ctypes.c_uint, ctypes.c_uint)
_libc.fanotify_mark.argtypes = (ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p)
_libc.syncfs.argtypes = (ctypes.c_int,)

MS_RDONLY = 1
MS_BIND = 4096
MS_REC = 16384
MS_REMOUNT = 32
MNT_DETACH = 2


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data)),
           f"mount {fstype or 'bind'} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_bytes(target), flags), f"umount {target}")


def fanotify_init(flags: int, event_flags: int) -> int:
    return _check(_libc.fanotify_init(flags, event_flags), "fanotify_init")


def fanotify_mark(fd: int, flags: int, mask: int, dirfd: int, path: str | None) -> None:
    _check(_libc.fanotify_mark(fd, flags, mask, dirfd, _bytes(path)), "fanotify_mark")


def syncfs(path: str) -> None:
    """Write out the filesystem holding `path` (only that one, unlike sync())."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check(_libc.syncfs(fd), f"syncfs {path}")
    finally:
        os.close(fd)


def close_in_background(fd: int) -> None:
    """Close a notification descriptor (inotify, fanotify) on a thread of its own:
    the close waits for the kernel to tear its marks down (an RCU grace period,
    10-20 ms here), which the session's result need not wait for."""
    threading.Thread(target=os.close, args=(fd,), name="close", daemon=True).start()
