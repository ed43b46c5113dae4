"""The agent, inside the container: `python3 -m nbic.agent REQUEST_JSON` (the
host starts it as protocol.agent_command says). Its recipes:

session:      overlay the rootfs -> trace the session -> closure of what it used
              -> the image (newc) -> replay the check on it (and --fix) -> report
import-image: unpack an image into a cache volume (for `nbic verify`)
replay:       replay the check on a cached image alone (`nbic verify`)

Whatever happens, OUTPUT_DIR/result.json says how it went. Modules that only
some tasks need (replays, kernels, image imports) are imported where they are
used: every import is paid at each session's start.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import NoReturn

from nbic import serial
from nbic.agent import chroot, mounts
from nbic.agent.protocol import (
    CACHE,
    CACHE_ROOTFS,
    CHECK,
    IMAGE_CACHE,
    IMAGE_FILE,
    IMAGE_INPUT,
    IMPORT_DIR,
    INPUT_DIR,
    KERNEL_FILE,
    OUTPUT_DIR,
    READY_MARK,
    REPORT_FILE,
    RESULT_FILE,
    ROOTFS,
    SCRIPT,
    SESSION_DIR,
    EntryOrigin,
    Lookup,
    Replay,
    Request,
    Result,
    Session,
    Task,
    spec_input,
)
from nbic.agent.relay import Frames, session_output
from nbic.agent.rootfs_index import INDEX_FILE, merged_tree, write_index
from nbic.agent.syscalls import syncfs
from nbic.agent.trace import Trace, trace_session
from nbic.closure import ImagePlan, SessionInit, Wanted, plan
from nbic.cpio.archive import write_archive
from nbic.cpio.entry import Entry, FileType
from nbic.errors import NbicError
from nbic.selection import Verify
from nbic.tree import DirTree, Tree

REPLAY_ROOT = "/nbic-replay"  # a fresh tmpfs per replay of `run --verify`
DEVICES_FILE = "devices.json"  # beside rootfs/ in an image volume: its device nodes
FIX_ROUNDS = 5  # --fix: replays at most, each after adding what the last one missed


class _Collector(logging.Handler):
    """Messages go into the result for the host to show, not into the TTY."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.notices: list[str] = []
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        target = self.warnings if record.levelno >= logging.WARNING else self.notices
        target.append(record.getMessage())


