"""Helpers for the hostile-input tests: run nbic's commands as real processes and
measure what they did (exit status, one-line errors, peak memory)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: bytes
    stderr: str
    peak_mib: float  # the command's peak resident memory (ru_maxrss)

    def one_line_error(self) -> str:
        """The error line of a failed run; asserts it is one line, no traceback."""
        assert self.returncode != 0, self.stderr
        assert "Traceback" not in self.stderr, self.stderr
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]


def command(name: str) -> list[str]:
    """`nbic` or a `cpio-*` tool, as installed console scripts in this venv."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    if name == "nbic":
        return [sys.executable, "-m", "nbic.cli"]
    tool = name.removeprefix("cpio-")
    return [sys.executable, "-c",
            f"import sys; from nbic.cli import cpio_{tool}_main as m; sys.exit(m())"]


# Runs the command and reports its exit status and peak RSS. A child's
# ru_maxrss starts from its parent's high-water mark (vfork, exec), so the
# command is started from this small process, not from the (large) test run.
_LAUNCHER = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
os.write(int(sys.argv[1]), b"%d %d" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss))
"""


def run(name: str, *args: object, stdin=None, stdout=None, env: dict | None = None,
        limits: Callable[[], None] | None = None, cwd: Path | None = None) -> Outcome:
    """Run a command to its end, measuring its own peak resident memory."""
    report_read, report_write = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            subprocess.run(
                [sys.executable, "-c", _LAUNCHER, str(report_write), *command(name),
                 *map(str, args)], stdin=stdin, stdout=out if stdout is None else stdout,
                stderr=err, env={**os.environ, **(env or {})}, preexec_fn=limits, cwd=cwd,
                pass_fds=(report_write,), check=False)
        finally:
            os.close(report_write)
        with os.fdopen(report_read, "rb") as report:
            returncode, peak_kib = map(int, report.read().split())
        out.seek(0)
        err.seek(0)
        return Outcome(returncode, out.read(), err.read().decode(errors="replace"),
                       peak_kib / 1024)


def address_space_limit(mib: int) -> Callable[[], None]:
    """A preexec_fn: the child cannot even ask for more than `mib` MiB."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mib << 20, mib << 20))
    return apply


class Zeros:
    """A readable stream of `size` NUL bytes, made a chunk at a time."""

    CHUNK = bytes(1 << 20)

    def __init__(self, size: int):
        self.remaining = size

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        size = min(size, len(self.CHUNK))
        self.remaining -= size
        return self.CHUNK[:size] if size < len(self.CHUNK) else self.CHUNK

    def __enter__(self) -> Zeros:
        return self

    def __exit__(self, *exc) -> None:
        pass


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path
