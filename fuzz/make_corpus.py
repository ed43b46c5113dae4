"""Write the seed corpus of the fuzz targets (fuzz/corpus/NAME/): small, valid
inputs of every shape each target reads, for the fuzzer to mutate from.

    .venv/bin/python fuzz/make_corpus.py
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from pathlib import Path

import lz4.frame
import zstandard

from nbic.cpio.archive import Member, write_archive
from nbic.cpio.compress import Compression, CompressionSpec, compressed_writer
from nbic.cpio.entry import Entry, FileType

CORPUS = Path(__file__).resolve().parent / "corpus"


def _member(name: str, kind: FileType = FileType.FILE, data: bytes = b"", **fields) -> Member:
    entry = Entry(name, kind, size=len(data) if kind is FileType.FILE else 0, **fields)
    return Member(entry, (lambda: io.BytesIO(data)) if data else None)


def _archive(members: list[Member]) -> bytes:
    out = io.BytesIO()
    write_archive(out, members, epoch=0)
    return out.getvalue()


def _nbic_compressed(data: bytes, method: Compression) -> bytes:
    out = io.BytesIO()
    with compressed_writer(out, CompressionSpec(method, 1 if method is not Compression.XZ
                                                else 0)) as stream:
        stream.write(data)
    return out.getvalue()


def reader_seeds() -> dict[str, bytes]:
    plain = _archive([
        _member("bin", FileType.DIR, perm=0o755),
        _member("bin/sh", data=b"#!/bin/sh\necho hi\n", perm=0o755),
        _member("bin/a", data=b"hardlinked\n", link_key=1),
        _member("bin/b", data=b"hardlinked\n", link_key=1),
        _member("bin/link", FileType.SYMLINK, linkname="sh", perm=0o777),
        _member("dev", FileType.DIR, perm=0o755),
        _member("dev/console", FileType.CHAR, perm=0o600, rdevmajor=5, rdevminor=1),
        _member("fifo", FileType.FIFO),
    ])
    small = _archive([_member("init", data=b"#!/bin/sh\n", perm=0o755)])
    seeds = {
        "plain.cpio": plain,
        "crc.cpio": plain.replace(b"070701", b"070702"),
        "two-segments.cpio": small + _nbic_compressed(plain, Compression.ZSTD),
        "padded.cpio": small + bytes(512) + plain,
        "gzip.cpio": _nbic_compressed(plain, Compression.GZIP),
        "zstd.cpio": _nbic_compressed(plain, Compression.ZSTD),
        "xz.cpio": _nbic_compressed(plain, Compression.XZ),
        "lz4-legacy.cpio": _nbic_compressed(plain, Compression.LZ4),
        "lz4-frame.cpio": lz4.frame.compress(plain),
        "lzma.cpio": lzma.compress(plain, format=lzma.FORMAT_ALONE, preset=0),
        "bzip2.cpio": bz2.compress(plain, 1),
        "zstd-checksum.cpio": zstandard.ZstdCompressor(write_checksum=True).compress(plain),
    }
    return seeds


def _tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data else None)
    # Two zero blocks end a tar; tarfile's padding to 10 KiB only slows the fuzzer.
    members_end = len(out.getvalue().rstrip(b"\0"))
    return out.getvalue()[: members_end + -members_end % 512 + 1024]


def _info(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime, info.mode = kind, len(data), 1_600_000_000, 0o755
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def tar_seeds() -> dict[str, bytes]:
    members = [
        _info("init", data=b"#!/bin/sh\nexec /bin/sh\n"),
        _info("usr", tarfile.DIRTYPE),
        _info("usr/bin", tarfile.DIRTYPE),
        _info("usr/bin/sh", data=b"\x7fELF sh"),
        _info("bin", tarfile.SYMTYPE, linkname="usr/bin"),
        _info("usr/bin/a", data=b"hardlinked"),
        _info("usr/bin/b", tarfile.LNKTYPE, linkname="usr/bin/a"),
        _info("dev", tarfile.DIRTYPE),
        _info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        _info("run", tarfile.FIFOTYPE),
        _info("etc/motd", data=b"no parent member\n"),
        _info("usr/bin/" + "long" * 30, data=b"long name",
              pax_headers={"mtime": "1600000000.5"}),
    ]
    pax = _tar(members)
    gnu = _tar([*members[:10], _info("usr/lib/" + "x" * 120, data=b"gnu longname")],
               fmt=tarfile.GNU_FORMAT)
    return {
        "small.tar": _tar(members[:5], fmt=tarfile.USTAR_FORMAT),
        "pax.tar": pax,
        "gnu.tar": gnu,
        "ustar.tar": _tar(members[:11], fmt=tarfile.USTAR_FORMAT),
        "pax.tar.gz": gzip.compress(pax, mtime=0),
        "pax.tar.zst": zstandard.ZstdCompressor().compress(pax),
        "pax.tar.xz": lzma.compress(pax, preset=0),
        "gnu.tar.bz2": bz2.compress(gnu, 1),
        "pax.tar.lz4": lz4.frame.compress(pax),
    }


def spec_seeds() -> dict[str, bytes]:
    every = (
        "# every kind of line\n"
        "dir /dev 0755 0 0\n"
        "nod /dev/console 0600 0 0 c 5 1\n"
        "nod /dev/loop0 0660 0 6 b 7 0\n"
        "slink /bin /usr/bin 0777 0 0\n"
        "pipe /run/fifo 0644 0 0\n"
        "sock /run/sock 0755 0 0\n"
        "file /init ${NBIC_ROOT}/init 0755 0 0\n"
        "file /usr/bin/a ${X}/a 0755 0 0 /usr/bin/b /usr/bin/c\n"
    )
    return {"every.spec": every.encode(),
            "blank-and-comments.spec": b"\n  \n# only a comment\n\t\n"}


def main() -> None:
    for name, seeds in (("reader", reader_seeds()), ("tar", tar_seeds()),
                        ("spec", spec_seeds())):
        directory = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        for filename, data in seeds.items():
            (directory / filename).write_bytes(data)


if __name__ == "__main__":
    main()
