"""Helpers for the cpio reader and tools tests: a varied file tree, archives of
it made by the real tools, hand-written archives, and running the console
scripts. Everything is built below a test's tmp_path."""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from nbic.cpio.archive import Member, write_archive
from nbic.cpio.entry import Entry, FileType
from nbic.cpio.newc import NewcWriter

BIN = Path(sys.executable).parent
IS_ROOT = os.geteuid() == 0
PAST = 1_000_000_000  # 2001-09-09: listed with its year
RECENT = int(time.time()) - 3 * 3600  # listed with its time of day

FILE_SIZES = {"empty": 0, "one": 1, "three": 3, "four": 4, "five": 5, "page": 4097}


class ChunkyPipe(io.RawIOBase):
    """A non-seekable stream whose reads return random amounts: at most the size
    asked for, or one of `piece_sizes` (to cut headers often), or (`whole_chunks`,
    as a decoder does) more than asked for."""

    def __init__(self, data: bytes, rng: random.Random, whole_chunks: bool = False,
                 piece_sizes: Sequence[int] = ()):
        self._data = data
        self._rng = rng
        self._whole = whole_chunks
        self._pieces = piece_sizes

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._pieces:
            take = min(len(self._data), max(1, size), self._rng.choice(self._pieces))
        else:
            limit = self._rng.randint(1, 1 << 21) if self._whole else max(1, size)
            take = min(len(self._data), self._rng.randint(1, limit))
        chunk, self._data = self._data[:take], self._data[take:]
        return chunk


def need(tool: str) -> str:
    """Path of an external tool; a missing one skips, but fails under CI."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (ci/setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def pattern(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


def make_tree(root: Path) -> None:
    """Nested dirs, odd-sized files, a hardlink pair, symlinks (relative,
    dangling, absolute), a fifo, a non-ASCII name, setuid/setgid/sticky modes,
    old and recent mtimes; as root also a char and a block device and
    foreign owners."""
    root.mkdir(exist_ok=True)
    (root / "dir" / "sub" / "deeper").mkdir(parents=True)
    for seed, (name, size) in enumerate(FILE_SIZES.items()):
        (root / "dir" / name).write_bytes(pattern(size, seed))
    (root / "dir" / "sub" / "deeper" / "leaf").write_bytes(b"leaf\n")
    (root / "dir" / "hard1").write_bytes(b"hardlinked data\n")
    os.link(root / "dir" / "hard1", root / "dir" / "sub" / "hard2")
    os.symlink("../one", root / "dir" / "sub" / "rel-link")
    os.symlink("/nonexistent/target", root / "dir" / "dangling-abs")
    os.symlink("dir/sub/deeper/leaf", root / "leaf-link")
    os.mkfifo(root / "dir" / "fifo")
    (root / "dir" / "grüße-ñ").write_bytes(b"non-ASCII name\n")
    (root / "dir" / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "dir" / "suid", 0o4755)
    (root / "dir" / "sgid").mkdir()
    os.chmod(root / "dir" / "sgid", 0o2750)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "dir" / "five", 0o600)
    if IS_ROOT:
        os.mknod(root / "dir" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "dir" / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
        os.chown(root / "dir" / "three", 1234, 5678)
        os.chown(root / "dir" / "sub" / "rel-link", 42, 43, follow_symlinks=False)
    old = {"dir/five", "dir/sub", "dir/dangling-abs", "dir/hard1"}
    paths = sorted(walk(root), key=lambda p: -p.count("/"))
    for rel in paths:
        when = PAST if rel in old else RECENT
        os.utime(root / rel, (when, when), follow_symlinks=False)


def walk(root: Path) -> list[str]:
    """Relative names of everything below root, and "." for root itself."""
    names = ["."]
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            names.append(os.path.relpath(os.path.join(parent, name), root))
    return names


def gnu_cpio(root: Path, fmt: str = "newc") -> bytes:
    need("cpio")
    names = subprocess.run(["find", ".", "-print0"], cwd=root, capture_output=True,
                           check=True).stdout
    return subprocess.run(["cpio", "-o", "-0", "-H", fmt, "--quiet"], cwd=root, input=names,
                          capture_output=True, check=True).stdout


def bsdtar_cpio(root: Path) -> bytes:
    need("bsdtar")
    return subprocess.run(["bsdtar", "--format", "newc", "-cf", "-", "-C", str(root), "."],
                          capture_output=True, check=True).stdout


def member(name: str, kind: FileType = FileType.FILE, data: bytes | None = None, **fields
           ) -> Member:
    if kind is FileType.FILE:
        data = data or b""
        fields.setdefault("size", len(data))
    entry = Entry(name, kind, **fields)
    source = (lambda: io.BytesIO(data)) if data else None
    return Member(entry, source)


def archive(members: list[Member], **options) -> bytes:
    out = io.BytesIO()
    write_archive(out, members, **options)
    return out.getvalue()


def raw_archive(items: list[tuple[Entry, bytes]]) -> bytes:
    """Entries exactly as given (order, inodes, sizes), written with NewcWriter."""
    out = io.BytesIO()
    writer = NewcWriter(out)
    for entry, data in items:
        writer.add(entry, io.BytesIO(data) if data else None)
    writer.close()
    return out.getvalue()


def run_tool(name: str, *args: str, stdin: bytes | None = None, env: dict | None = None,
             check: int | None = 0) -> subprocess.CompletedProcess:
    """Run the console script cpio-NAME; `check` is the expected exit status."""
    script = BIN / f"cpio-{name}"
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", f"import sys; from nbic.cli import cpio_{name}_main as m; "
        "sys.exit(m())"]
    result = subprocess.run(command + list(args), input=stdin, capture_output=True,
                            env={**os.environ, **(env or {})})
    if check is not None:
        assert result.returncode == check, (result.returncode, result.stderr.decode())
    return result
