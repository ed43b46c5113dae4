"""Where nbic's outputs go, and how they appear: whole or not at all.

An output named OUT is written
- for "-": to standard output;
- when OUT is a FIFO or a character device, also through a symlink (a named
  pipe, /dev/null, /dev/stdout): in place, as a stream (what a reader took
  cannot be taken back, so a failure part way is only the exit status);
- when OUT is a regular file or does not exist: to a temporary file in its
  directory, renamed over OUT only when complete;
- never when OUT is a symlink to anything else (renaming would replace the
  link, and writing through it would be a write where the user did not name),
  a directory, a block device or a socket: those are refused.
A temporary file is removed on any error, on Ctrl-C, SIGTERM and SIGHUP (see
`signals_interrupt`). Write errors (disk full, file too large, the reader
gone) are OutputErrors naming the output. `write_image` is the last stage of
every image nbic makes: archive, compressor, file.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import stat
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, BinaryIO

from nbic.cpio.compress import (
    CompressionSpec,
    compressed_writer,
    compression_for_path,
    parse_compression,
)
from nbic.errors import OutputClosed, OutputError

if TYPE_CHECKING:
    from pathlib import Path  # not imported at run time: it costs the cpio tools' start-up

    from nbic.cpio.archive import ArchiveStats, Member

BUFFER = 1 << 20
STDOUT = "standard output"


class _Sink(io.FileIO):
    """A file descriptor to write to, whose write errors name what it is."""

    def __init__(self, fd: int, label: str, *, closefd: bool = True):
        super().__init__(fd, "w", closefd=closefd)
        self.label = label

    def write(self, data) -> int:
        try:
            return super().write(data)
        except BrokenPipeError:
            raise OutputClosed(f"the reader of {self.label} went away") from None
        except OSError as exc:
            raise OutputError(f"cannot write {self.label}: {exc.strerror}") from None


def stdout_text(encoding: str, errors: str, *, line_buffering: bool) -> io.TextIOWrapper:
    """Standard output for text, with the write errors of `_Sink`."""
    return io.TextIOWrapper(io.BufferedWriter(_Sink(1, STDOUT, closefd=False), 64 << 10),
                            encoding=encoding, errors=errors, line_buffering=line_buffering)


@contextmanager
def atomic_output(path: str | Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A stream to write `path` through (see the module's docstring for where)."""
    if str(path) == "-":
        if sys.stdout is not None:
            sys.stdout.flush()  # text printed before comes first
        stdout = io.BufferedWriter(_Sink(1, STDOUT, closefd=False), BUFFER)
        try:
            yield stdout
            stdout.flush()
        except OutputClosed:
            raise OutputError(f"the reader of {STDOUT} went away before the output was "
                              "complete") from None
        finally:
            _close_quietly(stdout)
        return
    target = os.fspath(path)
    if _written_in_place(target):
        with _in_place(target) as device:
            yield device
        return
    parent, name = os.path.split(target.rstrip("/") or target)
    parent = parent or "."
    try:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"cannot write to {parent}: {exc.strerror}") from None
    try:
        with atomic_output_at(dir_fd, name, mode, where=parent, label=target) as stream:
            yield stream
    finally:
        os.close(dir_fd)


@contextmanager
def atomic_output_at(dir_fd: int, name: str, mode: int = 0o644, *, where: str = ".",
                     label: str | None = None) -> Iterator[BinaryIO]:
    """A file to write `name` through, in the directory open as `dir_fd`: no
    path outside it is followed (a symlink at `name` is replaced, not written
    through). `where` names the directory in errors, `label` the file."""
    label = label or f"{where}/{name}"
    temp_name = None
    try:
        with _signals_deferred():  # a signal now would leave a file no one removes
            fd, temp_name = _temporary(dir_fd, name, where)
        stream = io.BufferedWriter(_Sink(fd, label), BUFFER)
        try:
            yield stream
            stream.flush()
        except BaseException:
            _close_quietly(stream)
            raise
        _install(stream, dir_fd, temp_name, name, mode, label)
    except BaseException:
        # Whatever went wrong, including Ctrl-C, leaves no partial output.
        if temp_name is not None:
            with suppress(FileNotFoundError):  # renamed already, when interrupted just after
                os.unlink(temp_name, dir_fd=dir_fd)
        raise


