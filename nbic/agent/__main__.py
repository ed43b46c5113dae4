"""`python3 -m nbic.agent SPEC_JSON`: the session recipe, inside the container.

mount the overlay -> start the tracer -> run the session -> stop it all ->
closure of what was used -> tar of the image's entries for the host.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import time
import traceback

from nbic.agent import session, strace
from nbic.agent.fanotify import FanotifyTracer, TraceError
from nbic.agent.protocol import (
    CACHE_ROOTFS,
    IMAGE_TAR,
    INPUT_DIR,
    OUTPUT_DIR,
    READY_MARK,
    RESULT_FILE,
    ROOTFS,
    SESSION_DIR,
    TRACE_FILE,
    SessionResult,
    SessionSpec,
    Tracer,
)
from nbic.agent.syscalls import MNT_DETACH, MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, mount, umount
from nbic.closure import DEFAULT_DEVICES, ClosureConfig, parse_device, select
from nbic.cpio.archive import Member, order
from nbic.cpio.entry import Entry, FileType
from nbic.errors import NbicError
from nbic.tarstream import write_tar
from nbic.tree import DirTree

STRACE_LOG = f"{SESSION_DIR}/strace.log"
SCRIPT_DIR = "/.nbic"  # a tmpfs inside the rootfs: not on the traced filesystem


class _Collector(logging.Handler):
    """Warnings go into the result for the host to show, not into the TTY."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _mounts(spec: SessionSpec) -> None:
    """The session's world: the overlay, and proc, sys, dev and DNS inside it."""
    if not os.path.exists(f"{os.path.dirname(CACHE_ROOTFS)}/{READY_MARK}"):
        raise NbicError("the rootfs cache volume is incomplete (an interrupted import?): "
                        "remove it with `nbic rootfs rm` and run again")
    os.makedirs(SESSION_DIR, exist_ok=True)
    mount("tmpfs", SESSION_DIR, "tmpfs", 0, "mode=0755")
    for name in ("upper", "work"):
        os.mkdir(f"{SESSION_DIR}/{name}")
    os.makedirs(ROOTFS, exist_ok=True)
    mount("overlay", ROOTFS, "overlay", 0, f"lowerdir={CACHE_ROOTFS},"
          f"upperdir={SESSION_DIR}/upper,workdir={SESSION_DIR}/work")
    for target, fstype, source, flags in (
            ("proc", "proc", "proc", 0), ("sys", "sysfs", "sysfs", MS_RDONLY),
            ("dev", None, "/dev", MS_BIND | MS_REC)):
        path = f"{ROOTFS}/{target}"
        if os.path.islink(path):
            continue
        os.makedirs(path, exist_ok=True)
        mount(source, path, fstype, flags)
        if fstype == "proc":
            _protect_host(path)
    resolv = f"{ROOTFS}/etc/resolv.conf"
    # The session may need the network (apt-get); give it the container's DNS.
    if os.path.isdir(f"{ROOTFS}/etc") and not os.path.islink(resolv) \
            and os.path.exists("/etc/resolv.conf"):
        if not os.path.exists(resolv):
            open(resolv, "w").close()
        mount("/etc/resolv.conf", resolv, None, MS_BIND)
    if spec.script:
        os.makedirs(f"{ROOTFS}{SCRIPT_DIR}", exist_ok=True)
        mount("tmpfs", f"{ROOTFS}{SCRIPT_DIR}", "tmpfs", 0, "mode=0755")
        shutil.copy(f"{INPUT_DIR}/{spec.script}", f"{ROOTFS}{SCRIPT_DIR}/script")
        os.chmod(f"{ROOTFS}{SCRIPT_DIR}/script", 0o755)


