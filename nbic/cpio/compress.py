"""Compression of whole images and detection of compressed segments.

Only settings the kernel's initramfs decompressors accept are produced:
zstd with a window of at most 8 MiB, xz with a CRC32 check, lz4 in the legacy
frame format. The codec libraries are imported lazily so that the format layer
stays importable with the standard library alone (the in-container agent).
"""

from __future__ import annotations

import enum
import lzma
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from nbic.errors import CompressionError, UsageError


class Compression(enum.Enum):
    NONE = "none"
    ZSTD = "zstd"
    GZIP = "gzip"
    XZ = "xz"
    LZ4 = "lz4"
    # Read only: the kernel accepts them, so images people have may use them.
    BZIP2 = "bzip2"
    LZMA = "lzma"
    LZO = "lzo"


WRITABLE = (Compression.NONE, Compression.ZSTD, Compression.GZIP, Compression.XZ,
            Compression.LZ4)

# Level ranges and defaults. zstd stops at 19: above it the window outgrows
# what the kernel's decompressor may allocate.
LEVELS = {
    Compression.ZSTD: (1, 19, 19),
    Compression.GZIP: (1, 9, 9),
    Compression.XZ: (0, 9, 6),
    Compression.LZ4: (1, 12, 9),
}
ZSTD_MAX_WINDOW_LOG = 23  # 8 MiB
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20  # the kernel's fixed uncompressed chunk size

SUFFIXES = {".zst": Compression.ZSTD, ".zstd": Compression.ZSTD, ".gz": Compression.GZIP,
            ".xz": Compression.XZ, ".lz4": Compression.LZ4}

MAGICS = (
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\x1f\x8b", Compression.GZIP),
    (b"\x1f\x9e", Compression.GZIP),  # old gzip magic, still accepted by the kernel
    (b"\xfd7zXZ\x00", Compression.XZ),
    (struct.pack("<I", LZ4_LEGACY_MAGIC), Compression.LZ4),
    (b"\x04\x22\x4d\x18", Compression.LZ4),
    (b"BZh", Compression.BZIP2),
    (b"\x5d\x00\x00", Compression.LZMA),
    (b"\x89LZO", Compression.LZO),
)


@dataclass(frozen=True)
class CompressionSpec:
    method: Compression
    level: int | None = None

    @property
    def effective_level(self) -> int | None:
        if self.method not in LEVELS:
            return None
        return self.level if self.level is not None else LEVELS[self.method][2]

    def __str__(self) -> str:
        level = self.effective_level
        return self.method.value if level is None else f"{self.method.value}:{level}"


def parse_compression(text: str) -> CompressionSpec:
    """`zstd`, `zstd:19`, `gzip:9`, `xz`, `lz4`, `none`."""
    name, _, level_text = text.partition(":")
    try:
        method = Compression(name.strip().lower())
    except ValueError:
        choices = ", ".join(c.value for c in WRITABLE)
        raise UsageError(f"unknown compression {name!r} (choose from {choices})") from None
    if method not in WRITABLE:
        raise UsageError(f"nbic reads {method.value} images but does not write them")
    if not level_text:
        return CompressionSpec(method)
    if method not in LEVELS:
        raise UsageError(f"{method.value} takes no level")
    low, high, _ = LEVELS[method]
    try:
        level = int(level_text)
    except ValueError:
        raise UsageError(f"compression level must be a number, not {level_text!r}") from None
    if not low <= level <= high:
        why = " (higher zstd levels need windows the kernel refuses)" \
            if method is Compression.ZSTD else ""
        raise UsageError(f"{method.value} level must be {low}..{high}{why}")
    return CompressionSpec(method, level)


def compression_for_path(path: str) -> CompressionSpec:
    """By output suffix: .zst/.gz/.xz/.lz4 compress; anything else is plain cpio."""
    for suffix, method in SUFFIXES.items():
        if path.endswith(suffix):
            return CompressionSpec(method)
    return CompressionSpec(Compression.NONE)


def detect(head: bytes) -> Compression | None:
    for magic, method in MAGICS:
        if head.startswith(magic):
            return method
    return None


# --- writing ---------------------------------------------------------------