class _Clock:
    """Seconds spent per phase, reported to the host (shown with --debug)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = round(self.seconds.get(phase, 0) + now - self._last, 3)
        self._last = now


def _require_ready(cache: str) -> None:
    if not os.path.exists(f"{cache}/{READY_MARK}"):
        raise NbicError("a cache volume is incomplete (an interrupted import?): remove it "
                        "with `nbic rootfs rm` or `nbic gc` and run again")


# --- session -------------------------------------------------------------------

def _session_argv(request: Request) -> list[str]:
    session = request.session
    if session.command:
        return list(session.command)
    if session.script:
        return [f"{mounts.SCRIPT_DIR}/{SCRIPT}"]
    if os.access(f"{ROOTFS}/chroot", os.X_OK):
        return ["/chroot"]
    return ["/bin/sh"]


def _output_of(frames: Frames | None) -> AbstractContextManager[None]:
    """Where a traced run's standard output goes: frames when the host reads
    them, else the container's standard output (a terminal's)."""
    return session_output(frames) if frames else nullcontext()


def session_task(request: Request, clock: _Clock, frames: Frames | None) -> Result:
    _require_ready(CACHE)
    mounts.overlay(CACHE_ROOTFS, ROOTFS, SESSION_DIR)
    mounts.session_mounts(ROOTFS)
    session = request.session
    if session.script:
        mounts.script_dir(ROOTFS, {SCRIPT: f"{INPUT_DIR}/{SCRIPT}"})
    prepared = _written()  # what the agent itself wrote (mount points, resolv.conf)
    clock.lap("setup")
    env = chroot.session_environment("xterm" if session.interactive else "vt100")
    with _output_of(frames):
        trace, tree = trace_session(ROOTFS, _session_argv(request), env, session.tracer,
                                    _session_tree)
    clock.lap("session")

    selection = request.selection
    used = [Wanted(path, _traced_reason(call, program))
            for path, (call, program) in sorted(trace.uses.items())]
    session_init = SessionInit(
        script=f"{INPUT_DIR}/{SCRIPT}" if session.script else None,
        program=session.command[0] if session.command else "/bin/sh",
        search_path=chroot.SESSION_PATH)
    locations = {location: spec_input(index)
                 for index, location in enumerate(selection.spec_locations())}

    def image_plan() -> ImagePlan:
        return plan(tree, selection, used=used,
                    session_devices=[(node, "opened by the session") for node in trace.devices],
                    session_init=session_init, spec_file=locations.__getitem__)

    image = image_plan()
    _write_image(image, tree, selection.epoch)
    clock.lap("image")
    replays: list[Replay] = []
    fixed: list[str] = []
    checked_in_rootfs = False
    while selection.verify is not Verify.OFF:
        replays.append(_replay_image(image, tree))
        clock.lap("verify")
        last = replays[-1]
        if last.status == 0 or selection.verify is Verify.CHECK or len(replays) >= FIX_ROUNDS:
            break
        added = [(lookup.path, f"verify --fix: looked up by {lookup.program} in the replay")
                 for lookup in last.missing if lookup.in_rootfs]
        if not checked_in_rootfs:
            # A lookup that never reaches the filesystem (CPython's finder lists a
            # directory and looks no further) names nothing: what the check uses
            # in the rootfs does.
            checked_in_rootfs = True
            with _output_of(frames):
                check_trace, tree = _trace_check(session)
            added += [(path, "verify --fix: " + _traced_reason(call, program).replace(
                "traced: ", "the check in the rootfs: "))
                for path, (call, program) in sorted(check_trace.uses.items())]
            clock.lap("verify")
        before = set(image.entries)
        for path, reason in added:
            if path not in fixed:
                used.append(Wanted(path, reason))
        image = image_plan()
        new = sorted(set(image.entries) - before)
        if not new:
            break
        for name in new:
            logging.getLogger("nbic").info("--fix: added /%s (%s)", name, image.reasons[name])
        fixed.extend("/" + name for name in new)
        _write_image(image, tree, selection.epoch)
        clock.lap("image")
    _write_report(request, image, tree, trace, replays, fixed, prepared)
    release = _write_kernel(tree, selection.kernel_release) if request.kernel else ""
    return Result(ok=True, session_status=trace.status, tracer=trace.tracer,
                  traced=len(trace.uses), entries=len(image.entries), replays=tuple(replays),
                  fixed=tuple(fixed), kernel_release=release)


def _write_kernel(tree: Tree, release: str | None) -> str:
    """The kernel the image's modules belong to, from the rootfs as the session
    left it (a session may install the kernel package), beside the image."""
    import shutil

    from nbic import modules

    kver, name = modules.kernel_image(tree, release)
    with tree.open(name) as source, open(f"{OUTPUT_DIR}/{KERNEL_FILE}", "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    return kver


def _trace_check(session: Session) -> tuple[Trace, DirTree]:
    """Run the check as a traced session in the rootfs, as the session left it."""
    mounts.session_mounts(ROOTFS)
    mounts.script_dir(ROOTFS, {CHECK: f"{INPUT_DIR}/{CHECK}"})
    env = chroot.session_environment("vt100")
    return trace_session(ROOTFS, [f"{mounts.SCRIPT_DIR}/{CHECK}"], env, session.tracer,
                         _session_tree)


def _session_tree() -> DirTree:
    """The rootfs as the session left it: the cached index with the session's
    changes laid over it (a volume imported before indexes existed is walked)."""
    index = f"{CACHE}/{INDEX_FILE}"
    if os.path.exists(index):
        return merged_tree(ROOTFS, index, mounts.upper_dir(SESSION_DIR))
    return DirTree(ROOTFS)


def _traced_reason(call: str, program: str) -> str:
    if call in ("exec", "execve", "execveat"):
        return "traced: executed"
    if call == "interpreter":
        return f"traced: the interpreter of {program}"
    return f"traced: {call} by {program}"


def _write_image(image: ImagePlan, tree: Tree, epoch: int | None) -> None:
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    with open(f"{OUTPUT_DIR}/{IMAGE_FILE}", "wb") as out:
        write_archive(out, image.members(tree), epoch=epoch)


def _replay_image(image: ImagePlan, tree: Tree) -> Replay:
    """Replay the check on the image just written, unpacked in a fresh tmpfs."""
    from nbic.agent import replay
    from nbic.tools.extract import extract

    mounts.tmpfs(REPLAY_ROOT)
    try:
        extract(f"{OUTPUT_DIR}/{IMAGE_FILE}", REPLAY_ROOT)
        devices = [entry for entry in image.entries.values() if entry.is_device]
        status, output, failed = replay.replay(REPLAY_ROOT, [], devices,
                                               script=f"{INPUT_DIR}/{CHECK}")
    finally:
        mounts.unmount(REPLAY_ROOT)
    return Replay(status, output, _lookups(failed, tree))


def _lookups(failed: dict[str, tuple[str, str]], tree: Tree | None) -> tuple[Lookup, ...]:
    return tuple(Lookup(path, program, tree is not None and (
        tree.resolve(path).target is not None
        or tree.resolve(path, follow_last=False).target is not None))
        for path, (_call, program) in sorted(failed.items()))


def _write_report(request: Request, image: ImagePlan, tree: Tree, trace: Trace,
                  replays: list[Replay], fixed: list[str], prepared: set[str]) -> None:
    """Every entry of the image with the reason it went in (`--report`) and its
    origin (`_origin`)."""
    entries = [{"path": entry.path, "type": _TYPE_NAMES[entry.type],
                "size": entry.size if entry.type is FileType.FILE else 0,
                "reason": image.reasons.get(name, ""),
                "origin": _origin(name, entry, tree, prepared)}
               for name, entry in sorted(image.entries.items(), key=lambda item: item[0])]
    report = {
        "entries": entries,
        "tracer": trace.tracer,
        "session_failed_lookups": [{"path": path, "call": call, "program": program}
                                   for path, (call, program) in sorted(trace.failed.items())],
        "verify": [serial.to_data(item) for item in replays],
        "fixed": fixed,
        "missing_from_lists": list(image.missing),
        "selection": serial.to_data(request.selection),  # as the agent received it
    }
    with open(f"{OUTPUT_DIR}/{REPORT_FILE}", "w", encoding="utf-8",
              errors="surrogateescape") as out:
        json.dump(report, out, indent=1)


def _written() -> set[str]:
    """The names in the overlay's upper layer: what was written to the rootfs."""
    upper = mounts.upper_dir(SESSION_DIR)
    names = set()
    for directory, subdirectories, files in os.walk(upper):
        for name in (*subdirectories, *files):
            names.add(os.path.relpath(os.path.join(directory, name), upper))
    return names


