"""Decompression bombs and hostile sizes: no tool's peak memory grows with the
(decompressed) size of its input.

Each bomb is a few KiB to a few MiB on disk and 1 GiB once decompressed, made
here from a stream of zeros (never held in memory). The tools run as real
processes; their peak resident memory is measured with wait4().
"""

from __future__ import annotations

import bz2
import io
import lzma
import re
import struct
import tarfile
import zlib
from pathlib import Path

import lz4.block
import lz4.frame
import pytest
import zstandard
from hostile_helpers import Zeros, address_space_limit, run, write_lines

from nbic.cpio.entry import Entry, FileType
from nbic.cpio.newc import NewcWriter

GIB = 1 << 30
LIMIT_MIB = 256  # what any tool may use, whatever the size of its input


class _Compressing:
    """A writable stream compressing into `out` with a compressobj-style codec."""

    def __init__(self, out, compress, flush, head: bytes = b""):
        self._out, self._compress, self._flush = out, compress, flush
        out.write(head)

    def write(self, data: bytes) -> int:
        self._out.write(self._compress(data))
        return len(data)

    def close(self) -> None:
        self._out.write(self._flush())


def _codec(name: str, out) -> _Compressing:
    if name == "zstd":
        codec = zstandard.ZstdCompressor(level=3).compressobj()
        return _Compressing(out, codec.compress, codec.flush)
    if name == "gzip":
        codec = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return _Compressing(out, codec.compress, codec.flush)
    if name in ("xz", "lzma"):
        codec = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=0) \
            if name == "xz" else lzma.LZMACompressor(format=lzma.FORMAT_ALONE, preset=0)
        return _Compressing(out, codec.compress, codec.flush)
    if name == "bzip2":
        codec = bz2.BZ2Compressor(1)
        return _Compressing(out, codec.compress, codec.flush)
    if name == "lz4-frame":
        codec = lz4.frame.LZ4FrameCompressor()
        return _Compressing(out, codec.compress, codec.flush, head=codec.begin())
    if name == "lz4-legacy":
        return _Lz4Legacy(out)
    raise AssertionError(name)


class _Lz4Legacy:
    """The kernel's lz4 format: a magic, then 8 MiB blocks with their length. Zeros
    give the same block every time, so each distinct block is compressed once."""

    BLOCK = 8 << 20

    def __init__(self, out):
        self._out = out
        self._pending = bytearray()
        self._packed: dict[bytes, bytes] = {}
        out.write(struct.pack("<I", 0x184C2102))

    def write(self, data: bytes) -> int:
        self._pending += data
        while len(self._pending) >= self.BLOCK:
            self._emit(bytes(self._pending[: self.BLOCK]))
            del self._pending[: self.BLOCK]
        return len(data)

    def _emit(self, block: bytes) -> None:
        if block not in self._packed:
            self._packed = {block: lz4.block.compress(block, store_size=False)}
        packed = self._packed[block]
        self._out.write(struct.pack("<I", len(packed)) + packed)

    def close(self) -> None:
        if self._pending:
            self._emit(bytes(self._pending))


CODECS = ["zstd", "gzip", "xz", "lzma", "bzip2", "lz4-frame", "lz4-legacy"]


def _cpio_bomb(path: Path, codec: str) -> Path:
    """A valid image: one file of 1 GiB of zeros, compressed."""
    with open(path, "wb") as out:
        sink = _codec(codec, out)
        writer = NewcWriter(sink)
        writer.add(Entry("zeros", FileType.FILE, perm=0o644, size=GIB), Zeros(GIB))
        writer.close()
        sink.close()
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    made: dict[str, Path] = {}
    directory = tmp_path_factory.mktemp("bombs")

    def bomb(codec: str) -> Path:
        if codec not in made:
            made[codec] = _cpio_bomb(directory / f"zeros.{codec}", codec)
        return made[codec]
    return bomb


@pytest.mark.parametrize("codec", CODECS)
def test_cpio_list_of_a_1gib_bomb_stays_small(bombs, codec):
    image = bombs(codec)
    assert image.stat().st_size < 8 << 20
    outcome = run("cpio-list", image)
    assert (outcome.returncode, outcome.stdout) == (0, b"zeros\n"), outcome.stderr
    assert outcome.peak_mib < LIMIT_MIB, f"cpio-list of a {codec} bomb: {outcome.peak_mib} MiB"


def test_cpio_du_cat_and_diff_of_a_bomb_stay_small(bombs):
    image = bombs("zstd")
    with open("/dev/null", "wb") as sink:
        outcomes = {"du": run("cpio-du", "-b", image),
                    "cat": run("cpio-cat", image, "zeros", stdout=sink),
                    "diff": run("cpio-diff", image, image)}
    for name, outcome in outcomes.items():
        assert outcome.returncode == 0, (name, outcome.stderr)
        assert outcome.peak_mib < LIMIT_MIB, f"cpio-{name}: {outcome.peak_mib} MiB"
    assert f"{GIB}  zeros" in outcomes["du"].stdout.decode()