class _Lz4LegacyWriter:
    """lz4 legacy frames: a magic, then blocks of at most 8 MiB, each prefixed
    by its compressed length. The kernel reads only this lz4 format."""

    def __init__(self, out: BinaryIO, level: int):
        import lz4.block

        self._compress = lz4.block.compress
        self._out = out
        self._level = level
        self._pending = bytearray()
        out.write(struct.pack("<I", LZ4_LEGACY_MAGIC))

    def write(self, data: bytes) -> int:
        self._pending += data
        while len(self._pending) >= LZ4_LEGACY_BLOCK:
            self._emit(bytes(self._pending[:LZ4_LEGACY_BLOCK]))
            del self._pending[:LZ4_LEGACY_BLOCK]
        return len(data)

    def _emit(self, block: bytes) -> None:
        packed = self._compress(block, mode="high_compression", compression=self._level,
                                store_size=False)
        self._out.write(struct.pack("<I", len(packed)) + packed)

    def close(self) -> None:
        if self._pending:
            self._emit(bytes(self._pending))
            self._pending.clear()


class _CodecWriter:
    """Adapts a compressobj-style codec (zlib, lzma) to a writable stream."""

    def __init__(self, out: BinaryIO, codec):
        self._out = out
        self._codec = codec

    def write(self, data: bytes) -> int:
        chunk = self._codec.compress(data)
        if chunk:
            self._out.write(chunk)
        return len(data)

    def close(self) -> None:
        self._out.write(self._codec.flush())


def _gzip_writer(out: BinaryIO, level: int) -> _CodecWriter:
    # zlib's gzip wrapper writes mtime 0 and no file name: deterministic output.
    return _CodecWriter(out, zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9))


def _zstd_writer(out: BinaryIO, level: int):
    import zstandard

    defaults = zstandard.ZstdCompressionParameters.from_level(level)
    # Worker threads >= 1 make zstd's output independent of how many there are,
    # so all cores can be used without losing reproducibility.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=min(defaults.window_log, ZSTD_MAX_WINDOW_LOG),
        threads=max(1, os.cpu_count() or 1), write_checksum=1)
    return zstandard.ZstdCompressor(compression_params=params).stream_writer(
        out, closefd=False)


@contextmanager
def compressed_writer(out: BinaryIO, spec: CompressionSpec) -> Iterator[BinaryIO]:
    """A writable stream that compresses into `out` as one segment; finished on exit."""
    level = spec.effective_level
    match spec.method:
        case Compression.NONE:
            yield out
            return
        case Compression.ZSTD:
            writer = _zstd_writer(out, level)
        case Compression.GZIP:
            writer = _gzip_writer(out, level)
        case Compression.XZ:
            writer = _CodecWriter(out, lzma.LZMACompressor(
                format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level))
        case Compression.LZ4:
            writer = _Lz4LegacyWriter(out, level)
        case _:
            raise UsageError(f"nbic does not write {spec.method.value}")
    yield writer
    writer.close()


# --- reading ---------------------------------------------------------------

class _Lz4LegacyDecompressor:
    """Counterpart of _Lz4LegacyWriter; like the kernel, it runs to the end of input."""

    def __init__(self):
        import lz4.block

        self._decompress = lz4.block.decompress
        self._pending = bytearray()
        self._started = False
        self.eof = False
        self.unused_data = b""

    def decompress(self, data: bytes) -> bytes:
        self._pending += data
        out = bytearray()
        if not self._started:
            if len(self._pending) < 4:
                return b""
            del self._pending[:4]
            self._started = True
        while len(self._pending) >= 4:
            (size,) = struct.unpack_from("<I", self._pending)
            if size == LZ4_LEGACY_MAGIC:  # a further legacy stream follows
                del self._pending[:4]
                continue
            if size == 0:
                # Zero padding ends the stream, as for the kernel since 5.13:
                # what follows is the next segment.
                self.eof = True
                self.unused_data = bytes(self._pending)
                break
            if size > 2 * LZ4_LEGACY_BLOCK:
                raise ValueError(f"lz4 block size {size} is impossible")
            if len(self._pending) < 4 + size:
                break
            block = bytes(self._pending[4 : 4 + size])
            del self._pending[: 4 + size]
            out += self._decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)
        return bytes(out)

    def end_of_input(self) -> bytes:
        if self._pending:
            raise CompressionError("truncated lz4 block at the end of the image")
        self.eof = True
        return b""


def decompressor_for(method: Compression, head: bytes):
    """A fresh decompression object for one stream of `method`."""
    match method:
        case Compression.ZSTD:
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj()
        case Compression.GZIP:
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        case Compression.XZ:
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        case Compression.LZMA:
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
        case Compression.BZIP2:
            import bz2

            return bz2.BZ2Decompressor()
        case Compression.LZ4 if head.startswith(struct.pack("<I", LZ4_LEGACY_MAGIC)):
            return _Lz4LegacyDecompressor()
        case Compression.LZ4:
            import lz4.frame

            return lz4.frame.LZ4FrameDecompressor()
    raise CompressionError(f"{method.value} segments are not supported by nbic")