def _origin(name: str, entry: Entry, tree: Tree, prepared: set[str]) -> str:
    """An entry the session wrote is in the overlay's upper layer, unless the agent
    put it there before the session (`prepared`); a directory counts only if the
    rootfs lacks it (writing below one copies it up)."""
    if tree.get(name) != entry:
        return EntryOrigin.NBIC.value
    written = name not in prepared and os.path.lexists(
        f"{mounts.upper_dir(SESSION_DIR)}/{name}") and not (
        entry.type is FileType.DIR and os.path.lexists(f"{CACHE_ROOTFS}/{name}"))
    return (EntryOrigin.SESSION if written else EntryOrigin.ROOTFS).value


_TYPE_NAMES = {FileType.FILE: "file", FileType.DIR: "dir", FileType.SYMLINK: "symlink",
               FileType.CHAR: "char", FileType.BLOCK: "block", FileType.FIFO: "fifo",
               FileType.SOCKET: "socket"}


# --- imports -------------------------------------------------------------------

def index_task() -> Result:
    """Index a rootfs just imported into IMPORT_DIR, then mark the volume ready."""
    count = write_index(f"{IMPORT_DIR}/rootfs", f"{IMPORT_DIR}/{INDEX_FILE}")
    _mark_ready()
    return Result(ok=True, entries=count)


