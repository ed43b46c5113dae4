"""Output files appear whole or not at all: written to a temporary name in the
target directory and renamed into place only when complete. `write_image` is
the last stage of every image nbic makes: archive, compressor, file."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from nbic.cpio.archive import ArchiveStats, Member, write_archive
from nbic.cpio.compress import (
    CompressionSpec,
    compressed_writer,
    compression_for_path,
    parse_compression,
)
from nbic.errors import NbicError


@contextmanager
def atomic_output(path: str | Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file to write `path` through; "-" writes to standard output."""
    if str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise NbicError(f"output {target} is a directory")
    parent = target.parent or Path(".")
    try:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise NbicError(f"cannot write to {parent}: {exc.strerror}") from None
    try:
        with atomic_output_at(dir_fd, target.name, mode, where=str(parent)) as stream:
            yield stream
    finally:
        os.close(dir_fd)


@contextmanager
def atomic_output_at(dir_fd: int, name: str, mode: int = 0o644, *, where: str = "."
                     ) -> Iterator[BinaryIO]:
    """A file to write `name` through, in the directory open as `dir_fd`: no
    path outside it is followed (a symlink at `name` is replaced, not written
    through). `where` names the directory in errors."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        temp_name = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(temp_name, flags, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise NbicError(f"cannot write to {where}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as stream:
            yield stream
            stream.flush()
            os.fchmod(stream.fileno(), mode & ~_umask())
        os.replace(temp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        # Whatever went wrong, including Ctrl-C, leaves no partial output.
        os.unlink(temp_name, dir_fd=dir_fd)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_image(path: str | Path, members: Iterable[Member], compression: CompressionSpec, *,
                epoch: int | None) -> tuple[ArchiveStats, int | None]:
    """Write members as one compressed newc image; returns the archive's stats and
    the image's size in bytes (None on standard output)."""
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
