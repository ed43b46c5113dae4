"""`nbic run`: a traced session in a container, and the image of what it used.

The recipe: connect to the engine, find the builder image, make sure the
rootfs is cached, run the agent's session in a container (attached to the
terminal or streaming its output), then fetch in one archive the agent's
result, its report and the uncompressed image, which is compressed on the way
into the output file. The output appears only when the agent (and the replay
check, with --verify) succeeded.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from nbic import engine, progress, rootfs, serial, terminal
from nbic import selection as selections
from nbic.agent.protocol import (
    CHECK,
    IMAGE_FILE,
    INPUT_DIR,
    KERNEL_FILE,
    OUTPUT_DIR,
    REPORT_FILE,
    RESULT_FILE,
    SCRIPT,
    Frame,
    FrameError,
    FrameReader,
    Request,
    Result,
    Session,
    Task,
    Tracer,
    agent_command,
    spec_input,
)
from nbic.cpio.compress import CompressionSpec, compressed_writer
from nbic.cpio.spec import open_location
from nbic.errors import NbicError, SpecError, UsageError
from nbic.output import (
    add_compression_argument,
    atomic_output,
    compression_from_args,
    refuse_inputs,
    signals_interrupt,
)
from nbic.selection import Selection, Verify
from nbic.tarstream import tar_members

log = logging.getLogger("nbic")

HELP = "run a traced session in a rootfs and compile what it used into an image"
CHUNK = 1 << 20


class SessionError(NbicError):
    """The session could not be traced or imaged."""


@dataclass(frozen=True)
class RunConfig:
    output: str
    compression: CompressionSpec
    rootfs: str | None = None
    session: Session = field(default_factory=Session)
    selection: Selection = field(default_factory=Selection)
    script: str | None = None  # host path of the session's script
    check: str | None = None  # host path of the verify check (default: the script)
    report: str | None = None  # where to write the JSON report
    kernel_output: str | None = None  # where to write the kernel the image's modules are for


@dataclass(frozen=True)
class RunResult:
    result: Result
    image_bytes: int | None  # compressed size (None on standard output)
    raw_bytes: int  # uncompressed size


def _inputs(config: RunConfig) -> dict[str, Path]:
    """The files the agent needs, by their name under INPUT_DIR."""
    files: dict[str, Path] = {}
    if config.script:
        files[SCRIPT] = Path(config.script)
    if config.selection.verify is not Verify.OFF:
        check = config.check or config.script
        if check is None:
            raise UsageError("--verify and --fix replay --check FILE, or the session's "
                             "--script: give one")
        files[CHECK] = Path(check)
    for index, location in enumerate(config.selection.spec_locations()):
        files[posixpath.relpath(spec_input(index), INPUT_DIR)] = Path(location)
    for spec_list in config.selection.spec_lists:  # nothing is followed below ${NBIC_ROOT}
        for item in spec_list.items:
            if item.root is not None and item.location is not None:
                try:
                    open_location(item.location, item.root).close()
                except SpecError as exc:
                    raise SpecError(f"spec list {spec_list.name}:{item.line}: {exc}") from None
    for name, path in files.items():
        if not path.is_file():
            raise UsageError(f"{path} is not a readable file (for {name})")
    return files


def compile_session(config: RunConfig) -> RunResult:
    selection = config.selection
    refuse_inputs([config.output, config.report, config.kernel_output],
                  [config.rootfs, config.script, config.check,
                   *(item.name for item in selection.file_lists),
                   *(item.name for item in selection.spec_lists), *selection.spec_locations()])
    inputs = _inputs(config)
    source = rootfs.parse_source(config.rootfs)
    request = Request(Task.SESSION, config.selection, config.session,
                      kernel=config.kernel_output is not None)
    with signals_interrupt():
        client = engine.connect()
        engine.remove_stale_containers(client)  # of runs killed outright (kill -9)
        builder = engine.builder_image(client)
        volume = rootfs.ensure(client, source, builder)
        interactive = config.session.interactive
        # A session with a terminal is removed by nbic, after its OUTPUT_DIR is
        # fetched; one without sends everything in frames (relayed as they come,
        # so the engine need not log the image) and removes itself.
        with engine.container(
                client, builder, agent_command(request), role="session",
                volumes={volume: {"bind": "/cache", "mode": "ro"}},
                tty=interactive, stdin_open=interactive, hostname="nbic",
                removes_itself=not interactive, keeps_logs=interactive,
                **engine.agent_privileges()) as created:
            if inputs:
                engine.put_files(created, INPUT_DIR, inputs)
            if interactive:
                terminal.interact(created)
                outcome = _collect(config, engine.fetch_tree(created, OUTPUT_DIR),
                                   lambda: f" ({engine.wait(created)}):\n"
                                           f"{engine.logs_tail(created)}")
            else:
                output = engine.output(created)
                engine.start(created, "starting the session")
                result_tar = _framed_output(output)
                outcome = _collect(config, tar_members(result_tar),
                                   lambda: "; what it wrote to standard error is above")
                for _ in result_tar:  # what is left after the tar, relayed
                    pass
    result = outcome.result
    log.info("wrote %s: %d entries from %d traced paths (%s tracer), %d bytes, %s bytes as %s",
             config.output, result.entries, result.traced, result.tracer, outcome.raw_bytes,
             outcome.image_bytes if outcome.image_bytes is not None else "?",
             config.compression)
    if config.output != "-" and log.isEnabledFor(logging.INFO):
        from nbic.usage import size_report  # imported only when shown (not with -q)

        log.info("%s", size_report(config.output, depth=1, top=5).format())
    if config.kernel_output:
        log.info("wrote %s: the kernel of the modules (%s), from the rootfs's /boot",
                 config.kernel_output, result.kernel_release)
    if result.session_status:
        log.warning("the session exited with status %d; the image holds what it used",
                    result.session_status)
    return outcome


def _framed_output(output: Iterator[tuple[bytes | None, bytes | None]]) -> Iterator[bytes]:
    """The tar of OUTPUT_DIR from the agent's framed standard output (see
    protocol.Frame), up to its end mark; the session's output is relayed on the
    way, and the agent's standard error as it is."""
    frames = FrameReader()
    try:
        # The spinner goes before anything else is written to the terminal.
        with progress.waiting("session running") as quiet:
            for out, err in output:
                if err:
                    quiet()
                    sys.stderr.buffer.write(err)
                    sys.stderr.buffer.flush()
                for kind, payload in frames.feed(out or b""):
                    quiet()
                    if kind is Frame.STDOUT:
                        sys.stdout.buffer.write(payload)
                        sys.stdout.buffer.flush()
                    elif kind is Frame.RESULT:
                        yield payload
                    else:  # the end: the agent has nothing more to say
                        return
    except FrameError as exc:
        raise SessionError(f"the session agent's output is garbled: {exc}") from None
    if frames.partial:
        raise SessionError("the session agent's output broke off inside a frame")


