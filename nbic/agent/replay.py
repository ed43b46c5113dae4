"""The replay check: a program run on an image's contents alone, under strace.

It proves the image holds what the program needs; when it does not, the
lookups that found nothing name what is missing. The root is the image as a
kernel would unpack it, with proc, sys, devpts and only the image's own
device nodes.
"""

from __future__ import annotations

import os

from nbic.agent import chroot, mounts, strace
from nbic.agent.protocol import SESSION_DIR
from nbic.closure import PSEUDO_FILESYSTEMS
from nbic.cpio.entry import Entry, split_path

STRACE_LOG = f"{SESSION_DIR}/replay.strace"
OUTPUT_LOG = f"{SESSION_DIR}/replay.out"
OUTPUT_TAIL = 16 << 10  # bytes of the check's output kept for the report


def replay(root: str, command: list[str], devices: list[Entry], *, script: str | None = None
           ) -> tuple[int, str, dict[str, tuple[str, str]]]:
    """Run the check chrooted in `root`: `command`, or with `script` (a file in the
    agent's container) that script; returns its status, the tail of its output,
    and the paths it looked up and did not find (path -> (call, program))."""
    mounts.replay_mounts(root, devices)
    argv = list(command)
    if script is not None:
        mounts.script_dir(root, {"check": script})
        argv = [f"{mounts.SCRIPT_DIR}/check"]
    with open(OUTPUT_LOG, "wb") as output:
        status = chroot.run(strace.command(STRACE_LOG, argv, root),
                            chroot.session_environment("vt100"), chroot_dir=None,
                            output=output.fileno(), ended=strace.MainExit(STRACE_LOG))
    chroot.kill_leftovers()
    mounts.unmount_below(root)
    with open(STRACE_LOG, encoding="utf-8", errors="surrogateescape") as log:
        failed = strace.parse(log, root).failed
    return status, _tail(OUTPUT_LOG), {path: use for path, use in failed.items()
                                       if not _ours(path)}


def _ours(path: str) -> bool:
    """Lookups in the replay's own mounts say nothing about the image."""
    name = "/".join(split_path(path))
    return any(name == top or name.startswith(top + "/")
               for top in (mounts.SCRIPT_DIR.strip("/"), *PSEUDO_FILESYSTEMS))


def _tail(path: str) -> str:
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        stream.seek(max(0, size - OUTPUT_TAIL))
        return stream.read().decode("utf-8", "replace")
