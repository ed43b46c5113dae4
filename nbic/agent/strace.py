"""The ptrace tracer: the session runs under strace, whose log this module reads.

Slower than fanotify but it needs no fanotify permission (rootless Docker) and
also sees lookups that never open a file (stat, access, readlink, failed
opens). Paths are taken as the traced process saw them: per process, after its
chroot into the rootfs, relative names resolved against its working directory
or the directory fd strace decodes with -y.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import posixpath
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field

from nbic import elf
from nbic.cpio.entry import FileType
from nbic.errors import ElfError
from nbic.tree import Tree

STRACE = "strace"
_SYSCALLS = "%file,fchdir,clone,clone3,fork,vfork"


def command(log_path: str, session: list[str], chroot_dir: str) -> list[str]:
    """strace around `chroot DIR COMMAND...` (coreutils chroot from the builder image)."""
    # -q, not -qq: the log keeps the processes' exits, which MainExit follows.
    return [STRACE, "-f", "-q", "-y", "-s", "4096", "-e", f"trace={_SYSCALLS}",
            "-e", "signal=none", "-o", log_path, "--", "chroot", chroot_dir, *session]


_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(\S+)(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FD = re.compile(r"^(-?\d+|AT_FDCWD)<(.*?)>")  # -y decodes AT_FDCWD as the cwd
_EXIT = re.compile(r"^\+\+\+ (?:exited with (\d+)|killed by SIG(\w+)) ")
_UNFINISHED = " <unfinished ...>"
_FORKS = {"clone", "clone3", "fork", "vfork"}


def _unescape(text: str) -> str:
    return os.fsdecode(codecs.escape_decode(text.encode("utf-8", "surrogateescape"))[0])


class _Process:
    __slots__ = ("chrooted", "cwd", "moved", "program")

    def __init__(self, chrooted: bool = False, cwd: str = "/", program: str = "?"):
        self.chrooted = chrooted
        self.cwd = cwd
        self.moved = False  # changed directory itself
        self.program = program  # what it last executed, as the session names it


@dataclass
class StraceTrace:
    """The lookups of a strace log."""

    # path -> (call, program): the first lookup of each path that found it, and
    # of each that did not (ENOENT, ENOTDIR).
    used: dict[str, tuple[str, str]] = field(default_factory=dict)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    executed: set[str] = field(default_factory=set)  # programs execve'd successfully


_NOT_FOUND = (" ENOENT ", " ENOTDIR ")


class MainExit:
    """Follows a strace log as strace writes it: the exit status of the program
    strace started (the log's first process), once the log shows it. The session
    then ends as in fanotify mode, even if it left a daemon running. Made before
    strace starts: a log an earlier run left at `path` is removed, so its exit
    is never taken for this one's."""

    def __init__(self, path: str):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._path = path
        self._offset = 0
        self._partial = b""
        self._main: str | None = None

    def __call__(self) -> int | None:
        try:
            with open(self._path, "rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return None
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            match = _LINE.match(raw.decode("utf-8", "surrogateescape"))
            if not match:
                continue
            pid, rest = match.groups()
            self._main = self._main or pid
            ended = _EXIT.match(rest) if pid == self._main else None
            if ended:
                code, name = ended.groups()
                return int(code) if code is not None else \
                    128 + getattr(signal, f"SIG{name}", signal.SIGKILL).value
        return None


def parse(lines: Iterable[str], root: str) -> StraceTrace:
    """What the chrooted processes of a strace log looked up (paths inside `root`)."""
    root = root.rstrip("/")
    processes: dict[str, _Process] = {}
    pending: dict[str, str] = {}
    trace = StraceTrace()

    def inside(path: str) -> str | None:
        if path == root or path.startswith(root + "/"):
            return path[len(root):] or "/"
        return None

    for raw in lines:
        match = _LINE.match(raw.rstrip("\n"))
        if not match:
            continue
        pid, rest = match.groups()
        if rest.endswith(_UNFINISHED):
            pending[pid] = rest[: -len(_UNFINISHED)]
            continue
        resumed = _RESUMED.match(rest)
        if resumed:
            rest = pending.pop(pid, resumed.group(1) + "(") + resumed.group(2)
        call = _CALL.match(rest)
        if not call:
            continue
        name, args, result, tail = call.groups()
        if pid not in processes:
            # A child's first calls can be logged before its parent's clone()
            # returns. Only the first process runs outside the chroot, and it
            # forks nothing before chroot(), so a new process starts inside.
            processes[pid] = _Process(chrooted=bool(processes))
        process = processes[pid]
        if name in _FORKS and result.isdigit():
            child = processes.setdefault(result, _Process(process.chrooted))
            child.program = process.program
            if not child.moved:
                child.cwd = process.cwd
            continue
        if name == "chroot":
            if result == "0":
                process.chrooted = True
            continue
        if not process.chrooted:
            continue
        if name == "fchdir":
            fd = _FD.match(args)
            target = inside(fd.group(2)) if fd and result == "0" else None
            if target:
                process.cwd, process.moved = target, True
            continue
        strings = _STRING.findall(args)
        if not strings:
            continue
        path = _unescape(strings[0])
        if not path.startswith("/"):
            base = process.cwd
            fd = _FD.match(args)
            if fd and (name.endswith("at") or name in ("openat2", "statx", "faccessat2")):
                base = inside(fd.group(2)) or process.cwd
            path = posixpath.join(base, path)
        path = posixpath.normpath(path)
        if path.startswith("//"):
            path = path[1:]
        if result == "-1" and any(code in tail for code in _NOT_FOUND):
            trace.failed.setdefault(path, (name, process.program))
            continue
        trace.used.setdefault(path, (name, process.program))
        # With -y the returned fd shows where an open really landed.
        opened = _FD.match(result)
        if opened:
            landed = inside(opened.group(2))
            if landed:
                trace.used.setdefault(landed, (name, process.program))
        if name == "chdir" and result == "0":
            process.cwd, process.moved = path, True
        if name in ("execve", "execveat") and result == "0":
            trace.executed.add(path)
            process.program = path
    return trace


def complete(trace: StraceTrace, tree: Tree) -> dict[str, tuple[str, str]]:
    """The paths used, with what the kernel itself opens, which no system call
    shows: the real file behind each path, and the interpreters of executed
    programs (ELF PT_INTERP, a script's #! line)."""
    result = dict(trace.used)
    pending = [(program, program) for program in trace.executed]
    while pending:
        path, program = pending.pop()
        target = tree.resolve(path).target
        if target is None:
            continue
        result.setdefault("/" + target, ("exec", program))
        try:
            interpreter = elf.interpreter(tree, target)
        except ElfError:
            continue  # the kernel ran it: the session has replaced it since
        if interpreter and interpreter not in result:
            result[interpreter] = ("interpreter", program)
            pending.append((interpreter, program))
    for path, use in trace.used.items():
        target = tree.resolve(path).target
        if target and target != ".":
            result.setdefault("/" + target, use)
    for path, use in trace.failed.items():
        # A dangling symlink fails the lookup, yet it is in the rootfs: it goes in.
        link = tree.resolve(path, follow_last=False).target
        entry = tree.get(link) if link else None
        if entry is not None and entry.type is FileType.SYMLINK:
            result.setdefault(path, use)
    return result
