"""The kernel's cpio "newc" format (magic 070701; 070702 carries a checksum).

A header is 110 ASCII bytes: the magic and 13 fields of 8 hex digits. The
name (NUL-terminated) and the data are each padded to a multiple of 4 bytes
from the start of the archive; "TRAILER!!!" ends an archive, which is then
padded to 512 bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from nbic.cpio.entry import MAX_FIELD, Entry, FileType, decode_name, encode_name
from nbic.cpio.source import CHUNK, ByteSource
from nbic.errors import FieldOverflowError, FormatError

MAGIC_NEWC = b"070701"
MAGIC_CRC = b"070702"
MAGIC_ODC = b"070707"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
BLOCK = 512
PATH_MAX = 4096  # the kernel refuses longer names
_FIELDS = struct.Struct(">13I")


def _pad(offset: int, align: int = 4) -> int:
    return -offset % align


def _header(entry: Entry, ino: int, nlink: int, mtime: int, size: int, devmajor: int,
            devminor: int, namesize: int) -> bytes:
    """The 110-byte newc header: `entry`'s other fields, these as given, no checksum."""
    values = (ino, entry.mode, entry.uid, entry.gid, nlink, mtime, size, devmajor, devminor,
              entry.rdevmajor, entry.rdevminor, namesize, 0)
    try:
        packed = _FIELDS.pack(*values)
    except struct.error:  # a field outside 0..MAX_FIELD: say which
        for label, value in zip(_FIELD_NAMES, values, strict=True):
            if not 0 <= value <= MAX_FIELD:
                what = "file over 4 GiB" if label == "size" else f"{label} {value} out of range"
                raise FieldOverflowError(f"{entry.path}: {what}; the newc format holds 32 bits"
                                         ) from None
        raise
    return MAGIC_NEWC + packed.hex().upper().encode("ascii")


_FIELD_NAMES = ("inode", "mode", "uid", "gid", "nlink", "mtime", "size", "devmajor",
                "devminor", "rdevmajor", "rdevminor", "namesize", "check")
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # by offset % 4
_FILE_TYPES = {int(kind): kind for kind in FileType}  # by mode & S_IFMT
WRITE_BUFFER = 1 << 20


class NewcWriter:
    """Writes entries in the order given; ordering and inode numbers are the
    caller's (see archive.write_archive). Small pieces are gathered into one
    buffer so the stream below (usually a compressor) sees few large writes.
    `close()` writes the trailer and flushes."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._buf = bytearray()
        self._offset = 0  # bytes written so far, buffered or not

    def _write(self, data: bytes) -> None:
        self._offset += len(data)
        if len(data) >= WRITE_BUFFER:
            self._flush()
            self._out.write(data)
            return
        self._buf += data
        if len(self._buf) >= WRITE_BUFFER:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._out.write(self._buf)
            self._buf = bytearray()

    def add(self, entry: Entry, data: BinaryIO | None = None, *, ino: int | None = None,
            nlink: int | None = None, mtime: int | None = None, size: int | None = None
            ) -> None:
        """Write `entry`, as given or with the fields an archive renumbers
        replaced (without copying the entry). A new `ino` also clears the
        device fields: they meant something only with the source's inodes."""
        name = encode_name(entry.name)
        if len(name) >= PATH_MAX:
            raise FieldOverflowError(f"{entry.path}: name longer than the kernel's PATH_MAX")
        if b"\0" in name:
            raise FieldOverflowError(f"{entry.path!r}: NUL byte in name")
        body = b""
        file_type = entry.type
        if file_type is FileType.FILE:
            size = entry.size if size is None else size
        elif file_type is FileType.SYMLINK:
            body = encode_name(entry.linkname)
            size = len(body)
            if size > PATH_MAX:
                raise FieldOverflowError(f"{entry.path}: symlink target longer than the "
                                         "kernel's PATH_MAX")
        else:
            size = 0
        if ino is None:
            ino, devmajor, devminor = entry.ino, entry.devmajor, entry.devminor
        else:
            devmajor = devminor = 0
        header = _header(entry, ino, entry.nlink if nlink is None else nlink,
                         entry.mtime if mtime is None else mtime, size, devmajor, devminor,
                         len(name) + 1)
        head = header + name + b"\0"
        self._write(head + _PADDING[(self._offset + len(head)) % 4] + body)
        if size and not body:
            if data is None:
                raise FormatError(f"{entry.path}: no data source for a {size}-byte file")
            self._copy(entry, data, size)
        if size:
            self._write(_PADDING[self._offset % 4])

    def _copy(self, entry: Entry, data: BinaryIO, size: int) -> None:
        remaining = size
        while True:
            # One byte more than is left: a file that grew shows in the same
            # read, and a short read of the last piece is its end of file.
            wanted = min(remaining + 1, CHUNK)
            chunk = data.read(wanted)
            if len(chunk) > remaining:
                raise FormatError(f"{entry.path}: file grew while being packed "
                                  f"(past {size} bytes)")
            if not chunk:
                if remaining:
                    raise FormatError(f"{entry.path}: file shrank while being packed "
                                      f"({size - remaining} of {size} bytes)")
                return
            self._write(chunk)
            remaining -= len(chunk)
            if not remaining and len(chunk) < wanted:
                return

    def close(self) -> None:
        self.add(Entry(TRAILER, FileType.FILE, perm=0, nlink=1))
        self._write(b"\0" * _pad(self._offset, BLOCK))
        self._flush()


