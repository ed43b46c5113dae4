"""Buffered byte sources for the reader: one over a file or pipe, one over a
decompressed segment. Both track offsets for error messages, let the caller
push bytes back (so a compressed segment ends exactly where its stream ends),
and skip data by seeking when the underlying file allows it.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO, Protocol

from nbic.errors import CompressionError, FormatError, NbicError

if TYPE_CHECKING:
    from nbic.cpio.compress import Compression

CHUNK = 1 << 20
# After a seek past file data the next header is all that is sure to be read,
# so reads start small there and double while reading stays sequential (as the
# kernel's readahead does): listing a large image then reads little beyond its
# headers.
SEEK_READAHEAD = 16 << 10


class ByteSource:
    """Buffered reader over a raw binary stream. A chunk read into an empty buffer
    becomes the buffer as it is: the bytes of a listing's skipped file data are
    never copied (a decoded image is hundreds of MB of them)."""

    def __init__(self, raw: BinaryIO, name: str = "input"):
        self._raw = raw
        self.name = name
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._consumed = 0  # bytes taken out of the buffer so far
        self._eof = False
        self._size = self._regular_file_size(raw)
        self._readahead = CHUNK

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
            chunk = self._read_raw(max(self._readahead, need - self._available()))
            self._readahead = min(CHUNK, self._readahead * 2)
            if not chunk:
                self._eof = True
            elif not self._available():
                self._buf, self._pos = chunk, 0
            else:  # what is left, then the chunk, in a bytearray that grows in place
                if self._pos or isinstance(self._buf, bytes):
                    self._buf, self._pos = bytearray(self._buf[self._pos :]), 0
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
        pos = self._pos
        end = pos + size
        if end <= len(self._buf):  # the common case, kept short: the reader's hot path
            self._pos = end
            self._consumed += size
            return bytes(self._buf[pos:end])
        start = self.offset
        data = self.read(size)
        if len(data) != size:
            raise FormatError(f"truncated {what}: wanted {size} bytes, got {len(data)}, "
                              f"at {self.location(start)}", start)
        return data

    def read_some(self, limit: int) -> bytes:
        """At most `limit` bytes, whatever is cheapest to hand out (for copying data):
        with nothing buffered, a read passes straight through, uncopied."""
        if self._available() == 0:
            if self._eof:
                return b""
            data = self._read_raw(limit)
            if not data:
                self._eof = True
            elif len(data) > limit:  # a decoder hands out whole chunks: keep the rest
                self._buf, self._pos = data, limit
                data = data[:limit]
            self._consumed += len(data)
            return data
        size = min(limit, self._available())
        data = bytes(self._buf[self._pos : self._pos + size])
        self._pos += size
        self._consumed += size
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the stream (a decompressor read past its end)."""
        if not data:
            return
        self._buf, self._pos = data + self._buf[self._pos :], 0
        self._consumed -= len(data)

    def skip(self, size: int, what: str) -> None:
        if self._pos + size <= len(self._buf):  # within the buffer: the hot path
            self._pos += size
            self._consumed += size
            return
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
            self._readahead = SEEK_READAHEAD
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
            self._buf, self._pos = chunk, remaining
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


class _Decoder:
    """Decodes one compressed stream from `outer`, a chunk of at most CHUNK bytes
    per call; b"" at its end, where what it read past the stream goes back."""

    def __init__(self, outer: ByteSource, decompressor: Decompressor, method: str, name: str):
        self._outer = outer
        self._decompressor = decompressor
        self._method = method
        self._name = name
        self._start = outer.offset

    def __call__(self) -> bytes:
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
                            f"truncated {self._method} data in {self._name}", self._start)
                    return end_of_input()
            try:
                out = decompressor.decompress(compressed, CHUNK)
            except Exception as exc:  # every codec has its own error type
                raise CompressionError(
                    f"corrupt {self._method} data in {self._name}: {exc}", self._start) from exc
            if decompressor.eof:
                self._outer.unread(decompressor.unused_data)
            if out:
                return out
        return b""


class _DecodeAhead:
    """Runs a decoder (a callable that returns the next chunk, b"" at the end) in a
    thread, at most PREFETCH chunks ahead of the reader: the codecs release the
    GIL, so decoding overlaps what the reader does with the data (cpio-extract's
    writes) and memory stays bounded. Holds no reference to its source, so a
    source dropped unread still stops it (see `stop`)."""

    PREFETCH = 4

    def __init__(self, decode: Callable[[], bytes]):
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(self.PREFETCH)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(decode,),
                                        name="nbic-decompress", daemon=True)
        self._thread.start()

    def _run(self, decode: Callable[[], bytes]) -> None:
        try:
            while not self._stopped.is_set():
                chunk = decode()
                self._chunks.put(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # raised again on the reading side
            self._chunks.put(exc)

    def next(self) -> bytes:
        item = self._chunks.get()
        if isinstance(item, BaseException):
            self._chunks.put(item)  # every later read fails the same way
            raise item
        if not item:
            self._chunks.put(item)  # and every later read sees the end
        return item

    def stop(self) -> None:
        """Stop decoding and wait for the thread: the outer stream is the caller's
        again. The queue is drained so a blocked put returns and sees the stop."""
        self._stopped.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._chunks.get(timeout=0.05)
        self._thread.join()


class DecompressedSource(ByteSource):
    """The decompressed bytes of exactly one compressed stream inside `outer`,
    decoded a chunk at a time, ahead of the reader in a thread. The outer source
    is the decoder's until this one is read to its end or closed."""

    def __init__(self, outer: ByteSource, method: Compression, head: bytes):
        # Imported here: the agent reads nothing compressed and need not load the codecs.
        from nbic.cpio.compress import Compression, ZstdFrameReader, decompressor_for

        name = f"the {method.value} segment at {outer.location(outer.offset)}"
        super().__init__(io.BytesIO(), name=name)
        self._size = None
        decode = ZstdFrameReader(outer, name, CHUNK) if method is Compression.ZSTD \
            else _Decoder(outer, decompressor_for(method, head), method.value, name)
        self._ahead = _DecodeAhead(decode)
        self._finalizer = weakref.finalize(self, self._ahead.stop)

    def location(self, offset: int) -> str:
        return f"decompressed byte {offset} of {self.name}"

    def _read_raw(self, size: int) -> bytes:
        return self._ahead.next()

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> DecompressedSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
