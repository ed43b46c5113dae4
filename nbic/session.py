"""`nbic run`: a traced session in a container, and the image of what it used.

The recipe: connect to Docker, find the builder image, make sure the rootfs is
cached, run the agent's session in a container (attached to the terminal or
streaming its output), then stream the agent's tar of the selected entries
straight into the cpio writer and compressor.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nbic import engine, rootfs, terminal
from nbic.agent.protocol import (
    IMAGE_TAR,
    INPUT_DIR,
    OUTPUT_DIR,
    RESULT_FILE,
    TRACE_FILE,
    SessionResult,
    SessionSpec,
    Tracer,
)
from nbic.closure import parse_device
from nbic.cpio.archive import source_date_epoch
from nbic.cpio.compress import (
    CompressionSpec,
    compression_for_path,
    parse_compression,
)
from nbic.errors import NbicError, UsageError
from nbic.output import atomic_output, write_image
from nbic.pack import add_selection_arguments, read_file_list
from nbic.tarstream import members_from_tar

log = logging.getLogger("nbic")

HELP = "run a traced session in a rootfs and compile what it used into an image"
SCRIPT_NAME = "script"


class SessionError(NbicError):
    """The session could not be traced or imaged."""


@dataclass(frozen=True)
class RunConfig:
    output: str
    rootfs: str | None = None
    command: tuple[str, ...] = ()
    script: str | None = None
    tracer: Tracer = Tracer.AUTO
    interactive: bool = False
    file_lists: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    init: str | None = None
    strict: bool = False
    compression: CompressionSpec | None = None
    epoch: int | None = None
    trace_out: str | None = None
    # Test hooks: a bounded fanotify queue; fanotify refused as rootless Docker does.
    bounded_queue: bool = False
    deny_fanotify: bool = False


@dataclass(frozen=True)
class RunResult:
    session: SessionResult
    entries: int
    image_bytes: int | None


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM, and SIGHUP (the terminal went away), unwind like Ctrl-C, so every
    cleanup runs: no container is left behind."""
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt)
                for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _spec(config: RunConfig) -> SessionSpec:
    extra = tuple(path for list_path in config.file_lists for path in read_file_list(list_path))
    for text in config.devices:
        parse_device(text)  # refuse a bad --dev before any container starts
    return SessionSpec(
        command=config.command, script=SCRIPT_NAME if config.script else None,
        tracer=config.tracer, interactive=config.interactive,
        term="xterm" if config.interactive else "vt100", extra_paths=extra,
        include=config.include, exclude=config.exclude, devices=config.devices,
        init=config.init, strict=config.strict, bounded_queue=config.bounded_queue)


def run_session(config: RunConfig) -> RunResult:
    spec = _spec(config)
    script = None
    if config.script:
        try:
            script = Path(config.script).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --script {config.script}: {exc.strerror}") from None
    source = rootfs.parse_source(config.rootfs)
    compression = config.compression or compression_for_path(config.output)
    with _signals_interrupt():
        client = engine.connect()
        engine.remove_stale_containers(client)  # of runs killed outright (kill -9)
        builder = engine.builder_image(client)
        volume = rootfs.ensure(client, source, builder)
        with engine.container(
                client, builder, ["python3", "-m", "nbic.agent", spec.to_json()],
                role="session", volumes={volume: {"bind": "/cache", "mode": "ro"}},
                tty=config.interactive, stdin_open=config.interactive,
                hostname="nbic",
                **engine.agent_privileges(deny_fanotify=config.deny_fanotify)) as created:
            if script is not None:
                engine.put_files(created, "/", {f"{INPUT_DIR.strip('/')}/{SCRIPT_NAME}": script})
            if config.interactive:
                terminal.interact(created)
            else:
                engine.start(created, "starting the session")
                _relay(created)
            status = engine.wait(created)
            result = _result(created, status)
            if config.trace_out:
                with engine.fetch_file(created, f"{OUTPUT_DIR}/{TRACE_FILE}") as trace, \
                        atomic_output(config.trace_out) as out:
                    shutil.copyfileobj(trace, out)
            with engine.fetch_file(created, f"{OUTPUT_DIR}/{IMAGE_TAR}") as stream:
                stats, size = write_image(config.output, members_from_tar(stream), compression,
                                          epoch=config.epoch, presorted=True)
    log.info("wrote %s: %d entries from %d traced paths (%s tracer), %s bytes as %s",
             config.output, stats.entries, result.traced, result.tracer,
             size if size is not None else "?", compression)
    if result.session_status:
        log.warning("the session exited with status %d; the image holds what it used",
                    result.session_status)
    return RunResult(result, stats.entries, size)


def _relay(created) -> None:
    for out, err in engine.output(created):
        if out:
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
        if err:
            sys.stderr.buffer.write(err)
            sys.stderr.buffer.flush()


def _result(created, status: int) -> SessionResult:
    try:
        with engine.fetch_file(created, f"{OUTPUT_DIR}/{RESULT_FILE}") as stream:
            result = SessionResult.from_json(stream.read().decode("utf-8"))
    except engine.EngineError:
        raise SessionError(f"the session agent ended ({status}) without a result:\n"
                           f"{engine.logs_tail(created)}") from None
    log.debug("session phases (s): %s", result.seconds)
    for notice in result.notices:
        log.info("%s", notice)
    for warning in result.warnings:
        log.warning("%s", warning)
    if not result.ok:
        raise SessionError(result.error)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rootfs", metavar="SRC",
                        help="FILE.tar[.gz|.xz|.zst], a directory, docker:IMAGE or "
                        f"debootstrap:SUITE (default: {rootfs.DEFAULT_SOURCE}, cached)")
    parser.add_argument("-o", "--output", metavar="OUT", required=True,
                        help="image to write (.cpio, .cpio.zst, .gz, .xz, .lz4)")
    parser.add_argument("--script", metavar="FILE",
                        help="run this script (copied in) as the session")
    parser.add_argument("--tracer", choices=[t.value for t in Tracer], default="auto",
                        help="fanotify (default where permitted), ptrace (strace: also "
                        "stat-only lookups), both, or none (only --files-from lists)")
    add_selection_arguments(parser)
    parser.add_argument("--trace-out", metavar="FILE", help="save the traced path list")
    parser.add_argument("--test-bounded-queue", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--test-deny-fanotify", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- COMMAND [ARGS...]: run this instead of /chroot or a shell")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    command = tuple(args.command[1:] if args.command[:1] == ["--"] else args.command)
    if command and args.script:
        raise UsageError("give a command or --script, not both")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    return RunConfig(
        output=args.output, rootfs=args.rootfs, command=command, script=args.script,
        tracer=Tracer(args.tracer), interactive=interactive,
        file_lists=tuple(args.files_from), include=tuple(args.include),
        exclude=tuple(args.exclude), devices=tuple(args.dev), init=args.init,
        strict=args.strict,
        compression=parse_compression(args.compress) if args.compress else None,
        epoch=source_date_epoch(), trace_out=args.trace_out,
        bounded_queue=args.test_bounded_queue, deny_fanotify=args.test_deny_fanotify)


def run(args: argparse.Namespace) -> int:
    result = run_session(config_from_args(args))
    return result.session.session_status or 0