class ArchiveReader:
    """Yields the entries of one cpio archive (up to its trailer) from `source`.

    Like tarfile's stream mode, an entry's data can be read only until the
    next entry is requested; unread data is skipped, by seeking where possible.
    Symlink targets are read eagerly into `linkname`.
    """

    def __init__(self, source: ByteSource, index: int = 0):
        self._source = source
        self._index = index
        self._start = source.offset
        self._remaining = 0
        self._data_end_pad = 0

    def _finish_entry(self) -> None:
        if self._remaining or self._data_end_pad:
            self._source.skip(self._remaining + self._data_end_pad, "cpio file data")
            self._remaining = self._data_end_pad = 0

    def read(self, size: int = -1) -> bytes:
        """Read the current entry's data (all of what is left when size < 0)."""
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._source.read_exact(size, "cpio file data")
        self._remaining -= size
        return data

    def chunks(self) -> Iterator[bytes]:
        while self._remaining:
            start = self._source.offset
            chunk = self._source.read_some(min(self._remaining, CHUNK))
            if not chunk:
                raise FormatError(f"truncated cpio file data at {self._source.location(start)}",
                                  start)
            self._remaining -= len(chunk)
            yield chunk

    def __iter__(self) -> Iterator[Entry]:
        source = self._source
        while True:
            self._finish_entry()
            offset = source.offset
            raw = source.read_exact(HEADER_SIZE, "cpio header")
            magic = raw[:6]
            if magic not in (MAGIC_NEWC, MAGIC_CRC):
                if magic == MAGIC_ODC:
                    raise FormatError("old portable (odc, 070707) cpio is not read: the kernel "
                                      f"accepts only newc, at {source.location(offset)}", offset)
                raise FormatError(f"bad cpio magic {magic!r} at {source.location(offset)}",
                                  offset)
            try:
                packed = bytes.fromhex(raw[6:].decode("ascii"))
                fields = _FIELDS.unpack(packed)
            except (ValueError, UnicodeDecodeError, struct.error):
                raise FormatError(f"non-hex field in cpio header at {source.location(offset)}",
                                  offset) from None
            (ino, mode, uid, gid, nlink, mtime, size, devmajor, devminor, rdevmajor,
             rdevminor, namesize, _check) = fields
            if not 1 <= namesize <= PATH_MAX + 1:
                raise FormatError(f"absurd cpio namesize {namesize} at "
                                  f"{source.location(offset)}", offset)
            # The name and its padding in one read: the header began 4-aligned.
            raw_name = source.read_exact(namesize + _pad(HEADER_SIZE + namesize), "cpio name")
            name = decode_name(raw_name.split(b"\0", 1)[0])
            if name == TRAILER:
                return
            file_type = _FILE_TYPES.get(mode & 0o170000)
            if file_type is None:
                raise FormatError(f"unknown file type in mode {mode:o} of {name!r} at "
                                  f"{source.location(offset)}", offset)
            self._remaining = size
            linkname = ""
            if file_type is FileType.SYMLINK:
                # Read whole, so bounded as the kernel bounds it (it skips longer ones).
                if size > PATH_MAX:
                    raise FormatError(f"symlink {name!r} has a {size}-byte target, longer than "
                                      f"PATH_MAX ({PATH_MAX}), at {source.location(offset)}",
                                      offset)
                linkname = decode_name(self.read(size).split(b"\0", 1)[0])
            self._data_end_pad = _pad(source.offset + self._remaining - self._start)
            link_key = (self._index, devmajor, devminor, ino) \
                if nlink > 1 and file_type is FileType.FILE else None
            # Positional, in Entry's field order: the hot path of every reader.
            yield Entry(name, file_type, mode & 0o7777, uid, gid, mtime, size, linkname,
                        rdevmajor, rdevminor, nlink, ino, devmajor, devminor, link_key,
                        self._index, offset)
