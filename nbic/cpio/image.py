"""Reading whole initramfs images: one cpio archive or several concatenated
segments, each plain or compressed, with NUL padding between them, the way the
kernel unpacks them (Debian and Ubuntu ship an uncompressed microcode archive
followed by a compressed main one)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from nbic.cpio.compress import Compression, detect
from nbic.cpio.entry import Entry
from nbic.cpio.newc import MAGIC_CRC, MAGIC_NEWC, MAGIC_ODC, ArchiveReader
from nbic.cpio.source import ByteSource, DecompressedSource
from nbic.errors import FormatError, NbicError

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class Segment:
    """One cpio archive of an image and how it was stored."""

    index: int
    compression: Compression
    offset: int  # where its (compressed) bytes start in the image


class ImageReader:
    """Iterate over every entry of an image; read the current entry's data with
    `read()` or `chunks()` before moving on."""

    def __init__(self, stream: BinaryIO, name: str = "input"):
        self._source = ByteSource(stream, name)
        self._archive: ArchiveReader | None = None
        self._expansion = 0  # decompressed minus compressed bytes of finished segments
        self.segments: list[Segment] = []

    @property
    def consumed(self) -> int:
        """Bytes of the image read so far: its size once iterated to the end."""
        return self._source.offset

    @property
    def raw(self) -> int:
        """The image's size with every compressed segment decompressed, up to the
        last finished segment: its uncompressed size once iterated to the end."""
        return self._source.offset + self._expansion

    def location(self, entry: Entry) -> str:
        """Where `entry`'s header is, for messages: a byte offset in the image, or in
        the decompressed data of the segment that holds it."""
        segment = self.segments[entry.archive]
        if segment.compression is Compression.NONE:
            return f"byte {entry.offset} of {self._source.name}"
        return (f"decompressed byte {entry.offset} of the {segment.compression.value} "
                f"segment at byte {segment.offset} of {self._source.name}")

    def read(self, size: int = -1) -> bytes:
        return self._archive.read(size) if self._archive else b""

    def chunks(self) -> Iterator[bytes]:
        return self._archive.chunks() if self._archive else iter(())

    def __iter__(self) -> Iterator[Entry]:
        outer = self._source
        while True:
            outer.skip_zeros()
            if outer.at_eof():
                break
            head = outer.peek(8)
            if head.startswith((MAGIC_NEWC, MAGIC_CRC, MAGIC_ODC)):
                yield from self._archives(outer, Compression.NONE, outer.offset, single=True)
                continue
            method = detect(head)
            if method is None:
                raise FormatError(f"neither a cpio archive nor a known compression "
                                  f"(starts {head[:6].hex()}) at {outer.location(outer.offset)}",
                                  outer.offset)
            start = outer.offset
            with DecompressedSource(outer, method, head) as inner:
                yield from self._archives(inner, method, start, single=False)
                self._expansion += inner.offset - (outer.offset - start)
        if not self.segments:
            raise FormatError(f"{self._source.name} holds no cpio archive", 0)

    def _archives(self, source: ByteSource, method: Compression, start: int, *, single: bool
                  ) -> Iterator[Entry]:
        """The archives in one segment; a decompressed stream may hold several."""
        while True:
            if not single:
                source.skip_zeros()
                if source.at_eof():
                    return
                if not source.peek(6).startswith((MAGIC_NEWC, MAGIC_CRC, MAGIC_ODC)):
                    raise FormatError(f"junk inside compressed data at "
                                      f"{source.location(source.offset)}", start)
            index = len(self.segments)
            self.segments.append(Segment(index, method, start))
            self._archive = ArchiveReader(source, index)
            yield from self._archive
            self._archive = None
            if single:
                return


@contextmanager
def open_image(path: str | Path) -> Iterator[ImageReader]:
    """Open an image file, or standard input for "-"."""
    if str(path) == "-":
        yield ImageReader(sys.stdin.buffer, "standard input")
        return
    try:
        stream = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise NbicError(f"cannot open image {path}: {exc.strerror}") from None
    with stream:
        yield ImageReader(stream, str(path))


def read_entries(path: str | Path) -> list[Entry]:
    """All entries of an image, without their data."""
    with open_image(path) as reader:
        return list(reader)