def _collect(config: RunConfig,
             tree: AbstractContextManager[Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]],
             how_it_ended: Callable[[], str]) -> RunResult:
    """One archive of OUTPUT_DIR: the result, the report, the image and, when
    asked for, the kernel. The image is compressed into the output as it
    streams; the outputs are kept only if the result says so. Without a
    result, `how_it_ended` says what is known of the agent's end."""
    result: Result | None = None
    raw_bytes = 0
    image_bytes: int | None = None
    with ExitStack() as stack:
        try:
            members = stack.enter_context(tree)
        except tarfile.ReadError:  # nothing came: the agent died before its result
            members = iter(())
        for info, data in members:
            if data is None:
                continue
            name = posixpath.basename(info.name)
            if name == RESULT_FILE:
                result = serial.loads(Result, data.read().decode("utf-8"))
                _show(result)
            elif name == REPORT_FILE and config.report:
                with atomic_output(config.report) as out:
                    _copy(data, out)
            elif name == KERNEL_FILE and config.kernel_output:
                # Kept, like the image, only when the result says the run succeeded.
                _copy(data, stack.enter_context(atomic_output(config.kernel_output)))
            elif name == IMAGE_FILE:
                raw = stack.enter_context(atomic_output(config.output))
                label = f"writing {os.path.basename(config.output)}"
                with compressed_writer(raw, config.compression) as stream, \
                        progress.bar(label, info.size) as advance:
                    raw_bytes = _copy(data, stream, advance)
                raw.flush()
                image_bytes = raw.tell() if raw.seekable() else None
        if result is None:
            raise SessionError(f"the session agent ended without a result{how_it_ended()}")
        if not result.ok:
            raise SessionError(result.error)
        _judge_replays(result)
    return RunResult(result, image_bytes, raw_bytes)


