"""Command line: argparse front ends that turn every NbicError into one line.

Each stage module owns its options (`add_arguments`) and its command
(`run(args) -> exit status`); this module only wires them together.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NoReturn

from nbic import __version__
from nbic.errors import NbicError, OutputClosed, OutputError
from nbic.output import signals_interrupt, stdout_text

log = logging.getLogger("nbic")


# Command -> the stage module that owns it (imported only when used: a command
# should not pay for the imports of all the others).
STAGES = {"run": "run", "pack": "pack", "verify": "verify", "boot": "boot", "build": "build",
          "netboot": "netboot", "serve": "serve", "rootfs": "rootfs", "gc": "gc"}


def _named(argv: Sequence[str]) -> str | None:
    """The command the command line names (None: none, or not one we know)."""
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    return named if named in (*STAGES, "cpio") else None


def _stages(named: str | None) -> dict[str, ModuleType]:
    """The stage modules the command line needs: the one it names, else all (for help)."""
    names = [named] if named in STAGES else [] if named == "cpio" else list(STAGES)
    return {name: importlib.import_module(f"nbic.{STAGES[name]}") for name in names}


def _tools(names: Sequence[str] | None = None) -> dict[str, ModuleType]:
    """The cpio tool modules: the named ones, else all (for help)."""
    from nbic import tools

    return {name: tools.tool(name) for name in (names or tools.TOOLS)}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbic", description="Net Boot Image Compiler")
    parser.add_argument("--version", action="version", version=f"nbic {__version__}")
    _common(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = _named(argv)
    for name, module in _stages(named).items():
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        _common(sub)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run, prog=sub.prog)
    if named not in (None, "cpio"):
        return parser
    cpio = commands.add_parser("cpio", help="inspect and unpack cpio images")
    tool_commands = cpio.add_subparsers(dest="tool", required=True, metavar="TOOL")
    for name, module in _tools().items():
        sub = tool_commands.add_parser(name, help=module.HELP, description=module.HELP)
        _common(sub)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run, prog=sub.prog)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only errors")


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if getattr(args, "debug", False) else (
        logging.ERROR if getattr(args, "quiet", False) else logging.INFO)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record comes, not as it was when the
    handler was made (as logging's last-resort handler does): a server thread
    may log after the stream of an earlier in-process run is gone."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "nbic: " if record.levelno <= logging.INFO else \
            f"nbic: {record.levelname.lower()}: "
        return prefix + record.getMessage()


def _standard_streams() -> None:
    """A closed standard descriptor gets /dev/null, opened the wrong way round so
    that using it fails (EBADF) instead of reaching whatever file would otherwise
    get its number; errors still go nowhere. Standard output's write errors
    become OutputErrors that name it."""
    for fd, flags in ((0, os.O_WRONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, flags)  # the lowest free number: fd, as those below are open
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the process's own
    if sys.stdout is None or sys.stdout is sys.__stdout__:
        old = sys.stdout
        sys.stdout = stdout_text(old.encoding if old else "utf-8",
                                 (old.errors if old else None) or "strict",
                                 line_buffering=bool(old and old.line_buffering))


def _settle_stdout() -> None:
    """Flush standard output now; if it takes nothing more, drop what is left, so
    the flush at exit does not fail a second time."""
    try:
        sys.stdout.flush()
    except (OutputError, OSError, ValueError):
        spare = os.open(os.devnull, os.O_WRONLY)
        os.dup2(spare, 1)
        os.close(spare)


def _dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    _standard_streams()
    args = parser.parse_args(argv)
    _setup_logging(args)
    prog = getattr(args, "prog", parser.prog)
    try:
        with signals_interrupt():
            status = args.func(args) or 0
            sys.stdout.flush()
        return status
    except OutputClosed:
        # `cpio-list img | head` is normal use, not an error. (Images and file
        # data on standard output fail instead: see output.atomic_output.)
        _settle_stdout()
        return 0
    except NbicError as exc:
        if getattr(args, "debug", False):
            raise
        _settle_stdout()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return getattr(args, "error_status", 1)
    except KeyboardInterrupt:
        _settle_stdout()
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # Expected failures become NbicErrors where they happen; this is any
        # other system error, still one line (its errno's text, and the file).
        if getattr(args, "debug", False):
            raise
        _settle_stdout()
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return getattr(args, "error_status", 1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return _dispatch(build_parser(argv), argv)


def _tool_main(name: str) -> Callable[[Sequence[str] | None], int]:
    def entry(argv: Sequence[str] | None = None) -> int:
        module = _tools([name])[name]
        parser = argparse.ArgumentParser(prog=f"cpio-{name}", description=module.HELP)
        _common(parser)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
        return _dispatch(parser, argv)

    return entry


cpio_list_main = _tool_main("list")
cpio_extract_main = _tool_main("extract")
cpio_du_main = _tool_main("du")
cpio_diff_main = _tool_main("diff")
cpio_cat_main = _tool_main("cat")


def _leave(status: int) -> NoReturn:
    """End the process once standard output and error are flushed, skipping the
    interpreter's teardown of every module: a finished command needs none of
    it, and with the Docker SDK loaded it takes 25 ms."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, NbicError):
            stream.flush()
    os._exit(status)


def _script(command: Callable[[Sequence[str] | None], int]) -> Callable[[], NoReturn]:
    """A console script's entry point: the command, then _leave."""
    def run() -> NoReturn:
        _leave(command(None))

    return run


# The console scripts (pyproject.toml); the *_main functions return instead.
nbic_script = _script(main)
cpio_list_script = _script(cpio_list_main)
cpio_extract_script = _script(cpio_extract_main)
cpio_du_script = _script(cpio_du_main)
cpio_diff_script = _script(cpio_diff_main)
cpio_cat_script = _script(cpio_cat_main)

if __name__ == "__main__":
    nbic_script()
