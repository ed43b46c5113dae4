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
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol, cast

from nbic.errors import CompressionError, UsageError

if TYPE_CHECKING:
    from concurrent.futures import Future


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
# what the kernel's decompressor may allocate. The defaults are where more
# time stops buying much size (docs/compression.md has the measurements):
# zstd 9 is 6-8% smaller than 3 for 2-3 times the CPU, 19 another 7-12% for
# 15-22 times more; gzip 9 saves 0.3-0.5% over 6 for 2.5-3 times the CPU.
LEVELS = {
    Compression.ZSTD: (1, 19, 9),
    Compression.GZIP: (1, 9, 6),
    Compression.XZ: (0, 9, 6),
    Compression.LZ4: (1, 12, 9),
}
ZSTD_MAX_WINDOW_LOG = 23  # 8 MiB
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20  # the kernel's fixed uncompressed chunk size
# gzip and xz are cut into blocks of these sizes (uncompressed) to use all
# cores; see docs/compression.md for the measurements behind them.
GZIP_BLOCK = 1 << 20
XZ_BLOCK = 16 << 20
GZIP_OS_UNIX = 3
XZ_MAGIC = b"\xfd7zXZ\x00"
XZ_FOOTER_MAGIC = b"YZ"
XZ_FLAGS_CRC32 = b"\x00\x01"
XZ_CHECK_SIZE = 4  # CRC32
XZ_BLOCK_HAS_SIZES = 0x40 | 0x80  # compressed and uncompressed size; one filter
# xz's dictionary size for each preset (xz(1), "Presets").
XZ_PRESET_DICT = {0: 256 << 10, 1: 1 << 20, 2: 2 << 20, 3: 4 << 20, 4: 4 << 20,
                  5: 8 << 20, 6: 8 << 20, 7: 16 << 20, 8: 32 << 20, 9: 64 << 20}

SUFFIXES = {".zst": Compression.ZSTD, ".zstd": Compression.ZSTD, ".gz": Compression.GZIP,
            ".xz": Compression.XZ, ".lz4": Compression.LZ4}

MAGICS = (
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\x1f\x8b", Compression.GZIP),
    (b"\x1f\x9e", Compression.GZIP),  # old gzip magic, still accepted by the kernel
    (XZ_MAGIC, Compression.XZ),
    (struct.pack("<I", LZ4_LEGACY_MAGIC), Compression.LZ4),
    (b"\x04\x22\x4d\x18", Compression.LZ4),
    (b"BZh", Compression.BZIP2),
    (b"\x5d\x00\x00", Compression.LZMA),
    (b"\x89LZO", Compression.LZO),
)


@dataclass(frozen=True)
class CompressionSpec:
    """A compression method and its level (None: the method's default)."""

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

Pieces = tuple[bytes, ...]  # a compressed block, as the pieces written in order


class _BlockCodec(Protocol):
    history: int  # how many bytes of the previous block a block may refer to

    def header(self) -> bytes: ...

    def compress(self, block: bytes, history: bytes) -> Pieces:
        """One block, on any thread: depends only on its arguments."""

    def record(self, block: bytes, packed: Pieces) -> None:
        """Account for a block as it is written, in order."""

    def trailer(self) -> bytes: ...