def _protect_host(proc: str) -> None:
    """A fresh proc is not masked the way Docker masks the container's own: keep
    the session from reaching the real machine through it."""
    mount(f"{proc}/sys", f"{proc}/sys", None, MS_BIND | MS_REC)
    mount(f"{proc}/sys", f"{proc}/sys", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for name in ("sysrq-trigger", "kcore", "kmsg"):
        if os.path.exists(f"{proc}/{name}"):
            mount("/dev/null", f"{proc}/{name}", None, MS_BIND)


def _unmount_inside(root: str) -> None:
    """Undo every mount below the overlay, ours and any the session made (the
    seed's /chroot mounts proc itself), so the closure walks only the rootfs."""
    previous: list[str] | None = None
    while True:
        with open("/proc/self/mountinfo", encoding="utf-8") as table:
            points = [line.split()[4].encode().decode("unicode_escape")
                      for line in table]
        inside = sorted((p for p in points if p.startswith(root + "/")),
                        key=lambda p: p.count("/"), reverse=True)
        if not inside:
            return
        if inside == previous:
            raise OSError(f"cannot unmount {inside[0]} after the session")
        previous = inside
        for point in inside:
            # A mount stacked on another hides the lower one's submounts
            # (EINVAL here); they come back into reach on the next pass.
            with contextlib.suppress(OSError):
                umount(point, MNT_DETACH)


def _session_argv(spec: SessionSpec) -> list[str]:
    if spec.command:
        return list(spec.command)
    if spec.script:
        return [f"{SCRIPT_DIR}/script"]
    if os.access(f"{ROOTFS}/chroot", os.X_OK):
        return ["/chroot"]
    return ["/bin/sh"]


def _start_fanotify(spec: SessionSpec, notices: list[str]) -> FanotifyTracer | None:
    try:
        tracer = FanotifyTracer(ROOTFS, bounded_queue=spec.bounded_queue)
    except OSError as exc:
        if spec.tracer is Tracer.AUTO and exc.errno in (errno.EPERM, errno.ENOSYS,
                                                        errno.EINVAL):
            notices.append(f"fanotify is not permitted here ({exc.strerror}); "
                           "tracing with ptrace (strace) instead, which is slower")
            return None
        raise TraceError(f"cannot start the fanotify tracer: {exc}") from None
    tracer.start()
    return tracer


def _init_choice(spec: SessionSpec, tree: DirTree, notices: list[str]
                 ) -> tuple[str | None, Member | None]:
    """/init when the rootfs has none (nor a /chroot) and --init is not given:
    the session itself boots. A --script becomes /init; a command's program, or
    the shell, is linked as /init."""
    if spec.init or "init" in tree or "chroot" in tree:
        return spec.init, None
    if spec.script:
        script = f"{INPUT_DIR}/{spec.script}"
        info = os.stat(script)
        notices.append("no /init or /chroot in the rootfs: the session's script boots as /init")
        entry = Entry("init", FileType.FILE, perm=0o755, size=info.st_size,
                      mtime=int(info.st_mtime))
        return None, Member(entry, lambda: open(script, "rb"))
    program = spec.command[0] if spec.command else "/bin/sh"
    if "/" not in program:
        for directory in session.SESSION_PATH.split(":"):
            target = tree.resolve(f"{directory}/{program}").target
            entry = tree.get(target) if target else None
            if entry is not None and entry.type is FileType.FILE:
                program = f"{directory}/{program}"
                break
    notices.append(f"no /init or /chroot in the rootfs: {program} boots as /init "
                   "(give --init to choose)")
    return program, None


class _Clock:
    """Seconds spent per phase, reported to the host (shown with --debug)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


def _trace_session(spec: SessionSpec, notices: list[str], clock: _Clock
                   ) -> tuple[int, set[str], str, DirTree]:
    """Run the session under the tracer(s); returns its status, the traced paths,
    the tracer used, and the rootfs as the session left it."""
    _mounts(spec)
    fanotify = None
    if spec.tracer in (Tracer.AUTO, Tracer.FANOTIFY, Tracer.BOTH):
        fanotify = _start_fanotify(spec, notices)
    use_ptrace = spec.tracer in (Tracer.PTRACE, Tracer.BOTH) or (
        fanotify is None and spec.tracer is not Tracer.NONE)
    clock.lap("setup")
    argv = _session_argv(spec)
    env = session.session_environment(spec.term)
    if use_ptrace:
        status = session.run(strace.command(STRACE_LOG, argv, ROOTFS), env, chroot_dir=None)
    else:
        status = session.run(argv, env, chroot_dir=ROOTFS)
    session.kill_leftovers()
    clock.lap("session")

    traced: set[str] = set()
    if fanotify is not None:
        traced |= fanotify.finish()
    _unmount_inside(ROOTFS)
    tree = DirTree(ROOTFS)
    if use_ptrace:
        if not os.path.exists(STRACE_LOG):
            raise TraceError("strace left no log: the ptrace trace failed")
        with open(STRACE_LOG, encoding="utf-8", errors="surrogateescape") as log:
            traced |= strace.complete(strace.parse(log, ROOTFS), tree)
    tracer = "both" if fanotify and use_ptrace else (
        "ptrace" if use_ptrace else "fanotify" if fanotify else "none")
    traced.discard("/")
    traced = {path for path in traced
              if path != SCRIPT_DIR and not path.startswith(SCRIPT_DIR + "/")}
    clock.lap("trace")
    return status, traced, tracer, tree


def _image_members(spec: SessionSpec, tree: DirTree, traced: set[str],
                   notices: list[str]) -> list[Member]:
    # Files the session created and deleted were traced but are gone: drop
    # them quietly. Paths from the user's lists must exist.
    traced_present = [path for path in traced if tree.resolve(path).target is not None]
    init, init_member = _init_choice(spec, tree, notices)
    config = ClosureConfig(
        include=spec.include, exclude=spec.exclude,
        devices=DEFAULT_DEVICES + tuple(parse_device(text) for text in spec.devices),
        init=init, init_provided=init_member is not None, strict=spec.strict)
    selection = select(tree, [*sorted(traced_present), *spec.extra_paths], config)
    members = [Member(entry, (lambda name=name: tree.open(name))
                      if name not in selection.synthesized else None)
               for name, entry in selection.entries.items() if name != "init" or not init_member]
    if init_member:
        members.append(init_member)
    return order(members)


def run_session(spec: SessionSpec, collector: _Collector) -> SessionResult:
    notices: list[str] = []
    clock = _Clock()
    status, traced, tracer, tree = _trace_session(spec, notices, clock)
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    with open(f"{OUTPUT_DIR}/{TRACE_FILE}", "w", encoding="utf-8",
              errors="surrogateescape") as out:
        out.writelines(path + "\n" for path in sorted(traced))
    members = _image_members(spec, tree, traced, notices)
    clock.lap("closure")
    with open(f"{OUTPUT_DIR}/{IMAGE_TAR}", "wb") as out:
        count = write_tar(out, members)
    clock.lap("tar")
    return SessionResult(ok=True, session_status=status, tracer=tracer, traced=len(traced),
                         entries=count, warnings=tuple(collector.messages),
                         notices=tuple(notices), seconds=clock.seconds)


def main(argv: list[str]) -> int:
    collector = _Collector()
    logger = logging.getLogger("nbic")
    logger.addHandler(collector)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    spec = SessionSpec.from_json(argv[1])
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    try:
        result = run_session(spec, collector)
    except (NbicError, OSError) as exc:
        result = SessionResult(ok=False, error=str(exc), warnings=tuple(collector.messages))
    except Exception:
        result = SessionResult(ok=False, error="agent failure:\n" + traceback.format_exc())
    with open(f"{OUTPUT_DIR}/{RESULT_FILE}", "w", encoding="utf-8") as out:
        out.write(result.to_json())
    return 0 if result.ok else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