def _copy(source: BinaryIO, target: BinaryIO, advance: progress.Advance | None = None) -> int:
    copied = 0
    while chunk := source.read(CHUNK):
        target.write(chunk)
        copied += len(chunk)
        if advance:
            advance(len(chunk))
    return copied


def _show(result: Result) -> None:
    log.debug("session phases (s): %s", result.seconds)
    for notice in result.notices:
        log.info("%s", notice)
    for warning in result.warnings:
        log.warning("%s", warning)


def _judge_replays(result: Result) -> None:
    """Say what each replay found; a failed last one fails the run."""
    if not result.replays:
        return
    from nbic.verify import VerifyError, describe_failed_replay  # only runs that verify

    for path in result.fixed:
        log.info("verify --fix added %s", path)
    last = result.replays[-1]
    if last.status == 0:
        log.info("verify: the check passed on the image alone (%d replay%s)",
                 len(result.replays), "" if len(result.replays) == 1 else "s")
        return
    raise VerifyError(describe_failed_replay(last) + "\nthe image was not written")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rootfs", metavar="SRC",
                        help="FILE.tar[.gz|.xz|.zst], a directory, docker:IMAGE, "
                        "dockerfile:PATH or debootstrap:SUITE (default: "
                        f"{rootfs.DEFAULT_SOURCE}, cached)")
    parser.add_argument("-o", "--output", metavar="OUT", required=True,
                        help="image to write (.cpio, .cpio.zst, .gz, .xz, .lz4)")
    parser.add_argument("--script", metavar="FILE",
                        help="run this script (copied in) as the session")
    parser.add_argument("--tracer", choices=[t.value for t in Tracer], default="auto",
                        help="fanotify (default where permitted), ptrace (strace: also "
                        "stat-only lookups), both, or none (only the lists)")
    selections.add_arguments(parser)
    add_compression_argument(parser)
    verify = parser.add_argument_group("replay check")
    verify.add_argument("--verify", action="store_true",
                        help="replay the check (--check FILE, else the --script) on the "
                        "image alone; if it fails, the image is not written")
    verify.add_argument("--check", metavar="FILE",
                        help="the check to replay, when it differs from the session")
    verify.add_argument("--fix", action="store_true",
                        help="--verify, and add what the replay looked up and the rootfs "
                        "has, then replay again (a few rounds at most)")
    parser.add_argument("--report", metavar="FILE",
                        help="write a JSON report: every entry and why it is in the image, "
                        "failed lookups, verify rounds")
    parser.add_argument("--kernel-out", metavar="FILE",
                        help="also write the kernel the image's modules load into: the "
                        "rootfs's /boot/vmlinuz-KVER (KVER as for --modules), to boot with")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- COMMAND [ARGS...]: run this instead of /chroot or a shell")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    command = tuple(args.command[1:] if args.command[:1] == ["--"] else args.command)
    if command and args.script:
        raise UsageError("give a command or --script, not both")
    verify = Verify.FIX if args.fix else Verify.CHECK if args.verify or args.check \
        else Verify.OFF
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    return RunConfig(
        output=args.output, compression=compression_from_args(args, args.output),
        rootfs=args.rootfs,
        session=Session(command=command, script=bool(args.script), tracer=Tracer(args.tracer),
                        interactive=interactive),
        selection=selections.from_args(args, verify=verify),
        script=args.script, check=args.check, report=args.report,
        kernel_output=args.kernel_out)


def run(args: argparse.Namespace) -> int:
    outcome = compile_session(config_from_args(args))
    return outcome.result.session_status or 0