class _BlockWriter:
    """Cuts the stream into fixed-size blocks, compresses them on a thread pool
    and writes them in order. The block size, not the number of threads, fixes
    every byte of the output. At most two blocks per worker are in flight, so
    memory stays bounded whatever the input size."""

    def __init__(self, out: BinaryIO, codec: _BlockCodec, block_size: int, workers: int):
        self._out = out
        self._codec = codec
        self._block_size = block_size
        # Imported here: readers never need it, and it costs a listing's start-up.
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nbic-compress") \
            if workers > 1 else None
        self._limit = 2 * workers
        self._in_flight: deque[tuple[bytes, Future[Pieces]]] = deque()
        self._pending = bytearray()
        self._history = b""
        out.write(codec.header())

    def write(self, data: bytes) -> int:
        self._pending += data
        if len(self._pending) >= self._block_size:
            size = self._block_size
            cut = len(self._pending) - len(self._pending) % size
            with memoryview(self._pending) as view:
                for start in range(0, cut, size):
                    self._submit(bytes(view[start : start + size]))
            del self._pending[:cut]
        return len(data)

    def _submit(self, block: bytes) -> None:
        history = self._history
        if self._codec.history:
            self._history = block[-self._codec.history :]
        if self._pool is None:
            self._emit(block, self._codec.compress(block, history))
            return
        if len(self._in_flight) >= self._limit:
            self._emit_oldest()
        self._in_flight.append((block, self._pool.submit(self._codec.compress, block, history)))

    def _emit_oldest(self) -> None:
        block, packed = self._in_flight.popleft()
        self._emit(block, packed.result())

    def _emit(self, block: bytes, packed: Pieces) -> None:
        self._codec.record(block, packed)
        for piece in packed:
            self._out.write(piece)

    def close(self) -> None:
        if self._pending:
            self._submit(bytes(self._pending))
            self._pending.clear()
        while self._in_flight:
            self._emit_oldest()
        self._out.write(self._codec.trailer())
        self.stop()

    def stop(self) -> None:
        """Stop the workers; blocks not written yet are dropped (after close(),
        there are none)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


class _Gzip:
    """One gzip member holding one deflate stream, made of blocks that each
    end on a byte boundary (a sync flush) and may refer to the previous
    block's last 32 KiB, as pigz does: the same ratio as a serial deflate,
    give or take a few bytes per block."""

    history = 32 << 10  # deflate's window

    def __init__(self, level: int):
        self._level = level
        self._crc = 0
        self._size = 0

    def header(self) -> bytes:
        # No name and mtime 0, as zlib's own gzip wrapper writes: reproducible.
        extra_flags = 2 if self._level == 9 else 4 if self._level == 1 else 0
        return struct.pack("<BBBBIBB", 0x1F, 0x8B, zlib.DEFLATED, 0, 0, extra_flags,
                           GZIP_OS_UNIX)

    def compress(self, block: bytes, history: bytes) -> Pieces:
        settings = (self._level, zlib.DEFLATED, -zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY)
        codec = zlib.compressobj(*settings, history) if history else zlib.compressobj(*settings)
        return codec.compress(block), codec.flush(zlib.Z_SYNC_FLUSH)

    def record(self, block: bytes, packed: Pieces) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)

    def trailer(self) -> bytes:
        # An empty final block ends the deflate stream.
        end = zlib.compressobj(self._level, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
        return end + struct.pack("<II", self._crc, self._size & 0xFFFF_FFFF)


class _Xz:
    """One .xz stream of independent blocks, each LZMA2 with a CRC32 check (the
    kernel's decoder takes CRC32 or none), each header giving both sizes; then
    the index of the blocks and the stream footer (the .xz file format 1.1.0)."""

    history = 0  # xz blocks are independent

    def __init__(self, level: int, block_size: int):
        # A dictionary larger than a block is never used; capping it saves
        # memory when compressing and when decompressing.
        dict_size = min(XZ_PRESET_DICT[level], block_size)
        self._filters = [{"id": lzma.FILTER_LZMA2, "preset": level, "dict_size": dict_size}]
        self._dict_byte = _lzma2_dict_byte(dict_size)
        self._records: list[tuple[int, int]] = []  # (unpadded size, uncompressed size)

    def header(self) -> bytes:
        return XZ_MAGIC + XZ_FLAGS_CRC32 + _crc(XZ_FLAGS_CRC32)

    def compress(self, block: bytes, history: bytes) -> Pieces:
        data = lzma.compress(block, format=lzma.FORMAT_RAW, filters=self._filters)
        fields = (bytes([XZ_BLOCK_HAS_SIZES]) + _vli(len(data)) + _vli(len(block))
                  + _vli(lzma.FILTER_LZMA2) + _vli(1) + bytes([self._dict_byte]))
        # The first byte gives the header's size, CRC32 included, in 4-byte units.
        header = _padded(bytes([(1 + len(fields) + 4 + 3) // 4 - 1]) + fields)
        header += _crc(header)
        return header, data, b"\0" * _padding(len(data)) + _crc(block)

    def record(self, block: bytes, packed: Pieces) -> None:
        header, data, _ = packed
        self._records.append((len(header) + len(data) + XZ_CHECK_SIZE, len(block)))

    def trailer(self) -> bytes:
        index = b"\0" + _vli(len(self._records)) + b"".join(
            _vli(unpadded) + _vli(size) for unpadded, size in self._records)
        index = _padded(index)
        index += _crc(index)
        backward = struct.pack("<I", len(index) // 4 - 1) + XZ_FLAGS_CRC32
        return index + _crc(backward) + backward + XZ_FOOTER_MAGIC


class _Lz4Legacy:
    """lz4 legacy frames: a magic, then blocks of at most 8 MiB, each prefixed
    by its compressed length. The kernel reads only this lz4 format."""

    history = 0

    def __init__(self, level: int):
        import lz4.block

        self._compress = lz4.block.compress
        self._level = level

    def header(self) -> bytes:
        return struct.pack("<I", LZ4_LEGACY_MAGIC)

    def compress(self, block: bytes, history: bytes) -> Pieces:
        packed = self._compress(block, mode="high_compression", compression=self._level,
                                store_size=False)
        return struct.pack("<I", len(packed)), packed

    def record(self, block: bytes, packed: Pieces) -> None:
        pass

    def trailer(self) -> bytes:
        return b""


def _crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data))


def _padding(size: int) -> int:
    return -size % 4


def _padded(data: bytes) -> bytes:
    return data + b"\0" * _padding(len(data))


def _vli(value: int) -> bytes:
    """The .xz variable-length integer: 7 bits a byte, low bits first."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _lzma2_dict_byte(dict_size: int) -> int:
    """LZMA2's one property byte: the smallest encoded size of at least dict_size."""
    for byte in range(40):
        if (2 | byte & 1) << (byte // 2 + 11) >= dict_size:
            return byte
    return 40


def _zstd_writer(out: BinaryIO, level: int, workers: int):
    import zstandard

    defaults = zstandard.ZstdCompressionParameters.from_level(level)
    # Worker threads >= 1 make zstd's output independent of how many there are,
    # so all cores can be used without losing reproducibility.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=min(defaults.window_log, ZSTD_MAX_WINDOW_LOG),
        threads=workers, write_checksum=1)
    return zstandard.ZstdCompressor(compression_params=params).stream_writer(
        out, closefd=False)


@contextmanager
def compressed_writer(out: BinaryIO, spec: CompressionSpec, workers: int | None = None
                      ) -> Iterator[BinaryIO]:
    """A writable stream that compresses into `out` as one segment; finished on
    exit. zstd, gzip and xz use `workers` threads (default: one per core); the
    bytes written do not depend on how many."""
    level = spec.effective_level or 0  # every writable method but NONE has a level
    workers = max(1, workers or os.cpu_count() or 1)
    match spec.method:
        case Compression.NONE:
            yield out
            return
        case Compression.ZSTD:
            writer = _zstd_writer(out, level, workers)
        case Compression.GZIP:
            writer = _BlockWriter(out, _Gzip(level), GZIP_BLOCK, workers)
        case Compression.XZ:
            writer = _BlockWriter(out, _Xz(level, XZ_BLOCK), XZ_BLOCK, workers)
        case Compression.LZ4:
            writer = _BlockWriter(out, _Lz4Legacy(level), LZ4_LEGACY_BLOCK, workers)
        case _:
            raise UsageError(f"nbic does not write {spec.method.value}")
    try:
        yield writer
    except BaseException:
        if isinstance(writer, _BlockWriter):
            writer.stop()
        raise
    writer.close()


# --- reading ---------------------------------------------------------------
#
# Every decompressor below returns at most `max_length` bytes per call and says
# with `needs_input` whether it can go on without more input: the interface of
# lzma's and bz2's, which the others are adapted to. Output is thus produced
# as it is consumed, and no bomb (a few KiB that decode to GiBs) grows memory.

DECODER_MEMORY_LIMIT = 128 << 20  # xz/lzma dictionaries: xz -9 needs 65 MiB
ZSTD_BLOCK_MAX = 128 << 10  # RFC 8878: no zstd block decodes to more
LZ4_LEGACY_PACKED_MAX = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16  # LZ4_compressBound


class _GzipDecompressor:
    """zlib's decompressobj, which keeps input beyond the bound in unconsumed_tail."""

    def __init__(self):
        self._codec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self._codec.eof

    @property
    def unused_data(self) -> bytes:
        return self._codec.unused_data

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._codec.decompress(self._codec.unconsumed_tail + data, max_length)
        self.needs_input = not self._codec.unconsumed_tail and len(out) < max_length
        return out


class _ZstdUnit(enum.Enum):
    HEADER = "frame header"
    BLOCK = "block"
    CHECKSUM = "checksum"
    END = "end"


ZSTD_FRAME_HEADER_MAX = 18  # magic, descriptor, window, dictionary ID, content size


class _ZstdFrameWalk:
    """Walks the units of one zstd frame (its header, its blocks, its checksum)
    by their headers alone, without decoding them: how long each is, and so
    where the frame ends."""

    def __init__(self) -> None:
        self.next = _ZstdUnit.HEADER
        self._checksum = False

    @property
    def ended(self) -> bool:
        return self.next is _ZstdUnit.END

    def unit_size(self, data: bytes | bytearray, at: int) -> int | None:
        """Bytes of the unit at `at`, its header and content, or None while its
        header is not all in `data` (its content need not be)."""
        if self.next is _ZstdUnit.HEADER:
            if len(data) < at + 5:
                return None
            descriptor = data[at + 4]
            single_segment = descriptor >> 5 & 1
            return (5 + (not single_segment) + (0, 1, 2, 4)[descriptor & 3]
                    + (single_segment, 2, 4, 8)[descriptor >> 6])
        if self.next is _ZstdUnit.BLOCK:
            if len(data) < at + 3:
                return None
            header = int.from_bytes(data[at : at + 3], "little")
            return 3 + (1 if header >> 1 & 3 == 1 else header >> 3)  # RLE: one byte
        return 4

    def advance(self, data: bytes | bytearray, at: int) -> None:
        """Move past the unit at `at` (its header is in `data`)."""
        if self.next is _ZstdUnit.HEADER:
            self._checksum = bool(data[at + 4] & 4)
            self.next = _ZstdUnit.BLOCK
        elif self.next is _ZstdUnit.BLOCK:
            if data[at] & 1:  # the frame's last block
                self.next = _ZstdUnit.CHECKSUM if self._checksum else _ZstdUnit.END
        else:
            self.next = _ZstdUnit.END


class _ZstdFrameDecompressor:
    """One zstd frame, fed by the caller. zstandard's decompressobj has no output
    bound, but it is fed here whole blocks, a bounded number per call, and no
    block decodes to more than 128 KiB. Walking the frame also tells where it
    ends, so nothing after it is consumed."""

    def __init__(self):
        import zstandard

        # zstandard's default window limit is the kernel's: 128 MiB.
        self._codec = zstandard.ZstdDecompressor().decompressobj()
        self._walk = _ZstdFrameWalk()
        # Input not yet fed begins at _fed_to: dropping what was fed only when
        # more comes spares a move of the rest at every call.
        self._pending = bytearray()
        self._fed_to = 0
        self.eof = False
        self.unused_data = b""
        self.needs_input = True

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if data:
            del self._pending[: self._fed_to]
            self._fed_to = 0
            self._pending += data
        walk, pending = self._walk, self._pending
        blocks = max(1, max_length // ZSTD_BLOCK_MAX)
        start = end = self._fed_to
        starved = False
        while not walk.ended:
            if walk.next is _ZstdUnit.BLOCK and not blocks:
                break
            size = walk.unit_size(pending, end)
            if size is None or len(pending) < end + size:
                starved = True
                break
            blocks -= walk.next is _ZstdUnit.BLOCK
            walk.advance(pending, end)
            end += size
        out = b""
        if end > start:
            with memoryview(pending) as view:  # fed without a copy
                out = self._codec.decompress(view[start:end])
        self._fed_to = end
        if walk.ended:
            if not self._codec.eof:
                raise ValueError("the frame's headers and its data disagree on where it ends")
            self.eof = True
            self.unused_data = bytes(pending[end:])
            pending.clear()
            self._fed_to = 0
        self.needs_input = starved
        return out


class FrameInput(Protocol):
    """Where a ZstdFrameReader reads its frame from (a ByteSource)."""

    @property
    def offset(self) -> int: ...

    def read_some(self, limit: int) -> bytes: ...

    def unread(self, data: bytes) -> None: ...


class _ZstdFrameInput:
    """The compressed bytes of one zstd frame from `outer`, for zstandard's stream
    reader: never a byte past the frame's end, found by walking its headers
    without copying the input; what `outer` gave beyond the end goes back to it."""

    def __init__(self, outer: FrameInput, name: str, limit: int):
        self._outer = outer
        self._name = name
        self._start = outer.offset
        self._limit = limit
        self._walk = _ZstdFrameWalk()
        self._carry = b""  # the start of a unit header cut by the end of the last input
        self._next = 0  # where the next unit starts, from the start of the next input
        self._done = False  # every byte of the frame was handed out

    def read(self, size: int) -> bytes:
        """The frame's next input (`size` is only a hint)."""
        if self._done:
            return b""
        chunk = self._outer.read_some(self._limit)
        if not chunk:
            raise CompressionError(f"truncated zstd data in {self._name}", self._start)
        walk, at = self._walk, self._next
        while not walk.ended and at < len(chunk):
            # A unit that began in the last input is walked on its header's bytes.
            data, base = (self._carry + chunk[:ZSTD_FRAME_HEADER_MAX], at) if at < 0 \
                else (chunk, 0)
            length = walk.unit_size(data, at - base)
            if length is None:
                self._carry = bytes(data[at - base :])
                at = len(chunk)
                break
            walk.advance(data, at - base)
            self._carry = b""
            at += length
        if walk.ended and at <= len(chunk):
            self._done = True
            self._outer.unread(chunk[at:])
            return chunk[:at] if at < len(chunk) else chunk
        self._next = -len(self._carry) if self._carry else at - len(chunk)
        return chunk


class ZstdFrameReader:
    """One zstd frame read from `outer`, decoded by zstandard's stream reader,
    which decodes straight into the chunk it returns (decompressobj decodes into
    a buffer and copies that into a growing result: here 10-15% slower). Each
    call returns at most `limit` bytes, b"" at the frame's end; no more is ever
    decoded than asked for. The input is a separate object: the stream reader
    holds it, and a cycle through the stream reader would never be collected
    (with its decoder's context and window)."""

    def __init__(self, outer: FrameInput, name: str, limit: int):
        import zstandard

        self._name = name
        self._start = outer.offset
        self._limit = limit
        self._errors = zstandard.ZstdError
        # The stream reader needs only the input's read().
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast("IO[bytes]", _ZstdFrameInput(outer, name, limit)), read_size=limit,
            read_across_frames=False, closefd=False)

    def __call__(self) -> bytes:
        try:
            return self._reader.read(self._limit)
        except self._errors as exc:
            raise CompressionError(f"corrupt zstd data in {self._name}: {exc}",
                                   self._start) from exc


class _Lz4LegacyDecompressor:
    """Counterpart of _Lz4LegacyWriter; like the kernel, it runs to the end of
    input. Blocks are decoded one at a time, as their output is asked for."""

    def __init__(self):
        import lz4.block

        self._decompress = lz4.block.decompress
        self._pending = bytearray()
        self._started = False
        self._ready = memoryview(b"")  # decoded, not yet returned
        self.eof = False
        self.unused_data = b""
        self.needs_input = True

    def _next_block(self) -> bool:
        """Decode the next block into _ready; False if it is not all there (or at the end)."""
        pending = self._pending
        if not self._started:
            if len(pending) < 4:
                return False
            del pending[:4]
            self._started = True
        while len(pending) >= 4:
            (size,) = struct.unpack_from("<I", pending)
            if size == LZ4_LEGACY_MAGIC:  # a further legacy stream follows
                del pending[:4]
                continue
            if size == 0:
                # Zero padding ends the stream, as for the kernel since 5.13:
                # what follows is the next segment.
                self.eof = True
                self.unused_data = bytes(pending)
                pending.clear()
                return False
            if size > LZ4_LEGACY_PACKED_MAX:
                raise ValueError(f"lz4 block size {size} is impossible")
            if len(pending) < 4 + size:
                return False
            block = bytes(pending[4 : 4 + size])
            del pending[: 4 + size]
            self._ready = memoryview(self._decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK))
            return True
        return False

    def decompress(self, data: bytes, max_length: int) -> bytes:
        self._pending += data
        out = bytearray()
        while len(out) < max_length:
            if not self._ready and not self._next_block():
                break
            taken = self._ready[: max_length - len(out)]
            out += taken
            self._ready = self._ready[len(taken) :]
        self.needs_input = len(out) < max_length and not self.eof
        return bytes(out)

    def end_of_input(self) -> bytes:
        if self._pending:
            raise CompressionError("truncated lz4 block at the end of the image")
        self.eof = True
        return b""


