"""Running the session under its tracers, and what they saw.

fanotify (one filesystem mark on the overlay) sees every file opened or
executed at little cost; an inotify watch per device node sees the devices
opened; strace (ptrace) sees every lookup, found or not, at a higher cost,
and is the fallback where fanotify is not permitted (rootless engines).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from nbic.agent import chroot, mounts
from nbic.agent.devices import DeviceWatch, device_node
from nbic.agent.fanotify import FanotifyTracer, TraceError
from nbic.agent.protocol import SESSION_DIR, Tracer
from nbic.cpio.entry import split_path
from nbic.devices import DeviceNode
from nbic.tree import DirTree

log = logging.getLogger("nbic")

STRACE_LOG = f"{SESSION_DIR}/strace.log"
# fanotify refused: EPERM (no CAP_SYS_ADMIN in the initial namespace), ENOSYS,
# EINVAL (old kernel), EOPNOTSUPP (a mark on this filesystem is not supported).
_FANOTIFY_REFUSED = (errno.EPERM, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


@dataclass
class Trace:
    """What the tracers saw of one session."""

    status: int  # the session's exit status
    tracer: str  # which tracers ran
    uses: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (call, program)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # lookups that found nothing
    devices: list[DeviceNode] = field(default_factory=list)


def trace_session(root: str, argv: list[str], env: dict[str, str], choice: Tracer,
                  tree_after: Callable[[], DirTree]) -> tuple[Trace, DirTree]:
    """Run argv chrooted in `root` under the chosen tracers; returns what they saw
    and the root's tree as the session left it (`tree_after`, called once every
    mount below the root is undone)."""
    fanotify = _start_fanotify(root, choice) if choice in (
        Tracer.AUTO, Tracer.FANOTIFY, Tracer.BOTH) else None
    use_ptrace = choice in (Tracer.PTRACE, Tracer.BOTH) or (
        fanotify is None and choice is not Tracer.NONE)
    watch = DeviceWatch(f"{root}/dev") if fanotify is not None else None
    chroot.release_terminal()
    if use_ptrace:
        from nbic.agent import strace  # imported only for the ptrace tracer

        status = chroot.run(strace.command(STRACE_LOG, argv, root), env, chroot_dir=None,
                            ended=strace.MainExit(STRACE_LOG))
    else:
        status = chroot.run(argv, env, chroot_dir=root)
    chroot.kill_leftovers()

    names = "both" if fanotify and use_ptrace else (
        "ptrace" if use_ptrace else "fanotify" if fanotify else "none")
    trace = Trace(status, names)
    if fanotify is not None:
        trace.uses.update(fanotify.finish())
    strace_trace = None
    if use_ptrace:
        if not os.path.exists(STRACE_LOG):
            raise TraceError("strace left no log: the ptrace trace failed")
        with open(STRACE_LOG, encoding="utf-8", errors="surrogateescape") as lines:
            strace_trace = strace.parse(lines, root)
        # The session's own scripts go with their tmpfs: read their #! lines now.
        for path in [path for path in strace_trace.executed if _ours(path)]:
            interpreter = _shebang(f"{root}{path}")
            if interpreter:
                strace_trace.executed.add(interpreter)
    # The devices are read while the session's /dev is still mounted.
    opened = set(watch.opened()) if watch is not None else set()
    if watch is not None:
        watch.close()
    if strace_trace is not None:
        opened.update(name for name in map(_device_name, strace_trace.used) if name)
    trace.devices = [node for node in map(lambda name: device_node(f"{root}/dev", name),
                                          sorted(opened)) if node is not None]
    mounts.unmount_below(root)
    tree = tree_after()
    if strace_trace is not None:
        for path, use in strace.complete(strace_trace, tree).items():
            trace.uses.setdefault(path, use)
        trace.failed = strace_trace.failed
    for paths in (trace.uses, trace.failed):
        for path in [p for p in paths if _ours(p)]:
            del paths[path]
    return trace, tree


def _start_fanotify(root: str, choice: Tracer) -> FanotifyTracer | None:
    try:
        tracer = FanotifyTracer(root)
    except OSError as exc:
        if choice is Tracer.AUTO and exc.errno in _FANOTIFY_REFUSED:
            log.info("fanotify is not permitted here (%s); tracing with ptrace (strace) "
                     "instead, which is slower", exc.strerror)
            return None
        raise TraceError(f"cannot start the fanotify tracer: {exc}") from None
    tracer.start()
    return tracer


def _shebang(path: str) -> str | None:
    try:
        with open(path, "rb") as script:
            head = script.read(256)
    except OSError:
        return None
    words = head[2:].split(b"\n", 1)[0].split() if head.startswith(b"#!") else []
    return os.fsdecode(words[0]) if words else None


def _device_name(path: str) -> str | None:
    parts = split_path(path)
    return "/".join(parts[1:]) if len(parts) > 1 and parts[0] == "dev" else None


def _ours(path: str) -> bool:
    """The root itself and the session's script directory are not the session's use."""
    name = "/".join(split_path(path))
    script_dir = mounts.SCRIPT_DIR.strip("/")
    return not name or name == script_dir or name.startswith(script_dir + "/")