def test_a_4gib_symlink_target_is_refused_without_allocating_it(tmp_path):
    # 228 bytes whose symlink entry claims a 4 GiB target: the kernel caps link
    # targets at PATH_MAX, and so does the reader, before reading any of it.
    out = io.BytesIO()
    header = NewcWriter(out)
    header.add(Entry("link", FileType.SYMLINK, perm=0o777, linkname="x"))
    header.close()
    blob = bytearray(out.getvalue())
    assert blob.startswith(b"070701")
    blob[6 + 6 * 8: 6 + 7 * 8] = b"FFFFFFFF"  # the size field
    image = tmp_path / "link.cpio"
    image.write_bytes(bytes(blob[:228]))
    outcome = run("cpio-list", image, limits=address_space_limit(1024))
    line = outcome.one_line_error()
    assert "PATH_MAX" in line and "byte 0 of" in line and str(image) in line


def test_a_huge_symlink_target_in_a_bomb_is_refused(tmp_path):
    # The same with the target really there: 512 MiB of it, compressed.
    size = 512 << 20
    fields = (1, 0o120777, 0, 0, 1, 0, size, 0, 0, 0, 0, len(b"link\0"), 0)
    head = b"070701" + b"".join(b"%08X" % value for value in fields) + b"link\0"
    image = tmp_path / "link.cpio.zst"
    with open(image, "wb") as out:
        sink = _codec("zstd", out)
        sink.write(head + bytes(-len(head) % 4))
        chunk = b"a" * (1 << 20)
        for _ in range(size // len(chunk)):
            sink.write(chunk)
        sink.close()
    outcome = run("cpio-list", image)
    assert "PATH_MAX" in outcome.one_line_error()
    assert outcome.peak_mib < LIMIT_MIB


# --- rootfs tars -------------------------------------------------------------------

def _tar_member(archive: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o755,
                kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.type, info.size = mode, kind, len(data)
    archive.addfile(info, io.BytesIO(data))


def _tar_bomb(path: Path, big: str) -> Path:
    """A .tar.zst rootfs: /init, /bin/sh and `big`, 1 GiB of zeros."""
    with open(path, "wb") as out:
        sink = _codec("zstd", out)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT) as archive:
            _tar_member(archive, "init", b"#!/bin/sh\nexec /bin/sh\n")
            _tar_member(archive, "bin", kind=tarfile.DIRTYPE)
            _tar_member(archive, "bin/sh", b"\x7fELF")
            info = tarfile.TarInfo(big)
            info.size = GIB
            archive.addfile(info, Zeros(GIB))
            _tar_member(archive, "etc", kind=tarfile.DIRTYPE)
            _tar_member(archive, "etc/after", b"after the big member\n", 0o644)
        sink.close()
    return path


@pytest.fixture(scope="module")
def tar_bomb(tmp_path_factory):
    return _tar_bomb(tmp_path_factory.mktemp("tarbomb") / "rootfs.tar.zst", "big")


def test_pack_skips_an_unselected_1gib_member_in_small_memory(tar_bomb, tmp_path):
    files = write_lines(tmp_path / "files.list", ["/bin/sh", "/etc/after"])
    image = tmp_path / "out.cpio"
    outcome = run("nbic", "pack", "--rootfs", tar_bomb, "--files-from", files, "-o", image)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.peak_mib < LIMIT_MIB, f"pack: {outcome.peak_mib} MiB"
    assert image.stat().st_size < 1 << 20


def test_pack_streams_a_selected_1gib_member_in_small_memory(tar_bomb, tmp_path):
    files = write_lines(tmp_path / "files.list", ["/big"])
    with open("/dev/null", "wb") as sink:
        outcome = run("nbic", "pack", "--rootfs", tar_bomb, "--files-from", files,
                      "--compress", "none", "-o", "-", stdout=sink)
    assert outcome.returncode == 0, outcome.stderr
    data_bytes = re.search(r"(\d+) bytes of file data", outcome.stderr)
    assert data_bytes and int(data_bytes.group(1)) > GIB, outcome.stderr
    assert outcome.peak_mib < LIMIT_MIB, f"pack: {outcome.peak_mib} MiB"


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_a_1gib_tar_extended_header_is_refused_in_small_memory(tmp_path, kind):
    # tarfile reads a PAX header or a GNU long name whole: 1 GiB of it must be
    # refused before it is read.
    path = tmp_path / "rootfs.tar.zst"
    with open(path, "wb") as out:
        sink = _codec("zstd", out)
        info = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME
                               else "pax")
        info.type, info.size = kind, GIB
        sink.write(info.tobuf(format=tarfile.GNU_FORMAT))
        zeros = Zeros(GIB)
        while chunk := zeros.read(1 << 20):
            sink.write(chunk)
        for name in ("init", "after"):
            member = tarfile.TarInfo(name)
            sink.write(member.tobuf(format=tarfile.GNU_FORMAT))
        sink.write(bytes(1024))
        sink.close()
    outcome = run("nbic", "pack", "--rootfs", path, "-o", tmp_path / "out.cpio")
    line = outcome.one_line_error()
    assert str(path) in line and "byte 0" in line
    assert outcome.peak_mib < LIMIT_MIB, f"pack: {outcome.peak_mib} MiB"
    assert not list(tmp_path.glob("*.cpio*"))