def decompress_chunks(decompressor, data: bytes, limit: int = 1 << 20) -> Iterator[bytes]:
    """What `data` decodes to (with what the decompressor still holds), `limit`
    bytes at a time: for callers that feed a stream chunk by chunk themselves."""
    yield decompressor.decompress(data, limit)
    while not decompressor.eof and not decompressor.needs_input:
        yield decompressor.decompress(b"", limit)


def decompressor_for(method: Compression, head: bytes):
    """A fresh decompressor, with an output bound per call, for one stream of `method`."""
    match method:
        case Compression.ZSTD:
            return _ZstdFrameDecompressor()
        case Compression.GZIP:
            return _GzipDecompressor()
        case Compression.XZ:
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=DECODER_MEMORY_LIMIT)
        case Compression.LZMA:
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE,
                                         memlimit=DECODER_MEMORY_LIMIT)
        case Compression.BZIP2:
            import bz2

            return bz2.BZ2Decompressor()
        case Compression.LZ4 if head.startswith(struct.pack("<I", LZ4_LEGACY_MAGIC)):
            return _Lz4LegacyDecompressor()
        case Compression.LZ4:
            import lz4.frame

            return lz4.frame.LZ4FrameDecompressor()
    raise CompressionError(f"{method.value} segments are not supported by nbic")