def _temporary(dir_fd: int, name: str, where: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        temp_name = f".{name}.{os.urandom(4).hex()}.tmp"
        try:
            return os.open(temp_name, flags, 0o600, dir_fd=dir_fd), temp_name
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot write to {where}: {exc.strerror}") from None


def _install(stream: io.BufferedIOBase, dir_fd: int, temp_name: str, name: str, mode: int,
             label: str) -> None:
    """The complete temporary file becomes the output."""
    try:
        os.fchmod(stream.fileno(), mode & ~_umask())
        stream.close()
        os.replace(temp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        raise OutputError(f"cannot write {label}: {exc.strerror}") from None


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block is done; they arrive after."""
    interrupting = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, interrupting)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _close_quietly(stream: io.BufferedIOBase) -> None:
    """Close after a failure: what is still buffered may not go out either."""
    with suppress(OutputError, OSError):
        stream.close()


def _written_in_place(target: str) -> bool:
    """True for a FIFO or character device, False for a regular file or nothing
    (replaced); anything else is refused."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        try:
            pointed = os.stat(target)
        except OSError:
            pointed = None
        if pointed is None or not (stat.S_ISFIFO(pointed.st_mode)
                                   or stat.S_ISCHR(pointed.st_mode)):
            raise OutputError(f"output {target} is a symlink (to {os.readlink(target)}): nbic "
                              "writes a new file and renames it over the output, which would "
                              "replace the link; name the file it points to")
        return True
    if stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode):
        return True
    if stat.S_ISREG(info.st_mode):
        return False
    what = "a directory" if stat.S_ISDIR(info.st_mode) else \
        "a block device" if stat.S_ISBLK(info.st_mode) else "a socket"
    raise OutputError(f"output {target} is {what}: nbic writes regular files, FIFOs and "
                      "character devices")


@contextmanager
def _in_place(target: str) -> Iterator[BinaryIO]:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not (stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode)):
        # Swapped for something else since it was looked at: nothing is written.
        os.close(fd)
        raise OutputError(f"output {target} changed while it was being opened")
    stream = io.BufferedWriter(_Sink(fd, target), BUFFER)
    try:
        yield stream
        stream.flush()
    finally:
        _close_quietly(stream)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _identity(path: str | Path, fd: int) -> tuple[int, int] | None:
    """Device and inode of a regular file ("-": of descriptor `fd`), else None."""
    try:
        info = os.fstat(fd) if str(path) == "-" else os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


def refuse_inputs(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path | None]
                  ) -> None:
    """Refuse, before anything is written, an output that is also an input.
    Files are compared by device and inode, so no other name for one (a link,
    a bind mount, a relative path, a redirection of standard output) slips by."""
    read: dict[tuple[int, int], str] = {}
    for name in inputs:
        if name is not None and (identity := _identity(name, 0)) is not None:
            read.setdefault(identity, "standard input" if str(name) == "-" else str(name))
    for name in outputs:
        if name is None or (identity := _identity(name, 1)) not in read:
            continue
        shown = STDOUT if str(name) == "-" else str(name)
        raise OutputError(f"{shown} is {read[identity]}, which is also read: refusing to "
                          "write over an input")


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM, and SIGHUP (the terminal went away), unwind like Ctrl-C, so every
    cleanup runs: no temporary file and no container outlive the process."""
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt)
                for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def write_image(path: str | Path, members: Iterable[Member], compression: CompressionSpec, *,
                epoch: int | None) -> tuple[ArchiveStats, int | None]:
    """Write members as one compressed newc image; returns the archive's stats and
    the image's size in bytes (None when not a regular file)."""
    # Imported here: the cpio tools use this module's outputs, not its writer.
    from nbic.cpio.archive import write_archive

    with atomic_output(path) as raw:
        with compressed_writer(raw, compression) as stream:
            stats = write_archive(stream, members, epoch=epoch)
        raw.flush()
        size = raw.tell() if raw.seekable() else None
    return stats, size


def add_compression_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compress", metavar="NAME[:LEVEL]",
                        help="zstd, gzip, xz, lz4 or none; default: by the output's suffix "
                        "(.zst, .gz, .xz, .lz4; else none)")


def compression_from_args(args: argparse.Namespace, output: str) -> CompressionSpec:
    return parse_compression(args.compress) if args.compress else compression_for_path(output)
