"""Command line: argparse front ends that turn every NbicError into one line.

Each stage module owns its options (`add_arguments`) and its command
(`run(args) -> exit status`); this module only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from nbic import __version__
from nbic.errors import NbicError

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


def _tools() -> dict:
    from nbic import tools

    return tools.COMMANDS


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
    for name, (help_text, add_arguments, run) in _tools().items():
        sub = tool_commands.add_parser(name, help=help_text, description=help_text)
        _common(sub)
        add_arguments(sub)
        sub.set_defaults(func=run, prog=sub.prog)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only errors")


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if getattr(args, "debug", False) else (
        logging.ERROR if getattr(args, "quiet", False) else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "nbic: " if record.levelno <= logging.INFO else \
            f"nbic: {record.levelname.lower()}: "
        return prefix + record.getMessage()


def _dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return args.func(args) or 0
    except NbicError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{getattr(args, 'prog', parser.prog)}: error: {exc}", file=sys.stderr)
        return getattr(args, "error_status", 1)
    except KeyboardInterrupt:
        print(f"{getattr(args, 'prog', parser.prog)}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `cpio-list img | head` is normal use, not an error.
        sys.stderr.close()
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return _dispatch(build_parser(argv), argv)


def _tool_main(name: str) -> Callable[[Sequence[str] | None], int]:
    def entry(argv: Sequence[str] | None = None) -> int:
        help_text, add_arguments, run = _tools()[name]
        parser = argparse.ArgumentParser(prog=f"cpio-{name}", description=help_text)
        _common(parser)
        add_arguments(parser)
        parser.set_defaults(func=run)
        return _dispatch(parser, argv)

    return entry


cpio_list_main = _tool_main("list")
cpio_extract_main = _tool_main("extract")
cpio_du_main = _tool_main("du")
cpio_diff_main = _tool_main("diff")
cpio_cat_main = _tool_main("cat")

if __name__ == "__main__":
    sys.exit(main())
