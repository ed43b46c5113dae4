"""Buffered byte sources for the reader: one over a file or pipe, one over a
decompressed segment. Both track offsets for error messages, let the caller
push bytes back (so a compressed segment ends exactly where its stream ends),
and skip data by seeking when the underlying file allows it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from nbic.errors import CompressionError, FormatError, NbicError

CHUNK = 1 << 20


class ByteSource:
    """Buffered reader over a raw binary stream."""

    def __init__(self, raw: BinaryIO, name: str = "input"):
        self._raw = raw
        self.name = name
        self._buf = bytearray()
        self._pos = 0
        self._consumed = 0  # bytes taken out of the buffer so far
        self._eof = False
        self._size = self._regular_file_size(raw)

    @staticmethod
    def _regular_file_size(raw: BinaryIO) -> int | None:
        try:
            if not raw.seekable():
                return None
            info = os.fstat(raw.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            return None
        return info.st_size if info.st_size > 0 else None

    # Overridden by the decompressing source.
    def _read_raw(self, size: int) -> bytes:
        try:
            return self._raw.read(size)
        except OSError as exc:
            raise NbicError(f"cannot read {self.name}: {exc.strerror}") from None

    def location(self, offset: int) -> str:
        return f"byte {offset} of {self.name}"

    @property
    def offset(self) -> int:
        return self._consumed

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _fill(self, need: int) -> None:
        while self._available() < need and not self._eof:
            if self._pos and self._pos >= len(self._buf) // 2:
                del self._buf[: self._pos]
                self._pos = 0
            chunk = self._read_raw(max(CHUNK, need - self._available()))
            if not chunk:
                self._eof = True
            else:
                self._buf += chunk

    def peek(self, size: int) -> bytes:
        self._fill(size)
        return bytes(self._buf[self._pos : self._pos + size])

    def read(self, size: int) -> bytes:
        """Up to `size` bytes; fewer only at the end of the stream."""
        self._fill(size)
        data = bytes(self._buf[self._pos : self._pos + size])
        self._pos += len(data)
        self._consumed += len(data)
        return data

    def read_exact(self, size: int, what: str) -> bytes:
        start = self.offset
        data = self.read(size)
        if len(data) != size:
            raise FormatError(f"truncated {what}: wanted {size} bytes, got {len(data)}, "
                              f"at {self.location(start)}", start)
        return data

    def read_some(self, limit: int) -> bytes:
        """At most `limit` bytes, whatever is cheapest to hand out (for copying data)."""
        if self._available() == 0:
            self._fill(1)
        size = min(limit, self._available())
        data = bytes(self._buf[self._pos : self._pos + size])
        self._pos += size
        self._consumed += size
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the stream (a decompressor read past its end)."""
        if not data:
            return
        self._buf[self._pos : self._pos] = data
        self._consumed -= len(data)

    def skip(self, size: int, what: str) -> None:
        start = self.offset
        buffered = min(size, self._available())
        self._pos += buffered
        self._consumed += buffered
        remaining = size - buffered
        if remaining and self._size is not None and not self._eof:
            raw_pos = self._raw.tell()
            if raw_pos + remaining > self._size:
                raise FormatError(f"truncated {what} at {self.location(start)}", start)
            self._raw.seek(remaining, io.SEEK_CUR)
            self._consumed += remaining
            return
        # The buffer is empty now: drop whole chunks without copying them.
        while remaining:
            chunk = self._read_raw(CHUNK)
            if not chunk:
                self._eof = True
                raise FormatError(f"truncated {what} at {self.location(start)}", start)
            if len(chunk) <= remaining:
                remaining -= len(chunk)
                self._consumed += len(chunk)
                continue
            self._buf = bytearray(chunk[remaining:])
            self._pos = 0
            self._consumed += remaining
            remaining = 0

    def skip_zeros(self) -> int:
        """Skip NUL padding between archives and segments; returns how many."""
        skipped = 0
        while True:
            self._fill(1)
            if not self._available():
                return skipped
            view = self._buf[self._pos :]
            stripped = len(view) - len(view.lstrip(b"\0"))
            self._pos += stripped
            self._consumed += stripped
            skipped += stripped
            if stripped < len(view):
                return skipped

    def at_eof(self) -> bool:
        self._fill(1)
        return not self._available()


class Decompressor(Protocol):
    """A decoder of one compressed stream that returns at most `max_length` bytes
    per call: the interface of lzma's and bz2's (nbic.cpio.compress adapts the
    others). `needs_input` is False while it can go on without more input."""

    eof: bool
    unused_data: bytes
    needs_input: bool

    def decompress(self, data: bytes, max_length: int) -> bytes: ...


class DecompressedSource(ByteSource):
    """The decompressed bytes of exactly one compressed stream inside `outer`,
    decoded a chunk at a time as they are read: memory does not grow with the
    decompressed size."""

    def __init__(self, outer: ByteSource, decompressor: Decompressor, method: str):
        self._outer = outer
        self._decompressor = decompressor
        self.method = method
        self.start = outer.offset
        name = f"the {method} segment at {outer.location(outer.offset)}"
        super().__init__(io.BytesIO(), name=name)
        self._size = None

    def location(self, offset: int) -> str:
        return f"decompressed byte {offset} of {self.name}"

    def _read_raw(self, size: int) -> bytes:
        decompressor = self._decompressor
        while not decompressor.eof:
            compressed = b""
            if decompressor.needs_input:
                compressed = self._outer.read_some(CHUNK)
                if not compressed:
                    # lz4's legacy format has no end marker: it ends with its input.
                    end_of_input = getattr(decompressor, "end_of_input", None)
                    if end_of_input is None:
                        raise CompressionError(
                            f"truncated {self.method} data in {self.name}", self.start)
                    return end_of_input()
            try:
                out = decompressor.decompress(compressed, CHUNK)
            except Exception as exc:  # every codec has its own error type
                raise CompressionError(
                    f"corrupt {self.method} data in {self.name}: {exc}", self.start) from exc
            if decompressor.eof:
                self._outer.unread(decompressor.unused_data)
            if out:
                return out
        return b""


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = iter(chunks)
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            chunk = next(self._chunks, b"")
            if not chunk:
                return 0
            self._buffer = memoryview(chunk)
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]  # a view: nothing is copied
        return size
