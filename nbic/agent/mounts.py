"""The mounts of a session's world and of a replay's, and their undoing.

A session sees the rootfs through an overlay (the cache volume read-only
below, a tmpfs above), with proc, sys and the container's /dev inside it. A
replay sees the image alone: proc, sys, a fresh devpts, and only the image's
own device nodes, as a kernel booting the image would show them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterable

from nbic.agent.syscalls import MNT_DETACH, MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, mount, umount
from nbic.cpio.entry import Entry
from nbic.errors import NbicError

log = logging.getLogger("nbic")

SCRIPT_DIR = "/.nbic"  # a tmpfs inside the root for the session's scripts: never traced
_REFUSED = (errno.EPERM, errno.EACCES)


def overlay(lower: str, target: str, scratch: str) -> None:
    """`target` shows `lower` with writes going to a tmpfs under `scratch`."""
    os.makedirs(scratch, exist_ok=True)
    mount("tmpfs", scratch, "tmpfs", 0, "mode=0755")
    for name in ("upper", "work"):
        os.mkdir(f"{scratch}/{name}")
    os.makedirs(target, exist_ok=True)
    mount("overlay", target, "overlay", 0,
          f"lowerdir={lower},upperdir={upper_dir(scratch)},workdir={scratch}/work")


def upper_dir(scratch: str) -> str:
    """Where an overlay made by `overlay` keeps what was written to it."""
    return f"{scratch}/upper"


def tmpfs(target: str) -> None:
    os.makedirs(target, exist_ok=True)
    mount("tmpfs", target, "tmpfs", 0, "mode=0755")


def session_mounts(root: str) -> None:
    """proc, sys and the container's /dev inside the session's root, and its DNS."""
    _proc(root)
    _sys(root)
    dev = f"{root}/dev"
    if not os.path.islink(dev):
        os.makedirs(dev, exist_ok=True)
        mount("/dev", dev, None, MS_BIND | MS_REC)
    resolv = f"{root}/etc/resolv.conf"
    # The session may need the network (apt-get); give it the container's DNS.
    if os.path.isdir(f"{root}/etc") and not os.path.islink(resolv) \
            and os.path.exists("/etc/resolv.conf"):
        if not os.path.exists(resolv):
            open(resolv, "w").close()
        mount("/etc/resolv.conf", resolv, None, MS_BIND)


def replay_mounts(root: str, devices: Iterable[Entry]) -> None:
    """proc, sys, a new devpts, and the image's device nodes: where a node could not
    be made (rootless engines refuse mknod), the container's node of the same
    numbers is bound onto a placeholder."""
    _proc(root)
    _sys(root)
    pts = f"{root}/dev/pts"
    if os.path.isdir(pts) and not os.path.islink(pts):
        mount("devpts", pts, "devpts", 0, "newinstance,ptmxmode=0666,mode=0620")
    for entry in devices:
        _provide_device(root, entry)


def _proc(root: str) -> None:
    path = f"{root}/proc"
    if os.path.isdir(path) and not os.path.islink(path):
        mount("proc", path, "proc")
        protect_host(path)


def _sys(root: str) -> None:
    path = f"{root}/sys"
    if not os.path.isdir(path) or os.path.islink(path):
        return
    try:
        mount("sysfs", path, "sysfs")
    except OSError as exc:
        # A user namespace (rootless engines) may mount sysfs read-only only;
        # the session would have found it read-only anyway.
        if exc.errno not in _REFUSED:
            raise
        mount("sysfs", path, "sysfs", MS_RDONLY)


def protect_host(proc: str) -> None:
    """A fresh proc is not masked the way the engine masks the container's own:
    keep the session from reaching the real machine through it."""
    mount(f"{proc}/sys", f"{proc}/sys", None, MS_BIND | MS_REC)
    mount(f"{proc}/sys", f"{proc}/sys", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for name in ("sysrq-trigger", "kcore", "kmsg"):
        if os.path.exists(f"{proc}/{name}"):
            mount("/dev/null", f"{proc}/{name}", None, MS_BIND)


def _provide_device(root: str, entry: Entry) -> None:
    path = f"{root}/{entry.name}"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    wanted = (entry.type.value, os.makedev(entry.rdevmajor, entry.rdevminor))
    if info is not None and (stat.S_IFMT(info.st_mode), info.st_rdev) == wanted:
        return
    host = _container_node(*wanted)
    if host is None:
        log.warning("the replay has no %s: the container has no such node", entry.path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    open(path, "w").close()
    mount(host, path, None, MS_BIND)


def _container_node(kind: int, rdev: int) -> str | None:
    for name in sorted(os.listdir("/dev")):
        try:
            info = os.lstat(f"/dev/{name}")
        except OSError:
            continue
        if (stat.S_IFMT(info.st_mode), info.st_rdev) == (kind, rdev):
            return f"/dev/{name}"
    return None


def script_dir(root: str, scripts: dict[str, str]) -> None:
    """A tmpfs at SCRIPT_DIR in the root holding copies of `scripts` (name: source)."""
    target = f"{root}{SCRIPT_DIR}"
    os.makedirs(target, exist_ok=True)
    mount("tmpfs", target, "tmpfs", 0, "mode=0755")
    for name, source in scripts.items():
        shutil.copy(source, f"{target}/{name}")
        os.chmod(f"{target}/{name}", 0o755)


def unmount_below(root: str) -> None:
    """Undo every mount below `root`, ours and any the session made (the seed's
    /chroot mounts proc itself), so that what is left is the root's own tree."""
    previous: list[str] | None = None
    while True:
        with open("/proc/self/mountinfo", encoding="utf-8") as table:
            points = [line.split()[4].encode().decode("unicode_escape") for line in table]
        inside = sorted((p for p in points if p.startswith(root + "/")),
                        key=lambda p: p.count("/"), reverse=True)
        if not inside:
            return
        if inside == previous:
            raise NbicError(f"cannot unmount {inside[0]} after the session")
        previous = inside
        for point in inside:
            # A mount stacked on another hides the lower one's submounts
            # (EINVAL here); they come back into reach on the next pass.
            with contextlib.suppress(OSError):
                umount(point, MNT_DETACH)


def unmount(target: str) -> None:
    unmount_below(target)
    umount(target, MNT_DETACH)