def _mark_ready() -> None:
    """Mark the volume in IMPORT_DIR ready once what is in it is on disk: after a
    crash a volume is either marked ready and whole, or not marked."""
    syncfs(IMPORT_DIR)
    open(f"{IMPORT_DIR}/{READY_MARK}", "w").close()


# --- nbic verify -----------------------------------------------------------------

def import_image_task() -> Result:
    """Unpack the image into the volume being imported; its device nodes are
    listed beside it, for replays where they could not be made."""
    from nbic.cpio.image import read_entries
    from nbic.tools.extract import extract

    target = f"{IMPORT_DIR}/rootfs"
    os.makedirs(target, exist_ok=True)
    image = f"{INPUT_DIR}/{IMAGE_INPUT}"
    count = extract(image, target).entries
    devices = [serial.to_data(entry) for entry in read_entries(image) if entry.is_device]
    with open(f"{IMPORT_DIR}/{DEVICES_FILE}", "w", encoding="utf-8") as out:
        json.dump(devices, out)
    _mark_ready()
    return Result(ok=True, entries=count)


def replay_task(request: Request, clock: _Clock) -> Result:
    from nbic.agent import replay

    _require_ready(IMAGE_CACHE)
    tree = None
    if request.with_rootfs:
        _require_ready(CACHE)
        tree = DirTree(CACHE_ROOTFS)
    mounts.overlay(f"{IMAGE_CACHE}/rootfs", ROOTFS, SESSION_DIR)
    with open(f"{IMAGE_CACHE}/{DEVICES_FILE}", encoding="utf-8") as stream:
        devices = [serial.from_data(Entry, item) for item in json.load(stream)]
    clock.lap("setup")
    check = request.session
    status, output, failed = replay.replay(
        ROOTFS, list(check.command), devices,
        script=f"{INPUT_DIR}/{CHECK}" if check.script else None)
    clock.lap("verify")
    return Result(ok=True, replays=(Replay(status, output, _lookups(failed, tree)),))


# --- main ------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    collector = _Collector()
    logger = logging.getLogger("nbic")
    logger.addHandler(collector)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    request = serial.loads(Request, argv[1])
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    # A session without a terminal sends its output and OUTPUT_DIR in frames.
    frames = Frames(os.dup(1)) if request.task is Task.SESSION and \
        not request.session.interactive else None
    clock = _Clock()
    try:
        match request.task:
            case Task.SESSION:
                result = session_task(request, clock, frames)
            case Task.INDEX:
                result = index_task()
            case Task.IMPORT_IMAGE:
                result = import_image_task()
            case Task.REPLAY:
                result = replay_task(request, clock)
    except (NbicError, OSError) as exc:
        result = Result(ok=False, error=str(exc))
    except Exception:
        result = Result(ok=False, error="agent failure:\n" + traceback.format_exc())
    result = replace(result, notices=tuple(collector.notices),
                     warnings=tuple(collector.warnings), seconds=clock.seconds)
    with open(f"{OUTPUT_DIR}/{RESULT_FILE}", "w", encoding="utf-8") as out:
        out.write(serial.dumps(result))
    if frames:
        frames.send_tree(OUTPUT_DIR)
    return 0 if result.ok else 2


def run() -> NoReturn:
    """The agent's process (protocol.agent_command): REQUEST_JSON is argv[1]."""
    status = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # The container ends with this process: the interpreter's teardown of every
    # module would only delay the host, which waits for the container to go.
    os._exit(status)


if __name__ == "__main__":
    run()
